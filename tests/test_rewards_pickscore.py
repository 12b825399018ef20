"""The `pickscore` reward: logit_scale.exp() * cosine on the diagonal, model and processor
from two hub repos (or folders)."""

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from safetensors.torch import load_file

import tiny_models as tm
from alignkit.errors import CheckpointError, MissingWeightsError
from alignkit.rewards import get_entry, load_reward

MODEL, PROCESSOR = "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
PROMPTS = ["a red circle", "two blue squares on a white background", "a cat", "a photo of a dog"]
# Not CLIP's init (2.6592) nor log(100): a wrong scale cannot pass by accident.
LOGIT_SCALE = math.log(37.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pickscore")
    folder = tm.save_tiny_clip(root / "tiny-pickscore", logit_scale=LOGIT_SCALE)
    cache = root / "hub"
    # As on the hub: the model repo with its weights, the processor repo for its tokenizer.
    tm.put_in_hub_cache(cache, MODEL, {name: folder / name for name in ("config.json", "model.safetensors")})
    tm.put_in_hub_cache(cache, PROCESSOR, {name: folder / name for name in TOKENIZER_FILES})
    return {"root": root, "folder": folder, "cache": cache, "reference": tm.load_reference_clip(folder)}


def test_registered_with_its_needs():
    entry = get_entry("pickscore")
    assert entry.differentiable and set(entry.options) == {"model", "processor"}
    assert (MODEL, "model.safetensors") in entry.weights


def test_gradient_at_pixels_from_default_hub_ids(hub):
    tm.assert_pixel_gradient(load_reward("pickscore"), (64, 40), PROMPTS[:2])


def test_score_is_logit_scaled_cosine_on_the_diagonal(tiny, hub, images):
    reward = load_reward("pickscore")
    model, tokenizer = tiny["reference"]
    scale = model.logit_scale.exp().item()
    assert abs(scale - 37.0) < 1e-3
    cos = tm.reference_cosines(model, tokenizer, images, PROMPTS)
    torch.testing.assert_close(reward(images, PROMPTS), scale * cos.diagonal(), atol=1e-4, rtol=1e-4)
    # The known bug scores every image against the first prompt (row 0 of the text-image
    # matrix); here image i is scored with prompt i, so permuting prompts moves the scores.
    perm = [1, 3, 0, 2]
    permuted = reward(images, [PROMPTS[j] for j in perm])
    torch.testing.assert_close(permuted, scale * cos[torch.arange(4), perm], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(permuted, scale * cos[:, perm[0]])


def test_preprocessing_is_shortest_side_then_centre_crop(tiny, hub):
    reward = load_reward("pickscore")
    torch.manual_seed(4)
    x = torch.rand(2, 3, 96, 40)
    ref = TF.center_crop(TF.resize(x, 32, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), 32)
    model, tokenizer = tiny["reference"]
    cos = tm.reference_cosines(model, tokenizer, ref, PROMPTS[:2])
    torch.testing.assert_close(reward(x, PROMPTS[:2]), 37.0 * cos.diagonal(), atol=1e-3, rtol=1e-4)


def test_batch_invariance(hub, images):
    reward = load_reward("pickscore")
    batch = reward(images, PROMPTS)
    alone = torch.cat([reward(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, alone, atol=1e-4, rtol=1e-5)


def test_local_folders(tiny, images, hub):
    local = load_reward("pickscore", model=str(tiny["folder"]), processor=str(tiny["folder"]))
    torch.testing.assert_close(local(images, PROMPTS), load_reward("pickscore")(images, PROMPTS))


def test_bfloat16(hub, images):
    tm.assert_bfloat16_close(lambda dtype: load_reward("pickscore", dtype=dtype), images, PROMPTS, atol=0.5)


def test_model_missing_offline(tiny, monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    tm.put_in_hub_cache(cache, PROCESSOR, {name: tiny["folder"] / name for name in TOKENIZER_FILES})
    tm.use_hub_cache(monkeypatch, cache)
    with pytest.raises(MissingWeightsError) as info:
        load_reward("pickscore")
    tm.assert_one_line(info, MODEL, "HF_HUB_OFFLINE", "model=")


def test_processor_missing_offline(tiny, monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    tm.put_in_hub_cache(cache, MODEL, {name: tiny["folder"] / name for name in ("config.json", "model.safetensors")})
    tm.use_hub_cache(monkeypatch, cache)
    with pytest.raises(MissingWeightsError) as info:
        load_reward("pickscore")
    tm.assert_one_line(info, PROCESSOR, "HF_HUB_OFFLINE", "processor=")


def test_weights_missing_from_a_local_folder(tiny, tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny["folder"] / "config.json").read_bytes())
    with pytest.raises(MissingWeightsError) as info:
        load_reward("pickscore", model=str(folder), processor=str(tiny["folder"]))
    tm.assert_one_line(info, "model.safetensors", "pytorch_model.bin", "model=")


def test_corrupted_weights(tiny, tmp_path):
    folder = tm.save_tiny_clip(tmp_path / "bad")
    tm.write_corrupt(folder / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_reward("pickscore", model=str(folder), processor=str(tiny["folder"]))
    tm.assert_one_line(info, "model.safetensors", "safetensors")


def test_wrong_shape_weights(tiny, tmp_path):
    folder = tm.save_tiny_clip(tmp_path / "narrow", projection_dim=16)
    (folder / "model.safetensors").write_bytes((tiny["folder"] / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as info:
        load_reward("pickscore", model=str(folder), processor=str(tiny["folder"]))
    tm.assert_one_line(info, "does not fit", "projection")


def test_pickle_with_code_is_refused_never_run(tiny, tmp_path):
    folder = tm.save_tiny_clip(tmp_path / "evil")
    (folder / "model.safetensors").unlink()
    tm.assert_code_pickle_refused(
        folder / "pytorch_model.bin",
        lambda: load_reward("pickscore", model=str(folder), processor=str(tiny["folder"])),
        "refused", "pytorch_model.bin")


def test_safe_pytorch_model_bin_is_used_when_no_safetensors(tiny, images, tmp_path):
    folder = tm.save_tiny_clip(tmp_path / "bin", logit_scale=LOGIT_SCALE)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    reward = load_reward("pickscore", model=str(folder), processor=str(tiny["folder"]))
    reference = load_reward("pickscore", model=str(tiny["folder"]), processor=str(tiny["folder"]))
    torch.testing.assert_close(reward(images, PROMPTS), reference(images, PROMPTS))
