"""`alignkit reward fit` and the `fitted` reward on a tiny CLIP backbone, with known answers:
a target that is a linear function of the embeddings is recovered; random labels are not
(chance-level metrics); the saved head is plain linear algebra on the raw embeddings; a second
fit on the same pictures computes no embedding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from alignkit.rewards import load_reward
from alignkit.rewards.fit.run import FitConfig, fit_reward
from fit_data import embeddings, save_images, tiny_backbone, write_rows

N = 120


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """N images, a tiny CLIP, and a score that is linear in that CLIP's image embeddings."""
    root = tmp_path_factory.mktemp("fit")
    names = save_images(root / "images", N)
    backbone = tiny_backbone(root / "clip")
    z = embeddings(backbone, root / "images", names)
    w = np.random.default_rng(0).normal(size=z.shape[1])
    score = z @ w
    return {"root": root, "names": names, "backbone": backbone, "z": z, "score": score}


def fit(world, data: Path, out: str, **options) -> dict:
    options = {"heads": ("linear",), "folds": 5, "hack_images": 8, "compare_reward": "none",
               "cache_dir": world["root"] / "cache", "backbone": str(world["backbone"]), **options}
    config = FitConfig(data=data, out=world["root"] / out, **options)
    return fit_reward(config)


def ratings_file(world, name="ratings.csv", scores=None) -> Path:
    scores = world["score"] if scores is None else scores
    return write_rows(world["root"] / name, [{"image": f"images/{n}", "score": f"{s:.6f}"}
                                              for n, s in zip(world["names"], scores)])


def test_a_linear_target_is_recovered_and_saved_as_plain_linear_algebra(world):
    report = fit(world, ratings_file(world), "ratings", heads=("linear", "mlp"))
    assert set(report["heads"]) == {"linear", "mlp"} and report["chosen"] == "linear"
    assert report["heads"]["linear"]["spearman"]["mean"] >= 0.95
    assert [p["fraction"] for p in report["learning_curve"]] == [0.1, 0.25, 0.5, 1.0]
    assert report["hackability"]["fitted"]["steps"] == 10
    out = world["root"] / "ratings"
    assert sorted(p.name for p in out.iterdir()) == ["fit.png", "report.json", "reward.json", "reward.safetensors"]
    strict = {"parse_constant": lambda c: pytest.fail(f"{c} in JSON")}  # NaN is no JSON
    json.loads((out / "report.json").read_text(), **strict)
    meta = json.loads((out / "reward.json").read_text(), **strict)
    assert meta["backbone"]["spec"] == str(world["backbone"]) and meta["backbone"]["revision"].startswith("sha256")
    assert meta["head"]["kind"] == "linear" and meta["data"]["sha256"] and "spearman" in meta["metrics"]

    # The saved head reads raw embeddings: standardisation is folded into its weights.
    from safetensors.torch import load_file

    state = load_file(str(out / "reward.safetensors"))
    assert set(state) == {"layers.0.weight", "layers.0.bias"}
    by_hand = world["z"] @ state["layers.0.weight"].numpy()[0] + state["layers.0.bias"].numpy()[0]
    from alignkit.images import load_image

    reward = load_reward(f"fitted:path={out}")
    images = torch.stack([load_image(world["root"] / "images" / n) for n in world["names"][:16]])
    scores = reward(images, [""] * 16).numpy()
    np.testing.assert_allclose(scores, by_hand[:16], rtol=1e-3, atol=1e-4)
    assert spearmanr(scores, world["score"][:16]).statistic > 0.95
    # Differentiable with respect to the pixels, and frozen.
    images.requires_grad_(True)
    reward(images, [""] * 16).sum().backward()
    assert images.grad.abs().sum() > 0 and not any(p.requires_grad for p in reward.parameters())


def test_pairs_and_labels_fit_with_both_heads(world):
    score, names = world["score"], world["names"]
    # Every pair within blocks of 4 images (HPD-style rankings: 30 independent groups, 180
    # pairs); the chosen image is the higher-scoring one.
    pairs = []
    for block in range(0, N, 4):
        for i in range(block, block + 4):
            for j in range(i + 1, block + 4):
                hi, lo = (i, j) if score[i] > score[j] else (j, i)
                pairs.append({"prompt": "a picture", "chosen": f"images/{names[hi]}", "rejected": f"images/{names[lo]}"})
    report = fit(world, write_rows(world["root"] / "pairs.jsonl", pairs), "pairs", heads=("linear", "mlp"), folds=3)
    assert report["data"]["kind"] == "pairs" and report["heads"]["linear"]["pair_accuracy"]["mean"] >= 0.85
    assert report["heads"]["mlp"]["pair_accuracy"]["mean"] > 0.6

    median = np.median(score)
    labels = [{"image": f"images/{n}", "label": "good" if s > median else "bad"} for n, s in zip(names, score)]
    report = fit(world, write_rows(world["root"] / "labels.jsonl", labels), "labels", heads=("linear", "mlp"),
                 positive="good", folds=3)
    assert report["heads"]["linear"]["auc"]["mean"] >= 0.9 and report["heads"]["mlp"]["auc"]["mean"] > 0.7
    # The reward is log P(good): highest on the best-scored images, and never above 0.
    from alignkit.images import load_image

    order = np.argsort(score)
    picks = [order[0], order[-1]]
    images = torch.stack([load_image(world["root"] / "images" / names[i]) for i in picks])
    worst, best = load_reward(f"fitted:path={world['root'] / 'labels'}")(images, ["", ""]).tolist()
    assert worst < best <= 0


def test_random_targets_give_chance_level_metrics(world):
    rng = np.random.default_rng(1)
    report = fit(world, ratings_file(world, "random.csv", rng.normal(size=N)), "random-ratings")
    assert abs(report["heads"]["linear"]["spearman"]["mean"]) < 0.25
    labels = [{"image": f"images/{n}", "label": str(rng.integers(2))} for n in world["names"]]
    report = fit(world, write_rows(world["root"] / "random.jsonl", labels), "random-labels")
    assert abs(report["heads"]["linear"]["auc"]["mean"] - 0.5) < 0.15
    assert abs(report["heads"]["linear"]["accuracy"]["mean"] - 0.5) < 0.15


def test_a_second_fit_on_the_same_pictures_computes_nothing(world, tmp_path):
    data = ratings_file(world)
    first = fit(world, data, "cache-1", cache_dir=tmp_path / "cache")
    assert first["embeddings"]["computed"] == N
    # The same pictures under other names, in another folder: found by content.
    shutil.copytree(world["root"] / "images", tmp_path / "copies")
    rows = [{"image": f"copies/{n}", "score": s} for n, s in zip(world["names"], world["score"])]
    second = fit(world, write_rows(tmp_path / "again.jsonl", rows), "cache-2", cache_dir=tmp_path / "cache")
    assert second["embeddings"]["computed"] == 0
    assert second["heads"]["linear"]["spearman"]["mean"] == pytest.approx(first["heads"]["linear"]["spearman"]["mean"])


def test_duplicates_are_split_by_image_with_a_warning(world, tmp_path):
    from alignkit.rewards.fit.crossval import fold_splits
    from alignkit.rewards.fit.data import read_dataset
    from alignkit.rewards.fit.run import make_problem

    folder = tmp_path / "dup"
    shutil.copytree(world["root"] / "images", folder)
    for n in world["names"][:30]:  # 30 pictures appear twice, under two names
        shutil.copy(folder / n, folder / f"copy-{n}")
    rows = [{"image": f"dup/{n}", "score": s} for n, s in zip(world["names"], world["score"])]
    rows += [{"image": f"dup/copy-{n}", "score": s} for n, s in zip(world["names"][:30], world["score"])]
    data_file = write_rows(tmp_path / "dup.csv", rows)
    report = fit(world, data_file, "dup")
    assert report["data"]["duplicate_rows"] == 30 and "repeat an image" in report["warnings"][0]
    data = read_dataset(data_file)
    assert len(data.paths) == N
    problem = make_problem(data, np.zeros((N, 4)), None)
    for train, test in fold_splits(problem, 5):
        assert not set(data.images[train, 0]) & set(data.images[test, 0])


def test_with_prompt_and_overwrite(world):
    rows = [{"image": f"images/{n}", "score": s, "prompt": "a red thing" if i % 2 else "a blue thing"}
            for i, (n, s) in enumerate(zip(world["names"], world["score"]))]
    data = write_rows(world["root"] / "prompted.jsonl", rows)
    fit(world, data, "prompted", with_prompt=True, folds=3)
    meta = json.loads((world["root"] / "prompted" / "reward.json").read_text())
    assert meta["head"]["with_prompt"] and meta["head"]["sizes"][0] == 3 * 16
    report = fit(world, data, "prompted", with_prompt=True, folds=2, overwrite=True)
    assert report["folds"] == 2
    assert json.loads((world["root"] / "prompted" / "report.json").read_text())["folds"] == 2
    assert not list(world["root"].glob(".prompted*"))  # no temporary folder left behind


def test_an_open_clip_backbone_fits_and_reloads_from_another_directory(world, tmp_path, monkeypatch):
    from tiny_models import register_tiny_open_clip, save_hps_checkpoint

    from alignkit.images import load_image

    arch = register_tiny_open_clip(tmp_path / "configs")
    checkpoint = save_hps_checkpoint(tmp_path / "ckpt" / "tiny.pt", arch)
    monkeypatch.chdir(tmp_path / "ckpt")
    report = fit(world, ratings_file(world), "open-clip", backbone=f"open_clip:{arch}@tiny.pt", folds=2)
    assert report["backbone"]["spec"] == f"open_clip:{arch}@{checkpoint}"  # absolute, for any cwd
    monkeypatch.chdir(tmp_path)
    reward = load_reward(f"fitted:path={world['root'] / 'open-clip'}")
    images = torch.stack([load_image(world["root"] / "images" / n) for n in world["names"][:4]])
    assert reward(images, [""] * 4).shape == (4,)


def test_the_default_backbone_comes_from_the_hub_cache_with_its_revision(world, tmp_path, monkeypatch):
    """No --backbone: openai/clip-vit-large-patch14 through the HF cache (here a tiny CLIP laid
    out under that id), its snapshot's commit recorded, and the fitted reward reloads from it."""
    from tiny_models import put_in_hub_cache, use_hub_cache

    cache = use_hub_cache(monkeypatch, tmp_path / "hub")
    put_in_hub_cache(cache, "openai/clip-vit-large-patch14", {".": world["backbone"]}, revision="a" * 40)
    report = fit(world, ratings_file(world), "default-backbone", backbone=None, folds=2)
    assert report["backbone"]["id"] == "openai/clip-vit-large-patch14"
    assert report["backbone"]["revision"] == "a" * 40
    assert report["heads"]["linear"]["spearman"]["mean"] >= 0.95
    assert load_reward(f"fitted:path={world['root'] / 'default-backbone'}").embedder.revision == "a" * 40
    # A head fitted on another revision of the backbone reads other features: refused, one line.
    other = tmp_path / "other-revision"
    shutil.copytree(world["root"] / "default-backbone", other)
    meta = json.loads((other / "reward.json").read_text())
    meta["backbone"]["revision"] = "b" * 40
    (other / "reward.json").write_text(json.dumps(meta))
    from alignkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="fitted on backbone 'openai/clip-vit-large-patch14' revision bbbb"):
        load_reward(f"fitted:path={other}")
