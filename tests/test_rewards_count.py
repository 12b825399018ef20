"""The `count` reward: prompt parsing, the soft count, and the ultralytics detector path."""

import sys
from pathlib import Path

import pytest
import torch

from alignkit.errors import AlignkitError, CheckpointError, MissingDependencyError, MissingWeightsError
from alignkit.rewards import load_reward
from alignkit.rewards.count import (SoftCountConfig, count_log_likelihood, parse_count_prompt, shifted_copies,
                                    soft_count)
from tiny_models import TINY_YAML

NAMES = {0: "circle", 1: "square", 2: "triangle"}
COCO_LIKE = {0: "person", 1: "apple", 2: "traffic light", 3: "bus", 4: "sheep", 5: "strawberry"}


# --------------------------------------------------------------------------- prompt parsing

@pytest.mark.parametrize("prompt, names, expected", [
    ("three apples", COCO_LIKE, (3, 1)),
    ("3 apples", COCO_LIKE, (3, 1)),
    ("a single apple", COCO_LIKE, (1, 1)),
    ("an apple", COCO_LIKE, (1, 1)),
    ("one apple", COCO_LIKE, (1, 1)),
    ("A photo of Four big red apples.", COCO_LIKE, (4, 1)),
    ("12 strawberries on a plate", COCO_LIKE, (12, 5)),
    ("two people and a bus", COCO_LIKE, (2, 0)),
    ("five sheep in a field", COCO_LIKE, (5, 4)),
    ("two traffic lights", COCO_LIKE, (2, 2)),
    ("zero buses", COCO_LIKE, (0, 3)),
    ("two red circles on a white background", NAMES, (2, 0)),
    ("one blue square on a black background", NAMES, (1, 1)),
    ("four green triangles", NAMES, (4, 2)),
])
def test_parse_count_prompt(prompt, names, expected):
    assert parse_count_prompt(prompt, names) == expected


@pytest.mark.parametrize("prompt, match", [
    ("red circles on a white background", "gives no number of 'circle'"),
    ("a photo of apples", "gives no number of 'apple'"),
    ("three bananas", "no object class of the detector"),
    ("", "no object class of the detector"),
])
def test_parse_errors_are_one_line(prompt, match):
    names = COCO_LIKE if "apple" in prompt or "banana" in prompt else NAMES
    with pytest.raises(AlignkitError, match=match) as info:
        parse_count_prompt(prompt, names)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- the soft count

def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float32)
    return torch.log(p / (1 - p))


def _scene(n_objects: int, per_object: int = 6, n_background: int = 3000, seed: int = 0):
    """Boxes (1,N,4) and logits (1,N): each object hit by several jittered, confident anchors,
    plus many background anchors at low confidence (p <= 0.05), as a real head outputs."""
    g = torch.Generator().manual_seed(seed)
    boxes, logits = [], []
    for k in range(n_objects):
        centre = torch.tensor([60.0 + 120 * k, 80.0])
        jitter = torch.randn(per_object, 2, generator=g) * 1.5
        size = 40 + torch.randn(per_object, 2, generator=g)
        lo, hi = centre + jitter - size / 2, centre + jitter + size / 2
        boxes.append(torch.cat([lo, hi], 1))
        logits.append(_logit(0.55 + 0.4 * torch.rand(per_object, generator=g)))
    xy = torch.rand(n_background, 2, generator=g) * 500
    wh = 5 + torch.rand(n_background, 2, generator=g) * 60
    boxes.append(torch.cat([xy, xy + wh], 1))
    logits.append(_logit(0.001 + 0.05 * torch.rand(n_background, generator=g)))
    return torch.cat(boxes)[None], torch.cat(logits)[None]


@pytest.mark.parametrize("n_objects", [0, 1, 3, 4])
def test_soft_count_groups_anchors_and_does_not_leak(n_objects):
    boxes, logits = _scene(n_objects)
    count = soft_count(boxes, logits)
    assert count.item() == pytest.approx(n_objects, abs=0.05)
    # What this guards against: summing confidences counts each object ~5 times, plus the
    # background mass of thousands of low anchors.
    naive = torch.sigmoid(logits).sum()
    assert naive > n_objects * 3 + 20


def test_soft_count_keeps_separate_overlapping_objects_and_is_differentiable():
    # Two boxes with IoU ~0.33 (NMS at 0.7 keeps both) and a near-duplicate of the first.
    boxes = torch.tensor([[[0.0, 0, 40, 40], [20, 0, 60, 40], [1, 1, 41, 41]]])
    logits = _logit([0.9, 0.8, 0.7])[None].requires_grad_(True)
    count = soft_count(boxes, logits)
    assert count.item() == pytest.approx(2.0, abs=0.05)
    count.backward()
    assert torch.isfinite(logits.grad).all()
    # A weak object near the threshold gets the gradient; saturated ones barely move.
    weak = _logit([0.9, 0.25])[None].requires_grad_(True)
    soft_count(torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60]]]), weak).backward()
    assert weak.grad[0, 1] > 10 * weak.grad[0, 0].abs()


def _plateau(n: int = 2000, seed: int = 0):
    """A random detector's output: thousands of anchors far above the gate, many with exactly
    tied logits (saturated heads), boxes all over the image: more live anchors than candidates."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(1, n, 2, generator=g) * 400
    boxes = torch.cat([xy, xy + 10 + torch.rand(1, n, 2, generator=g) * 50], -1)
    logits = torch.where(torch.rand(1, n, generator=g) < 0.5, torch.full((1, n), 3.0),
                         2 + 2 * torch.rand(1, n, generator=g))
    return boxes, logits


@pytest.mark.parametrize("cfg", [SoftCountConfig(), SoftCountConfig(max_candidates=64)])
def test_soft_count_is_continuous_where_anchors_tie_or_cross_the_candidate_cut(cfg):
    # The failure this guards against: which anchors enter the candidate set, and who
    # suppresses whom among tied ones, flipped with 1e-5 of float noise (batch vs single
    # outputs of the same detector), moving the count by up to 0.15.
    boxes, logits = _plateau()
    base = soft_count(boxes, logits, cfg).item()
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        noisy = logits + 1e-5 * torch.randn(logits.shape, generator=g)
        assert soft_count(boxes, noisy, cfg).item() == pytest.approx(base, abs=5e-3)
    # Nor does the order in which the head lists its anchors matter.
    order = torch.randperm(logits.shape[1], generator=g)
    assert soft_count(boxes[:, order], logits[:, order], cfg).item() == pytest.approx(base, abs=5e-3)


def test_soft_count_is_unchanged_by_the_soft_order_on_separated_anchors():
    # Anchors whose logits differ by more than a few order temperatures keep the greedy order:
    # a near-duplicate behind a sure anchor is suppressed, as in NMS.
    boxes = torch.tensor([[[0.0, 0, 40, 40], [1, 1, 41, 41], [0, 1, 40, 41]]])
    count = soft_count(boxes, _logit([0.95, 0.9, 0.8])[None])
    assert count.item() == pytest.approx(1.0, abs=1e-3)


def test_soft_count_threshold_follows_config():
    boxes = torch.tensor([[[0.0, 0, 10, 10]]])
    logits = _logit([0.4])[None]
    assert soft_count(boxes, logits, SoftCountConfig(conf=0.25)).item() > 0.85
    assert soft_count(boxes, logits, SoftCountConfig(conf=0.6)).item() < 0.2


# --------------------------------------------------------------------------- the likelihood objective

def _log_lik(boxes, logits, n):
    return count_log_likelihood(boxes, logits, torch.tensor([float(n)]))


def test_likelihood_by_hand_on_separated_boxes():
    # Three separate boxes at p = 0.9, 0.6, 0.2: "two" = log .9 + log .6 + log(1 - .2).
    boxes = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60], [100, 0, 110, 10]]])
    logits = _logit([0.9, 0.6, 0.2])[None]
    expected = torch.log(torch.tensor([0.9, 0.6, 0.8])).sum()
    assert _log_lik(boxes, logits, 2).item() == pytest.approx(expected.item(), abs=1e-4)
    expected_one = torch.log(torch.tensor([0.9, 0.4, 0.8])).sum()
    assert _log_lik(boxes, logits, 1).item() == pytest.approx(expected_one.item(), abs=1e-4)


@pytest.mark.parametrize("n_objects", [0, 1, 3])
def test_likelihood_is_highest_at_the_true_count_and_groups_anchors(n_objects):
    # Duplicate anchors on one object are suppressed as in the soft count: they are neither a
    # second object nor a penalty.
    boxes, logits = _scene(n_objects)
    scores = [_log_lik(boxes, logits, n).item() for n in range(6)]
    assert max(range(6), key=scores.__getitem__) == n_objects
    assert scores[n_objects] > -0.5 * max(n_objects, 1) - 1.0


def test_likelihood_gradient_is_largest_where_the_count_is_surely_wrong():
    # The failure this guards against: the soft count's sharp gate gives an extra object the
    # detector is sure of (p = 0.95) almost no gradient, so the aligner never removes it.
    boxes = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60]]])
    sure = _logit([0.95, 0.95])[None].requires_grad_(True)
    _log_lik(boxes, sure, 1).backward()
    soft = _logit([0.95, 0.95])[None].requires_grad_(True)
    (-(soft_count(boxes, soft) - 1).abs()).backward()
    assert sure.grad.abs().max() > 0.9 and soft.grad.abs().max() < 1e-3
    # and a missing object the detector gives little chance gets pushed up.
    weak = _logit([0.95, 0.02])[None].requires_grad_(True)
    _log_lik(boxes, weak, 2).backward()
    assert weak.grad[0, 1] > 0.9


def test_likelihood_is_continuous_where_anchors_tie():
    boxes, logits = _plateau()
    numbers = torch.tensor([3.0])
    base = count_log_likelihood(boxes, logits, numbers).item()
    g = torch.Generator().manual_seed(1)
    noisy = logits + 1e-5 * torch.randn(logits.shape, generator=g)
    assert count_log_likelihood(boxes, noisy, numbers).item() == pytest.approx(base, abs=1e-2)
    order = torch.randperm(logits.shape[1], generator=g)
    assert count_log_likelihood(boxes[:, order], logits[:, order], numbers).item() == pytest.approx(base, abs=1e-2)


# --------------------------------------------------------------------------- ultralytics path

@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory) -> Path:
    """A tiny YAML-built DetectionModel saved in the contract format (model.yaml + model.safetensors)."""
    pytest.importorskip("ultralytics")
    import copy

    from alignkit.detectors import import_ultralytics, save_detector

    DetectionModel, _ = import_ultralytics()
    torch.manual_seed(0)
    model = DetectionModel(cfg=copy.deepcopy(TINY_YAML), verbose=False)
    # An untrained head starts at p ~ 1e-4 everywhere (ultralytics' bias prior); lift the
    # class biases near the threshold so that the test sees live presences and gradients.
    for cls_head in model.model[-1].cv3:
        cls_head[-1].bias.data.fill_(-1.0)
    return save_detector(model.eval(), tmp_path_factory.mktemp("detector"))


def test_contract_files(detector_dir):
    import yaml

    assert sorted(p.name for p in detector_dir.iterdir()) == ["model.safetensors", "model.yaml"]
    cfg = yaml.safe_load((detector_dir / "model.yaml").read_text())
    assert cfg["nc"] == 3 and cfg["names"] == NAMES


@pytest.fixture(scope="module")
def reward(detector_dir):
    return load_reward("count", detector=str(detector_dir))


def test_count_reward_gradients_and_batch_invariance(reward):
    assert reward.names == NAMES and not any(p.requires_grad for p in reward.parameters())
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 50, 70, generator=g).requires_grad_(True)  # padded to 64x96 inside
    prompts = ["two circles", "one square on a white background", "4 triangles"]
    scores = reward(images, prompts)
    assert scores.shape == (3,) and torch.isfinite(scores).all() and (scores <= 0).all()
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    with torch.no_grad():
        single = torch.cat([reward(images[i:i + 1], prompts[i:i + 1]) for i in range(3)])
    # Batch and single forwards differ by float noise (~1e-5, kernel-dependent); the soft count
    # is continuous (tested above on a plateau of tied anchors), so the scores stay close.
    torch.testing.assert_close(scores.detach(), single, rtol=0, atol=2e-2)


def test_count_reward_matches_soft_count_of_head(reward):
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        counts = reward.soft_counts(images, torch.tensor([0, 2]))
        scores = reward(images, ["3 circles", "no triangles"])
    expected = -(torch.sqrt((counts - torch.tensor([3.0, 0.0])) ** 2 + 0.01) - 0.1)
    torch.testing.assert_close(scores, expected)


def test_likelihood_objective_option(detector_dir, reward):
    lik = load_reward("count", detector=str(detector_dir), objective="likelihood")
    images = torch.rand(2, 3, 64, 64).requires_grad_(True)
    scores = lik(images, ["3 circles", "no triangles"])
    assert scores.shape == (2,) and (scores <= 0).all()
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    with torch.no_grad():
        boxes, logits = reward.class_outputs(images, torch.tensor([0, 2]))
    expected = count_log_likelihood(boxes, logits, torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(scores.detach(), expected)


def test_shifted_copies_are_the_image_and_fixed_shifts_of_it():
    images = torch.rand(2, 3, 40, 40)
    views = shifted_copies(images, 4, shift=0.1)
    assert views.shape == (8, 3, 40, 40)
    assert torch.equal(views[:2], images)
    assert torch.equal(shifted_copies(images, 4, 0.1), views)  # fixed: the same every call
    for i in range(1, 4):
        view = views[2 * i:2 * i + 2]
        view = view.flip(-1) if i % 2 else view
        assert not torch.equal(view, images)
        # Some shift of at most 4 px (0.1 of 40) maps the image onto the view away from the padded edges.
        assert any(torch.equal(view[..., 4:36, 4:36], images[..., 4 + dy:36 + dy, 4 + dx:36 + dx])
                   for dx in range(-4, 5) for dy in range(-4, 5))


def test_augment_averages_the_objective_over_the_views(detector_dir, reward):
    aug = load_reward("count", detector=str(detector_dir), objective="likelihood", augment=3)
    images = torch.rand(2, 3, 64, 64).requires_grad_(True)
    prompts = ["3 circles", "no triangles"]
    scores = aug(images, prompts)
    scores.sum().backward()
    assert scores.shape == (2,) and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    with torch.no_grad():
        views = shifted_copies(images, 3, 0.1)
        boxes, logits = reward.class_outputs(views, torch.tensor([0, 2]).repeat(3))
        each = count_log_likelihood(boxes, logits, torch.tensor([3.0, 0.0]).repeat(3)).view(3, 2)
    torch.testing.assert_close(scores.detach(), each.mean(0))
    # One view is the image alone.
    single = load_reward("count", detector=str(detector_dir), objective="likelihood", augment=1)
    with torch.no_grad():
        torch.testing.assert_close(single(images, prompts), each[0])


def test_targets_count_with_nms(reward):
    images = torch.rand(2, 3, 64, 64)
    out = reward.targets(images, ["two circles", "a square"])
    assert set(out) == {"count_nms", "count_nms_correct"}
    counts = out["count_nms"]
    assert counts.shape == (2,) and (counts >= 0).all() and (counts == counts.round()).all()
    torch.testing.assert_close(out["count_nms_correct"], (counts == torch.tensor([2.0, 1.0])).float())


def test_prompt_without_number_is_one_line(reward):
    with pytest.raises(AlignkitError, match="no number of 'circle'") as info:
        reward(torch.rand(1, 3, 32, 32), ["red circles on a white background"])
    assert "\n" not in str(info.value)


def test_loads_from_hub_cache(detector_dir, monkeypatch, tmp_path):
    """A hub repo id resolves through huggingface_hub's cache layout, offline."""
    from huggingface_hub import constants

    snapshot = tmp_path / "models--alignkit-test--rewards-pixel" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for name in ("model.yaml", "model.safetensors"):
        (snapshot / name).write_bytes((detector_dir / name).read_bytes())
    (tmp_path / "models--alignkit-test--rewards-pixel" / "refs").mkdir()
    (tmp_path / "models--alignkit-test--rewards-pixel" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    reward = load_reward("count", detector="alignkit-test/rewards-pixel")
    assert reward.names == NAMES
    with pytest.raises(MissingWeightsError, match="not in the Hugging Face cache") as info:
        load_reward("count", detector="alignkit-test/absent")
    assert "\n" not in str(info.value)


def test_weights_that_do_not_fit_the_yaml(detector_dir, tmp_path):
    import yaml

    cfg = yaml.safe_load((detector_dir / "model.yaml").read_text())
    cfg["nc"], cfg["names"] = 4, ["circle", "square", "triangle", "star"]
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "model.safetensors").write_bytes((detector_dir / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit") as info:
        load_reward("count", detector=str(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("setup, error, match", [
    (lambda d: None, MissingWeightsError, "no file at .*model.yaml"),
    (lambda d: (d / "model.yaml").write_text("nc: 3\nnames: [a, b]\nbackbone: []\nhead: []\n"),
     CheckpointError, "'names' list or mapping of nc"),
    (lambda d: (d / "model.yaml").write_text("just: [text"), CheckpointError, "not valid YAML"),
])
def test_bad_detector_folders(tmp_path, setup, error, match):
    pytest.importorskip("ultralytics")
    setup(tmp_path)
    with pytest.raises(error, match=match) as info:
        load_reward("count", detector=str(tmp_path))
    assert "\n" not in str(info.value)


def _stock_checkpoint(model, path: Path, key: str = "ema") -> Path:
    """Save `model` as ultralytics' trainer does (save_model): the whole fp16 module under
    'ema' (or 'model' after strip_optimizer), its config namespace, numpy metrics, metadata."""
    import copy

    import numpy as np
    from ultralytics.cfg import get_cfg

    model.args = get_cfg()  # the trainer attaches its IterableSimpleNamespace config
    ckpt = {"epoch": -1, "best_fitness": np.float64(0.5), "model": None, "ema": None, "updates": 10,
            "optimizer": None, "train_args": vars(get_cfg()), "train_metrics": {"metrics/mAP50(B)": np.float64(0.4)},
            "date": "2026-11-26T00:00:00", "version": "8.4.190", "license": "AGPL-3.0 License", "docs": "https://docs.ultralytics.com"}
    ckpt[key] = copy.deepcopy(model).half()
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("key", ["ema", "model"])
def test_stock_pt_loads_weights_only(tmp_path, key):
    pytest.importorskip("ultralytics")
    import copy

    from alignkit.detectors import import_ultralytics

    DetectionModel, _ = import_ultralytics()
    torch.manual_seed(0)
    model = DetectionModel(cfg=copy.deepcopy(TINY_YAML), verbose=False).eval()
    model.names = dict(NAMES)
    path = _stock_checkpoint(model, tmp_path / "best.pt", key)
    reward = load_reward("count", detector=str(path))
    assert reward.names == NAMES and reward.dtype == torch.float32
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reward.head_outputs(x)[0], model.half().float()(x)[0])


class _Exploit:
    def __reduce__(self):
        import os

        return (os.getcwd, ())  # any callable: a weights-only load must refuse to call it


@pytest.mark.parametrize("payload, error, match", [
    ({"model": _Exploit()}, CheckpointError, "refused to load .*convert it once"),
    ({"state_dict": {"w": torch.zeros(1)}}, CheckpointError, "holds no ultralytics DetectionModel"),
    (None, MissingWeightsError, "no detector file at"),
])
def test_bad_pt_files_are_one_line(tmp_path, payload, error, match):
    pytest.importorskip("ultralytics")
    path = tmp_path / "yolov8n.pt"
    if payload is not None:
        torch.save(payload, path)
    with pytest.raises(error, match=match) as info:
        load_reward("count", detector=str(path))
    assert "\n" not in str(info.value)


def test_missing_ultralytics_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # makes `import ultralytics` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'alignkit\[count\]'") as info:
        load_reward("count", detector="anything")
    assert "\n" not in str(info.value)


def test_no_default_detector_without_toy_weights(monkeypatch, tmp_path):
    pytest.importorskip("ultralytics")
    import alignkit.toy

    monkeypatch.setattr(alignkit.toy, "WEIGHTS_DIR", tmp_path / "no-weights")
    with pytest.raises(MissingWeightsError, match="pass detector=DIR") as info:
        load_reward("count")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("options", [{"imgsz": 20}, {"conf": 1.5}, {"iou": 0}, {"objective": "mse"},
                                     {"augment": 0}, {"augment": 2.5}, {"augment": 64}, {"shift": 1.5}])
def test_bad_options(options):
    with pytest.raises(AlignkitError):
        load_reward("count", detector="x", **options)


def test_loading_leaves_pil_alone(reward, tmp_path):
    """ultralytics patches PIL.Image.open at import; the reward undoes it, so a non-image file
    still fails the way Pillow fails (not with an attempt to install pi-heif)."""
    from PIL import Image, UnidentifiedImageError

    assert Image.open.__module__.startswith("PIL")
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(UnidentifiedImageError):
        Image.open(tmp_path / "x.png")


def test_converted_stock_model_round_trips(tmp_path):
    """What the .pt refusal tells users to run: a model built the way ultralytics builds its
    stock ones (from 'yolov8n.yaml', fp16 weights, dataset names) saved with save_detector,
    then loaded as the count reward, gives the same head outputs."""
    pytest.importorskip("ultralytics")
    from alignkit.detectors import import_ultralytics, save_detector

    DetectionModel, _ = import_ultralytics()
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    model.names = {0: "apple", 1: "person"}
    model.half()  # stock checkpoints hold fp16 weights
    save_detector(model, tmp_path)
    reward = load_reward("count", detector=str(tmp_path))
    assert reward.names == {0: "apple", 1: "person"}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.float()(x)[0]
        got = reward.head_outputs(x)[0]
    torch.testing.assert_close(got, expected)


def test_yaml_ultralytics_cannot_build_is_one_line(detector_dir, tmp_path):
    import yaml

    cfg = yaml.safe_load((detector_dir / "model.yaml").read_text())
    cfg["backbone"][0][2] = "NoSuchModule"
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "model.safetensors").write_bytes((detector_dir / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="ultralytics cannot build") as info:
        load_reward("count", detector=str(tmp_path))
    assert "\n" not in str(info.value)


def test_import_keeps_one_settings_folder_no_banner_and_stdout_clean(detector_dir, tmp_path):
    """In fresh processes with neither YOLO variable set: ultralytics gets YOLO_OFFLINE=1 and
    one settings folder under the user's cache (~/.cache/alignkit/ultralytics), made by the
    first load and reused by the next (no new temporary folder per load); its settings banner
    is not printed, and nothing but ours reaches stdout."""
    import os
    import subprocess
    import tempfile

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "XDG_"))}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    code = ("import os; from alignkit.rewards import load_reward; load_reward('count', detector=%r); "
            "print(os.environ['YOLO_OFFLINE'], os.environ['YOLO_CONFIG_DIR'])" % str(detector_dir))
    temp_before = set(os.listdir(tempfile.gettempdir()))
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "Settings" not in result.stderr, result.stderr
        offline, config_dir = result.stdout.split()  # the only stdout is ours
        assert offline == "1" and config_dir == str(home / ".cache" / "alignkit" / "ultralytics")
    assert [str(p.relative_to(home)) for p in home.rglob("*") if p.is_dir()] == \
        [".cache", ".cache/alignkit", ".cache/alignkit/ultralytics", ".cache/alignkit/ultralytics/Ultralytics"]
    assert not {n for n in set(os.listdir(tempfile.gettempdir())) - temp_before if "yolo" in n.lower()}
