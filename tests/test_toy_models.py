"""The shipped toy models load through the public paths and do what TRAINING.md says.

Small fresh samples, so each test takes seconds; thresholds sit below the figures measured
on 512 samples (see alignkit/toy/weights/TRAINING.md) to leave room for sampling noise.
"""

import importlib.util

import numpy as np
import pytest
import torch
import yaml

from alignkit.errors import MissingWeightsError
from alignkit.toy import clip_path, detector_path, pipeline_path, world

# Checked without importing it: ultralytics patches PIL at import, and alignkit imports it
# only through `import_ultralytics`, which undoes that (see alignkit/rewards/count.py).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                                reason="needs the count extra (ultralytics)")


# Below the shipped detector's measured agreement (TRAINING.md), with room for 32 samples' noise.
AGREEMENT_FLOOR = 0.85


@pytest.fixture(scope="module")
def net():
    from toy_build.detector import load_detector

    return load_detector()


def test_detector_contract_files(net):
    from safetensors import safe_open
    from ultralytics.nn.tasks import DetectionModel

    folder = detector_path()
    spec = yaml.safe_load((folder / "model.yaml").read_text())
    names = spec["names"]  # ultralytics writes a list or an {index: name} mapping
    names = [names[i] for i in sorted(names)] if isinstance(names, dict) else names
    assert spec["nc"] == 3 and names == ["circle", "square", "triangle"]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}
    assert dtypes == {torch.float16}
    assert isinstance(net, DetectionModel)


def test_detector_counts_fresh_scenes(net):
    from toy_build.detector import count_accuracy

    quality = count_accuracy(net, n=128, seed=12345)
    assert quality["count_accuracy_nms"] >= 0.95
    assert quality["all_classes_right"] >= 0.95


def test_our_detect_matches_ultralytics_predict(net):
    """The exported weights, run through ultralytics' own predict() (its preprocessing and
    NMS), find the same objects as `detect()` on the reloaded DetectionModel."""
    import ultralytics

    from toy_build.detector import detect

    yolo = ultralytics.YOLO(str(detector_path() / "model.yaml"), task="detect")
    yolo.model.load_state_dict(net.state_dict())
    batch = world.generate(16, seed=21)
    ours = detect(net, batch.tensor(), conf=0.5)
    # predict() takes BGR uint8 arrays, as OpenCV reads them.
    theirs = yolo.predict([img[..., ::-1].copy() for img in batch.images], imgsz=64, conf=0.5, iou=0.5,
                          device="cpu", verbose=False)
    for a, b in zip(ours, theirs):
        assert sorted(a["classes"].tolist()) == sorted(b.boxes.cls.int().tolist())
        np.testing.assert_allclose(np.sort(a["boxes"][:, 0]), np.sort(b.boxes.xyxy[:, 0].numpy()), atol=0.5)


def test_toy_clip_reward_retrieves_and_differentiates():
    from alignkit.rewards import load_reward
    from toy_build.quality import clip_retrieval

    reward = load_reward("toy_clip")
    assert reward.name == "toy_clip" and not any(p.requires_grad for p in reward.parameters())
    quality = clip_retrieval(reward.model, reward.tokenizer, trials=2, seed=777)
    assert quality["top1_image_to_prompt_among_32"] >= 0.8
    # The right prompt scores above a wrong one, and gradients reach the pixels (any size).
    batch = world.generate(8, seed=3)
    images = torch.nn.functional.interpolate(batch.tensor(), size=96, mode="bilinear").clamp(0, 1).requires_grad_()
    wrong = [world.SceneSpec(s.count % 4 + 1, s.shape, s.colour, s.background).prompt for s in batch.specs]
    right_scores, wrong_scores = reward(images, batch.prompts), reward(images, wrong)
    assert right_scores.shape == (8,) and (right_scores > wrong_scores).float().mean() >= 0.75
    right_scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_registry_lists_toy_clip_as_bundled():
    from alignkit.rewards import get_entry

    entry = get_entry("toy_clip")
    assert entry.status() == (True, "bundled") and entry.differentiable


def test_pipeline_loads_like_a_hub_model_and_draws_the_prompt(net):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from toy_build.quality import balanced_prompts, sample, scene_metrics

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path(), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.safety_checker is None
    prompts = balanced_prompts(16, seed=99)
    images = sample(pipe, prompts, seed=99, steps=20, guidance_scale=7.5)
    assert images.shape == (16, 3, 64, 64)
    # Measured on 256 samples: colour 1.00, shape 0.98, background 1.00, count 0.57.
    metrics = scene_metrics(images, prompts, net=net)
    assert metrics["colour_accuracy"] >= 0.75
    assert metrics["shape_accuracy"] >= 0.75
    assert metrics["background_accuracy"] >= 0.75
    # Imperfect at counting on purpose (alignment has something to fix), but far above chance.
    assert 0.2 <= metrics["count_accuracy"] <= 0.95


def test_detector_agrees_with_the_world_rules_on_the_pipelines_own_samples(net):
    """The count reward's detector reads the model's samples as the independent counter does,
    where the counter is sure (TRAINING.md: the figure on 512 samples at each sampler)."""
    from diffusers import StableDiffusionPipeline

    from toy_build.detector import counter_agreement
    from toy_build.quality import balanced_prompts, sample

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path(), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompts = balanced_prompts(32, seed=77)
    images = sample(pipe, prompts, seed=77, eta=1.0)
    result = counter_agreement(net, images, prompts)
    assert result["unambiguous"] >= 12
    assert result["agreement_where_unambiguous"] >= AGREEMENT_FLOOR


def test_missing_bundle_is_one_clear_line(monkeypatch, tmp_path):
    import alignkit.toy as toy

    monkeypatch.setattr(toy, "WEIGHTS_DIR", tmp_path)
    for getter in (toy.pipeline_path, toy.detector_path, toy.clip_path):
        with pytest.raises(MissingWeightsError) as info:
            getter()
        assert "\n" not in str(info.value) and "python -m toy_build.train" in str(info.value)
    assert clip_path  # the real paths are exercised above


def test_plain_from_pretrained_samples_without_a_dtype():
    """No dtype argument, as a user would first try: every component agrees on float32."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path())
    pipe.set_progress_bar_config(disable=True)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    images = pipe(["two red circles on a white background"], num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 64, 64)
