"""The `clip` reward: 100 * cosine, diagonal pairing, loading from the hub cache and folders."""

import pytest
import torch
import torchvision.transforms.functional as TF
from safetensors.torch import load_file, save_file

import tiny_models as tm
from alignkit.errors import AlignkitError, CheckpointError, MissingWeightsError
from alignkit.rewards import get_entry, load_reward

REPO = "openai/clip-vit-large-patch14"
PROMPTS = ["a red circle", "two blue squares on a white background", "a cat", "a photo of a dog"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    folder = tm.save_tiny_clip(root / "tiny-clip")
    cache = root / "hub"
    tm.put_in_hub_cache(cache, REPO, {f.name: f for f in folder.iterdir()})
    return {"root": root, "folder": folder, "cache": cache, "reference": tm.load_reference_clip(folder)}


def test_registered_with_its_needs():
    entry = get_entry("clip")
    assert entry.differentiable and entry.options == ("model",)
    assert (REPO, "model.safetensors") in entry.weights


def test_gradient_at_pixels_from_default_hub_id(hub):
    scores = tm.assert_pixel_gradient(load_reward("clip"), (48, 72), PROMPTS[:2])
    assert scores.dtype == torch.float32


def test_score_is_100_cosine_on_the_diagonal(tiny, images):
    reward = load_reward("clip", model=str(tiny["folder"]))
    cos = tm.reference_cosines(*tiny["reference"], images, PROMPTS)
    torch.testing.assert_close(reward(images, PROMPTS), 100 * cos.diagonal(), atol=1e-4, rtol=1e-4)
    # Image i goes with prompt i: permuting the prompts picks other entries of the matrix.
    perm = [2, 0, 3, 1]
    permuted = reward(images, [PROMPTS[j] for j in perm])
    torch.testing.assert_close(permuted, 100 * cos[torch.arange(4), perm], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(permuted, reward(images, PROMPTS))


def test_not_clamped_at_zero(tiny, images, tmp_path):
    # Negating the image projection negates every cosine exactly: the scores must follow,
    # below zero, where torchmetrics' CLIPScore would clamp them (and kill the gradient).
    flipped = tmp_path / "flipped"
    tm.save_tiny_clip(flipped)
    state = load_file(str(flipped / "model.safetensors"))
    state["visual_projection.weight"] = -state["visual_projection.weight"]
    save_file(state, str(flipped / "model.safetensors"))
    positive = load_reward("clip", model=str(tiny["folder"]))(images, PROMPTS)
    x = images.clone().requires_grad_(True)
    negative = load_reward("clip", model=str(flipped))(x, PROMPTS)
    torch.testing.assert_close(negative, -positive, atol=1e-4, rtol=1e-4)
    assert (negative < 0).any()
    negative.sum().backward()
    assert x.grad.abs().sum() > 0


def test_preprocessing_is_shortest_side_then_centre_crop(tiny):
    reward = load_reward("clip", model=str(tiny["folder"]))
    torch.manual_seed(1)
    x = torch.rand(2, 3, 48, 80)
    ref = TF.center_crop(TF.resize(x, 32, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), 32)
    cos = tm.reference_cosines(*tiny["reference"], ref, PROMPTS[:2])
    torch.testing.assert_close(reward(x, PROMPTS[:2]), 100 * cos.diagonal(), atol=1e-4, rtol=1e-4)


def test_batch_invariance(tiny, images):
    reward = load_reward("clip", model=str(tiny["folder"]))
    batch = reward(images, PROMPTS)
    alone = torch.cat([reward(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, alone, atol=1e-4, rtol=1e-5)


def test_each_distinct_prompt_encoded_once(tiny, images, monkeypatch):
    reward = load_reward("clip", model=str(tiny["folder"]))
    seen = []
    encode = reward.towers.encode_texts
    monkeypatch.setattr(reward.towers, "encode_texts", lambda texts: seen.append(list(texts)) or encode(texts))
    prompts = ["a cat", "a dog", "a cat", "a cat"]
    scores = reward(images, prompts)
    assert seen == [["a cat", "a dog"]]
    torch.testing.assert_close(scores[[0, 2, 3]], reward(images[[0, 2, 3]], ["a cat"] * 3), atol=1e-4, rtol=1e-5)


def test_bfloat16_weights_and_half_inputs(tiny, images):
    reward = tm.assert_bfloat16_close(lambda dtype: load_reward("clip", model=str(tiny["folder"]), dtype=dtype),
                                      images, PROMPTS, atol=1.5)
    assert reward.dtype == torch.bfloat16


def test_missing_offline_names_repo_and_option(monkeypatch, tmp_path):
    tm.use_hub_cache(monkeypatch, tmp_path / "empty")
    with pytest.raises(MissingWeightsError) as info:
        load_reward("clip")
    tm.assert_one_line(info, REPO, "HF_HUB_OFFLINE", "model=")


def test_missing_local_folder(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        load_reward("clip", model=str(tmp_path / "nowhere"))
    tm.assert_one_line(info, "nowhere", "model=")


def test_corrupted_weights(tiny, tmp_path):
    bad = tm.save_tiny_clip(tmp_path / "bad")
    tm.write_corrupt(bad / "model.safetensors", tiny["folder"] / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_reward("clip", model=str(bad))
    tm.assert_one_line(info, "model.safetensors")


def test_wrong_shape_weights(tiny, tmp_path):
    # A config for a 64-px model next to weights of the 32-px one: position embeddings differ.
    other = tm.save_tiny_clip(tmp_path / "other", image_size=64)
    (other / "model.safetensors").write_bytes((tiny["folder"] / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as info:
        load_reward("clip", model=str(other))
    tm.assert_one_line(info, "does not fit")


def test_pickle_with_code_is_refused_never_run(tiny, tmp_path):
    folder = tm.save_tiny_clip(tmp_path / "evil")
    (folder / "model.safetensors").unlink()
    tm.assert_code_pickle_refused(folder / "pytorch_model.bin", lambda: load_reward("clip", model=str(folder)),
                                  "refused", "pytorch_model.bin")


def test_pytorch_model_bin_folder_loads(tiny, images, tmp_path):
    folder = tm.save_tiny_clip(tmp_path / "bin")
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    torch.testing.assert_close(load_reward("clip", model=str(folder))(images, PROMPTS),
                               load_reward("clip", model=str(tiny["folder"]))(images, PROMPTS))


def test_not_a_clip_config(tmp_path):
    folder = tm.save_tiny_clip(tmp_path / "notclip")
    (folder / "config.json").write_text('{"model_type": "siglip"}')
    with pytest.raises(AlignkitError) as info:
        load_reward("clip", model=str(folder))
    tm.assert_one_line(info, "siglip", "model=")
