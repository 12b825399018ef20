"""The `aesthetic` reward: an affine head on the unit CLIP image embedding; real LAION heads."""

import pytest
import torch
import torchvision.transforms.functional as TF

import tiny_models as tm
from alignkit.errors import AlignkitError, CheckpointError, MissingWeightsError
from alignkit.hub import load_state_dict
from alignkit.rewards import get_entry, load_reward

CLIP_REPO = "openai/clip-vit-large-patch14"
HEAD_REPO, HEAD_FILE = "trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"
V2_FILE, V1_FILE = "sac+logos+ava1-l14-linearMSE.pth", "sa_0_4_vit_l_14_linear.pth"
PROMPTS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("aesthetic")
    folder = tm.save_tiny_clip(root / "tiny-clip")
    head = root / HEAD_FILE
    torch.save(tm.aesthetic_mlp_state(seed=0), head)
    cache = root / "hub"
    tm.put_in_hub_cache(cache, CLIP_REPO, {f.name: f for f in folder.iterdir()})
    tm.put_in_hub_cache(cache, HEAD_REPO, {HEAD_FILE: head})
    model, _ = tm.load_reference_clip(folder)
    return {"root": root, "folder": folder, "head": head, "cache": cache, "model": model}


def affine(head_file) -> tuple[torch.Tensor, torch.Tensor]:
    """The head in eval mode is affine, score = w.z + b: compose its linear maps from the file."""
    state = load_state_dict(head_file)
    if "weight" in state:  # v1: one Linear
        return state["weight"].double()[0], state["bias"].double()[0]
    w, b = torch.eye(768, dtype=torch.float64), torch.zeros(768, dtype=torch.float64)
    for i in (0, 2, 4, 6, 7):
        layer_w, layer_b = state[f"layers.{i}.weight"].double(), state[f"layers.{i}.bias"].double()
        w, b = layer_w @ w, layer_w @ b + layer_b
    return w[0], b[0]


def unit_embeddings(model, pixels):
    with torch.no_grad():
        z = model.get_image_features(pixel_values=tm.clip_inputs(pixels)).pooler_output
    return (z / z.norm(dim=-1, keepdim=True)).double()


def test_registered_with_its_needs():
    entry = get_entry("aesthetic")
    assert entry.differentiable
    assert set(entry.options) == {"version", "head_path", "clip_model"}
    assert (HEAD_REPO, HEAD_FILE) in entry.weights and (CLIP_REPO, "model.safetensors") in entry.weights


def test_gradient_at_pixels_from_default_hub_ids(hub):
    tm.assert_pixel_gradient(load_reward("aesthetic"), (40, 64), PROMPTS[:2])


def test_score_is_the_affine_head_on_the_unit_embedding(tiny, hub, images):
    reward = load_reward("aesthetic")
    w, b = affine(tiny["head"])
    expected = unit_embeddings(tiny["model"], images) @ w + b
    torch.testing.assert_close(reward(images, PROMPTS).double(), expected, atol=1e-5, rtol=1e-5)


def test_prompts_are_ignored_and_batch_invariance(hub, images):
    reward = load_reward("aesthetic")
    batch = reward(images, PROMPTS)
    torch.testing.assert_close(batch, reward(images, ["x"] * 4))
    alone = torch.cat([reward(images[i:i + 1], ["x"]) for i in range(4)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_preprocessing_is_bicubic_shortest_side_then_centre_crop(tiny, hub):
    reward = load_reward("aesthetic")
    torch.manual_seed(2)
    x = torch.rand(2, 3, 72, 48)
    ref = TF.center_crop(TF.resize(x, 32, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), 32)
    w, b = affine(tiny["head"])
    expected = unit_embeddings(tiny["model"], ref) @ w + b
    torch.testing.assert_close(reward(x, PROMPTS[:2]).double(), expected, atol=1e-5, rtol=1e-5)


def test_real_laion_v2_head(shared_weights, tiny, images):
    head = shared_weights / V2_FILE
    w, b = affine(head)
    # Facts about the published file (its README): score = 5.237 + w.z with |w| = 18.0.
    assert abs(b.item() - 5.237) < 1e-3 and abs(w.norm().item() - 18.0) < 0.01
    reward = load_reward("aesthetic", head_path=str(head), clip_model=str(tiny["folder"]))
    x = images.clone().requires_grad_(True)
    scores = reward(x, PROMPTS)
    z = unit_embeddings(tiny["model"], images)
    torch.testing.assert_close(scores.double(), z @ w + b, atol=1e-4, rtol=1e-5)
    # On a unit vector the score stays within |w| of the bias.
    assert ((scores - 5.237).abs() <= 18.0).all()
    scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_real_laion_v1_head(shared_weights, tiny, images):
    head = shared_weights / V1_FILE
    w, b = affine(head)
    reward = load_reward("aesthetic", version="v1", head_path=str(head), clip_model=str(tiny["folder"]))
    torch.testing.assert_close(reward(images, PROMPTS).double(), unit_embeddings(tiny["model"], images) @ w + b,
                               atol=1e-4, rtol=1e-5)


def test_a_head_of_the_other_version_is_named(shared_weights, tiny):
    with pytest.raises(CheckpointError) as info:
        load_reward("aesthetic", version="v1", head_path=str(shared_weights / V2_FILE), clip_model=str(tiny["folder"]))
    tm.assert_one_line(info, "aesthetic v1 head", "is a v2 head", "version=v2")
    with pytest.raises(CheckpointError) as info:
        load_reward("aesthetic", head_path=str(shared_weights / V1_FILE), clip_model=str(tiny["folder"]))
    tm.assert_one_line(info, "aesthetic v2 head", "is a v1 head", "version=v1")


def test_v1_needs_a_head_path(hub):
    with pytest.raises(MissingWeightsError) as info:
        load_reward("aesthetic", version="v1")
    tm.assert_one_line(info, V1_FILE, "LAION-AI/aesthetic-predictor", "head_path=")


def test_unknown_version(hub):
    with pytest.raises(AlignkitError) as info:
        load_reward("aesthetic", version="v3")
    tm.assert_one_line(info, "v3", "v2", "v1")


def test_head_stays_float32_under_bfloat16(hub, images):
    reward = tm.assert_bfloat16_close(lambda dtype: load_reward("aesthetic", dtype=dtype), images, PROMPTS, atol=0.05)
    assert reward.vision.dtype == torch.bfloat16 and reward.head_dtype == torch.float32


def test_head_missing_offline_names_repo_file_and_option(tiny, monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    tm.put_in_hub_cache(cache, CLIP_REPO, {f.name: f for f in tiny["folder"].iterdir()})
    tm.use_hub_cache(monkeypatch, cache)
    with pytest.raises(MissingWeightsError) as info:
        load_reward("aesthetic")
    tm.assert_one_line(info, f"{HEAD_REPO}/{HEAD_FILE}", "HF_HUB_OFFLINE", "head_path=")


def test_clip_missing_offline_names_repo_and_option(tiny, monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    tm.put_in_hub_cache(cache, HEAD_REPO, {HEAD_FILE: tiny["head"]})
    tm.use_hub_cache(monkeypatch, cache)
    with pytest.raises(MissingWeightsError) as info:
        load_reward("aesthetic")
    tm.assert_one_line(info, CLIP_REPO, "clip_model=")


def test_corrupted_head(tiny, hub, tmp_path):
    bad = tm.write_corrupt(tmp_path / HEAD_FILE, tiny["head"])
    with pytest.raises(CheckpointError) as info:
        load_reward("aesthetic", head_path=str(bad))
    tm.assert_one_line(info, str(bad), "corrupted")


def test_wrong_shape_head(hub, tmp_path):
    bad = tmp_path / "wide.pth"
    state = tm.aesthetic_mlp_state()
    state["layers.0.weight"] = torch.zeros(1024, 512)
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as info:
        load_reward("aesthetic", head_path=str(bad))
    tm.assert_one_line(info, "does not fit", "layers.0.weight")


def test_backbone_of_the_wrong_width(tmp_path, hub):
    narrow = tm.save_tiny_clip(tmp_path / "narrow", projection_dim=16)
    with pytest.raises(AlignkitError) as info:
        load_reward("aesthetic", clip_model=str(narrow))
    tm.assert_one_line(info, "768", "16-d", "clip_model=")


def test_pickle_with_code_is_refused_never_run(hub, tmp_path):
    evil = tmp_path / "head.pth"
    tm.assert_code_pickle_refused(evil, lambda: load_reward("aesthetic", version="v1", head_path=str(evil)),
                                  "refused", str(evil))


def test_code_pickle_payload_calls_code(tmp_path):
    # The stand-in payload is a real code call (Path.touch through REDUCE), read from its
    # opcodes without ever unpickling it: the refusal above is what stops it from running.
    import pickletools
    import zipfile

    evil = tm.write_code_pickle(tmp_path / "head.pth", tmp_path / "ran")
    with zipfile.ZipFile(evil) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert ("GLOBAL", "pathlib Path") in ops and ("BINUNICODE", "touch") in ops
    assert any(name == "REDUCE" for name, _ in ops)
