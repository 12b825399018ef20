"""The `hps` reward: open_clip built empty and filled from an HPS-format checkpoint; the
cosine on the diagonal; HPSv2's longest-side-and-pad preprocessing."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

import tiny_models as tm
from alignkit.errors import AlignkitError, CheckpointError, MissingWeightsError
from alignkit.rewards import get_entry, load_reward

REPO = "xswu/HPSv2"
V21, V20 = "HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt"
PROMPTS = ["a red circle", "two blue squares on a white background", "a cat", "a photo of a dog"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps")
    name = tm.register_tiny_open_clip(root / "configs")
    v21 = tm.save_hps_checkpoint(root / "v2.1" / V21, name, seed=0)
    v20 = tm.save_hps_checkpoint(root / "v2.0" / V20, name, seed=1)
    cache = root / "hub"
    tm.put_in_hub_cache(cache, REPO, {V21: v21, V20: v20})
    return {"root": root, "name": name, "v21": v21, "v20": v20, "cache": cache}


def reference_cosines(name, checkpoint, pixels, prompts):
    """cos(image i, prompt j) the way HPSv2's own code computes it: open_clip's create_model
    and load_checkpoint, then the model's dict output with normalised features."""
    import open_clip

    model = open_clip.create_model(name, pretrained=str(checkpoint), output_dict=True).eval()
    with torch.no_grad():
        out = model(tm.clip_inputs(pixels), open_clip.get_tokenizer(name)(prompts))
    return out["image_features"] @ out["text_features"].T


def test_registered_with_v21_as_default():
    entry = get_entry("hps")
    assert entry.differentiable and set(entry.options) == {"version", "checkpoint_path", "model_name"}
    assert entry.weights == ((REPO, V21),)


def test_never_downloads_pretrained_weights(tiny, hub, images, monkeypatch):
    import open_clip.factory
    import open_clip.pretrained

    def forbidden(*args, **kwargs):
        raise AssertionError("hps must not download open_clip pretrained weights")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", forbidden)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", forbidden)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", forbidden)
    reward = load_reward("hps", model_name=tiny["name"])
    assert reward(images, PROMPTS).shape == (4,)


def test_gradient_at_pixels(tiny, hub):
    tm.assert_pixel_gradient(load_reward("hps", model_name=tiny["name"]), (40, 64), PROMPTS[:2])


def test_score_is_the_cosine_on_the_diagonal(tiny, hub, images):
    reward = load_reward("hps", model_name=tiny["name"])
    cos = reference_cosines(tiny["name"], tiny["v21"], images, PROMPTS)
    torch.testing.assert_close(reward(images, PROMPTS), cos.diagonal(), atol=1e-5, rtol=1e-5)
    perm = [3, 2, 0, 1]
    permuted = reward(images, [PROMPTS[j] for j in perm])
    torch.testing.assert_close(permuted, cos[torch.arange(4), perm], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(permuted, cos.diagonal())
    assert (reward(images, PROMPTS).abs() <= 1 + 1e-5).all()  # no logit scale


def test_version_picks_the_checkpoint(tiny, hub, images):
    v20 = load_reward("hps", version="v2.0", model_name=tiny["name"])
    cos = reference_cosines(tiny["name"], tiny["v20"], images, PROMPTS)
    torch.testing.assert_close(v20(images, PROMPTS), cos.diagonal(), atol=1e-5, rtol=1e-5)
    # YAML turns `hps.version=2.0` into a float: the same checkpoint.
    torch.testing.assert_close(load_reward("hps", version=2.0, model_name=tiny["name"])(images, PROMPTS),
                               v20(images, PROMPTS))


def test_preprocessing_is_longest_side_then_zero_pad(tiny, hub):
    reward = load_reward("hps", model_name=tiny["name"])
    torch.manual_seed(3)
    x = torch.rand(2, 3, 48, 80)  # longest side 80 -> 32, short side 48 -> 19, padded 6 + 7
    resized = TF.resize(x, [19, 32], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    ref = F.pad(resized, (0, 0, 6, 7), value=0.0)
    cos = reference_cosines(tiny["name"], tiny["v21"], ref, PROMPTS[:2])
    torch.testing.assert_close(reward(x, PROMPTS[:2]), cos.diagonal(), atol=1e-5, rtol=1e-5)


def test_batch_invariance(tiny, hub, images):
    reward = load_reward("hps", model_name=tiny["name"])
    batch = reward(images, PROMPTS)
    alone = torch.cat([reward(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_local_checkpoint_with_ddp_prefix(tiny, images, tmp_path):
    state = torch.load(tiny["v21"], weights_only=True)["state_dict"]
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    reward = load_reward("hps", checkpoint_path=str(path), model_name=tiny["name"])
    cos = reference_cosines(tiny["name"], tiny["v21"], images, PROMPTS)
    torch.testing.assert_close(reward(images, PROMPTS), cos.diagonal(), atol=1e-5, rtol=1e-5)


def test_bfloat16(tiny, hub, images):
    tm.assert_bfloat16_close(lambda dtype: load_reward("hps", model_name=tiny["name"], dtype=dtype), images, PROMPTS,
                             atol=0.03)


def test_missing_offline_names_repo_file_and_option(tiny, monkeypatch, tmp_path):
    tm.use_hub_cache(monkeypatch, tmp_path / "empty")
    with pytest.raises(MissingWeightsError) as info:
        load_reward("hps", model_name=tiny["name"])
    tm.assert_one_line(info, f"{REPO}/{V21}", "HF_HUB_OFFLINE", "checkpoint_path=")


def test_unknown_version_and_model_name(tiny, hub):
    with pytest.raises(AlignkitError) as info:
        load_reward("hps", version="v3")
    tm.assert_one_line(info, "v3", "v2.0", "v2.1")
    with pytest.raises(AlignkitError) as info:
        load_reward("hps", model_name="ViT-Q-99")
    tm.assert_one_line(info, "ViT-Q-99", "add_model_config")


def test_corrupted_checkpoint(tiny, tmp_path):
    bad = tm.write_corrupt(tmp_path / V21, tiny["v21"])
    with pytest.raises(CheckpointError) as info:
        load_reward("hps", checkpoint_path=str(bad), model_name=tiny["name"])
    tm.assert_one_line(info, str(bad), "corrupted")


def test_wrong_shape_checkpoint(tiny, tmp_path):
    # A real-size ViT-H-14 architecture cannot take the tiny checkpoint (built on meta: no memory used).
    with pytest.raises(CheckpointError) as info:
        load_reward("hps", checkpoint_path=str(tiny["v21"]), model_name="ViT-H-14")
    tm.assert_one_line(info, "does not fit")


def test_checkpoint_without_a_state_dict(tmp_path, tiny):
    path = tmp_path / "odd.pt"
    torch.save({"epoch": 3, "name": "hps"}, path)
    with pytest.raises(CheckpointError) as info:
        load_reward("hps", checkpoint_path=str(path), model_name=tiny["name"])
    tm.assert_one_line(info, "state dict")


def test_pickle_with_code_is_refused_never_run(tiny, tmp_path):
    evil = tmp_path / V21
    tm.assert_code_pickle_refused(evil, lambda: load_reward("hps", checkpoint_path=str(evil), model_name=tiny["name"]),
                                  "refused", str(evil), wrap="state_dict")
