"""The world-rules reader (`alignkit.toy.counter`): exact on rendered scenes, honest about doubt."""

import numpy as np
import pytest
import torch

from alignkit.toy import world
from alignkit.toy.counter import read_image, read_images


def test_every_prompt_of_the_world_is_read_exactly():
    # Every (count, shape, colour, background) once, twice over: the exact labels of the world.
    rng = np.random.default_rng(0)
    batch = world.render(world.all_specs() * 2, rng)
    readings = read_images(batch.images)
    for reading, spec in zip(readings, batch.specs):
        assert (reading.count, reading.colour, reading.background) == (spec.count, spec.colour, spec.background), spec
        assert not reading.ambiguous, (spec, reading.doubts)
    # Shape from the outline: small circles are a few pixels wide, so allow a rare miss.
    shapes = np.mean([r.shape == s.shape for r, s in zip(readings, batch.specs)])
    assert shapes >= 0.97


def test_boxes_are_the_objects():
    batch = world.generate(64, seed=5)
    for reading, boxes in zip(read_images(batch.images), batch.boxes):
        found = np.array(sorted(r.box for r in reading.regions), dtype=float)
        exact = np.array(sorted(boxes.tolist()))
        # Region boxes are whole pixels around the anti-aliased shapes (a triangle's thin apex
        # is under half a pixel wide for its first pixel or two).
        assert np.abs(found - exact).max() <= 2


@pytest.mark.parametrize("background", list(world.BACKGROUNDS))
@pytest.mark.parametrize("shape", list(world.SHAPES))
def test_near_touching_objects_stay_apart(shape, background):
    # Two of the largest objects the world draws, the world's minimum gap apart, side by side,
    # stacked, and corner to corner.
    spec = world.SceneSpec(2, shape, "purple", background)  # purple on gray: the lowest contrast
    h = world.MAX_HALF
    for offset in ((2 * h + world.GAP, 0), (0, 2 * h + world.GAP), (2 * h + world.GAP, 2 * h + world.GAP)):
        centres = np.array([[h + 3, h + 3], [h + 3 + offset[0], h + 3 + offset[1]]])
        image = world.draw([spec], [centres], [np.array([h, h])]).images[0]
        reading = read_image(image)
        assert reading.count == 2 and not reading.ambiguous, (offset, reading.doubts)


def test_objects_run_together_are_one_region_and_a_doubt():
    spec = world.SceneSpec(2, "square", "red", "white")
    centres = np.array([[20.0, 30.0], [36.0, 30.0]])  # overlapping squares of half 8
    reading = read_image(world.draw([spec], [centres], [np.array([8.0, 8.0])]).images[0])
    assert reading.count == 1 and reading.ambiguous and "larger than one object" in reading.doubts[0]


def test_specks_are_doubts_and_noise_is_ignored():
    image = world.draw([world.SceneSpec(1, "circle", "blue", "white")], [np.array([[20.0, 20.0]])],
                       [np.array([8.0])]).images[0].copy()
    image[50:54, 50:54] = world.COLOURS["blue"]   # a 16 px blot: too small for an object
    image[5, 40] = world.COLOURS["blue"]          # a single stray pixel: noise
    reading = read_image(image)
    assert reading.count == 1 and reading.ambiguous and "speck" in reading.doubts[0]


def test_empty_image_and_float_tensors():
    blank = np.full((2, 64, 64, 3), world.BACKGROUNDS["black"], dtype=np.uint8)
    assert [r.count for r in read_images(blank)] == [0, 0]
    assert read_images(blank)[0].colour is None and not read_images(blank)[0].ambiguous
    batch = world.generate(8, seed=1)
    from_tensor = read_images(batch.tensor())
    assert [r.count for r in from_tensor] == [s.count for s in batch.specs]


def test_larger_images_are_read_at_their_scale():
    batch = world.generate(16, seed=2)
    big = torch.nn.functional.interpolate(batch.tensor(), scale_factor=2, mode="nearest")
    assert [r.count for r in read_images(big)] == [s.count for s in batch.specs]


def test_vae_round_trips_are_read_as_the_scene():
    # Blurred like the pipeline's samples, with exact labels: the reader still counts them.
    from diffusers import AutoencoderKL

    from alignkit.toy import pipeline_path

    vae = AutoencoderKL.from_pretrained(pipeline_path(), subfolder="vae", dtype=torch.float32).eval()
    batch = world.generate(64, seed=11)
    with torch.no_grad():
        x = batch.tensor() * 2 - 1
        out = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1).add(1).div(2)
    readings = read_images(out)
    right = np.mean([r.count == s.count for r, s in zip(readings, batch.specs)])
    assert right >= 0.95
    # Where the reader is sure, it is right.
    sure = [r.count == s.count for r, s in zip(readings, batch.specs) if not r.ambiguous]
    assert np.mean(sure) >= 0.98


def test_detector_labels_are_the_rules_reading_touching_objects_one_box():
    """The count reward's detector learns from samples labelled as the rules read them
    (toy_build.detector.counter_labelled): objects run together are one box of the prompted
    shape, apart ones a box each with the shape read, specks none; every sample is kept."""
    from toy_build.detector import counter_labelled

    merged = world.draw([world.SceneSpec(2, "square", "red", "white")], [np.array([[20.0, 30.0], [36.0, 30.0]])],
                        [np.array([8.0, 8.0])]).images[0]
    apart = world.draw([world.SceneSpec(2, "circle", "blue", "white")], [np.array([[14.0, 14.0], [44.0, 44.0]])],
                       [np.array([8.0, 8.0])]).images[0].copy()
    apart[55:59, 5:9] = world.COLOURS["blue"]  # a 16 px speck: a doubt, never a box
    images = torch.from_numpy(np.stack([merged, apart])).permute(0, 3, 1, 2).float().div(255)
    # The first prompt asks for triangles: a merged region takes the prompted class, since its
    # outline tells nothing; the second asks for squares: apart objects keep the shape read.
    examples, stats = counter_labelled(images, ["two red triangles on a white background",
                                                "two blue squares on a white background"], "test")
    assert len(examples) == 2 and stats == {"samples": 2, "ambiguous": 2, "merged_regions": 1}
    assert examples.boxes[0].shape == (1, 4) and examples.classes[0].tolist() == [world.SHAPES.index("triangle")]
    assert examples.classes[1].tolist() == [world.SHAPES.index("circle")] * 2
    x1, y1, x2, y2 = examples.boxes[0][0]
    assert x1 <= 12 and x2 >= 44 and y1 <= 22 and y2 >= 38  # the box spans both squares
