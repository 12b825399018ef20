"""The toy world's generator, prompts and tokenizer: exact, deterministic, and fast."""

import json

import numpy as np
import pytest

from alignkit.errors import AlignkitError
from alignkit.prompts import load_prompt_set
from alignkit.toy import world
from alignkit.toy.prompts import EVAL_COMBINATIONS
from alignkit.toy.counter import read_image
from toy_build.tokenizer import _bpe, build_vocab_and_merges, world_words


def test_generator_is_deterministic_for_a_seed():
    a, b, c = world.generate(32, seed=3), world.generate(32, seed=3), world.generate(32, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.prompts == b.prompts
    for x, y in zip(a.boxes, b.boxes):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, c.images)


def test_prompts_boxes_and_pixels_agree():
    batch = world.generate(200, seed=0)
    assert batch.images.shape == (200, 64, 64, 3) and batch.images.dtype == np.uint8
    seen_counts = set()
    for img, spec, boxes, classes in zip(batch.images, batch.specs, batch.boxes, batch.classes):
        seen_counts.add(spec.count)
        assert len(boxes) == spec.count and np.all(classes == world.SHAPES.index(spec.shape))
        # The centre of every object is drawn in the prompted colour, the corners in the background's.
        for x1, y1, x2, y2 in boxes:
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            assert tuple(img[cy, cx]) == world.COLOURS[spec.colour], spec.prompt
            assert 0 <= x1 and 0 <= y1 and x2 <= 64 and y2 <= 64
        for y, x in ((0, 0), (0, 63), (63, 0), (63, 63)):
            assert tuple(img[y, x]) == world.BACKGROUNDS[spec.background]
        # No two objects' boxes overlap: they are apart on at least one axis, by GAP pixels.
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                apart_x = max(a[0], b[0]) - min(a[2], b[2]) >= world.GAP - 1e-4
                apart_y = max(a[1], b[1]) - min(a[3], b[3]) >= world.GAP - 1e-4
                assert apart_x or apart_y
    assert seen_counts == {1, 2, 3, 4}


def test_prompt_wording_and_parsing():
    assert world.SceneSpec(3, "circle", "red", "white").prompt == "three red circles on a white background"
    assert world.SceneSpec(1, "square", "blue", "black").prompt == "one blue square on a black background"
    for spec in world.all_specs():
        assert world.parse_prompt(spec.prompt) == spec
    with pytest.raises(AlignkitError) as info:
        world.parse_prompt("five red circles on a white background")
    assert "\n" not in str(info.value) and "toy-world prompt" in str(info.value)


def test_scenes_for_given_prompts_and_the_stream():
    prompts = ["two green triangles on a gray background", "four yellow squares on a black background"]
    batch = world.scenes_for_prompts(prompts, np.random.default_rng(0))
    assert batch.prompts == prompts and [len(b) for b in batch.boxes] == [2, 4]
    first = next(world.scene_stream(8, seed=5))
    again = next(world.scene_stream(8, seed=5))
    assert first[0].shape == (8, 3, 64, 64) and first[1] == again[1]
    assert (first[0] == again[0]).all()
    images, distinct = next(world.scene_stream(64, seed=5, distinct=True))
    assert len(set(distinct)) == 64


def test_colour_reader_is_exact_on_true_scenes():
    batch = world.generate(100, seed=1)
    for img, spec in zip(batch.images, batch.specs):
        reading = read_image(img)
        assert (reading.background, reading.colour) == (spec.background, spec.colour)


def test_toy_counting_prompt_set_holds_out_colour_background_pairs():
    sets = load_prompt_set("toy_counting")
    assert len(sets.train) + len(sets.eval) == len(world.all_specs()) == 180
    assert not set(sets.train) & set(sets.eval)
    for prompt in sets.eval:
        spec = world.parse_prompt(prompt)
        assert (spec.colour, spec.background) in EVAL_COMBINATIONS
    assert {world.parse_prompt(p).count for p in sets.train} == {1, 2, 3, 4}


def test_every_world_word_is_one_token(tmp_path):
    vocab, merges = build_vocab_and_merges(world_words())
    ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
    for word in world_words():
        assert _bpe(word, ranks) == [word + "</w>"]
        assert word + "</w>" in vocab
    # transformers 5 accepts the tables (every merge result is in the vocabulary).
    from transformers import CLIPTokenizer

    from toy_build.tokenizer import build_tokenizer

    tok = build_tokenizer(tmp_path)
    assert isinstance(tok, CLIPTokenizer)
    ids = tok("three red circles on a white background").input_ids
    assert tok.convert_ids_to_tokens(ids)[1:-1] == [w + "</w>" for w in "three red circles on a white background".split()]
    assert json.loads((tmp_path / "vocab.json").read_text()) == vocab
