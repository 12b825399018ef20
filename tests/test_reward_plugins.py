"""Rewards of the user's own: a fitted reward and a plugin reward (module:factory, entry points)
each train a tiny pipeline, and both appear in `alignkit eval` and `alignkit score`."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.rewards import load_reward
from alignkit.rewards import registry
from fit_data import save_images, tiny_backbone, write_rows
from cli_runner import run_cli

PLUGIN = '''
import torch
from alignkit.rewards import Reward


class Warmth(Reward):
    def __init__(self, gain):
        super().__init__()
        self.gain = gain

    def score(self, images, prompts):
        return self.gain * (images[:, 0] - images[:, 2]).mean(dim=(1, 2))


def warmth(gain: float = 1.0):
    """How much redder than blue an image is (a test plugin)."""
    return Warmth(gain)


def plain():
    return lambda images, prompts: images.mean(dim=(1, 2, 3))


def bad_shape():
    return lambda images, prompts: images.mean(dim=(1, 2))


def non_finite():
    return lambda images, prompts: images.mean(dim=(1, 2, 3)) * float("nan")


def detached():
    return lambda images, prompts: images.detach().mean(dim=(1, 2, 3))


def fails():
    raise RuntimeError("no weights here")
'''
TRAIN = ["--prompt", "a cat", "--num-inference-steps", "2", "--guidance-scale", "1", "--train-batch-size", "1",
         "--max-train-steps", "2", "--report-to", "none", "--truncation", "last:1"]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "ak_testplug.py").write_text(textwrap.dedent(PLUGIN))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("ak_testplug", None)


@pytest.fixture(scope="module")
def fitted_dir(tmp_path_factory):
    """A reward fitted (linear, 2 folds) on 40 images: brighter red scores higher."""
    from alignkit.images import load_image
    from alignkit.rewards.fit.run import FitConfig, fit_reward

    root = tmp_path_factory.mktemp("fitted")
    names = save_images(root / "images", 40, seed=3)
    rows = [{"image": f"images/{n}", "score": float(load_image(root / "images" / n)[0].mean())} for n in names]
    fit_reward(FitConfig(data=write_rows(root / "red.csv", rows), out=root / "reward",
                         backbone=str(tiny_backbone(root / "clip")), heads=("linear",), folds=2, hack_images=4,
                         compare_reward="none", cache_dir=root / "cache"))
    return root / "reward"


def _train(tiny_sd, reward: str, out):
    code = run_cli(["train", "--model", tiny_sd, "--reward", reward, *TRAIN, "--output-dir", out])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "reward" in r]) == 2 and all(torch.isfinite(torch.tensor(r["reward"])) for r in rows
                                                                if "reward" in r)
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def _eval(run, heldout: str, out) -> list[dict]:
    assert run_cli(["eval", run, "--seeds", "1", "--scales", "1", "--rewards", heldout, "--output-dir", out,
                    "--device", "cpu"]) == 0
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


def test_a_fitted_reward_trains_and_a_plugin_is_held_out(tiny_sd, fitted_dir, plugin_path, tmp_path):
    spec = f"fitted:path={fitted_dir}"
    _train(tiny_sd, spec, tmp_path / "run")
    rows = _eval(tmp_path / "run", "ak_testplug:warmth", tmp_path / "eval")
    assert rows and all({"reward", "ak_testplug:warmth"} <= set(row) for row in rows)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["reward"] == spec


def test_a_plugin_reward_trains_and_a_fitted_one_is_held_out(tiny_sd, fitted_dir, plugin_path, tmp_path):
    _train(tiny_sd, "ak_testplug:warmth:2", tmp_path / "run")
    rows = _eval(tmp_path / "run", f"fitted:path={fitted_dir}", tmp_path / "eval")
    assert rows and all({"reward", f"fitted:path={fitted_dir}"} <= set(row) for row in rows)


def test_both_score_files_combined(fitted_dir, plugin_path, tmp_path, capsys):
    from alignkit.images import save_image

    red, blue = torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)
    red[0], blue[2] = 0.9, 0.9
    save_image(red, tmp_path / "red.png")
    save_image(blue, tmp_path / "blue.png")
    spec = f"fitted:path={fitted_dir}+ak_testplug:warmth:0.5"
    assert run_cli(["score", tmp_path / "red.png", tmp_path / "blue.png", "--reward", spec, "--prompt", "x",
                    "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row in rows:
        assert row["reward"] == pytest.approx(row[f"fitted:path={fitted_dir}"] + 0.5 * row["ak_testplug:warmth"], rel=1e-4)
    red_row, blue_row = rows
    assert red_row["ak_testplug:warmth"] > 0 > blue_row["ak_testplug:warmth"]
    assert red_row[f"fitted:path={fitted_dir}"] > blue_row[f"fitted:path={fitted_dir}"]  # it learnt "red"


def test_a_callable_is_wrapped_and_options_reach_the_factory(plugin_path):
    images = torch.rand(2, 3, 16, 16)
    assert torch.allclose(load_reward("ak_testplug:plain")(images, ["a", "b"]), images.mean(dim=(1, 2, 3)))
    one = load_reward("ak_testplug:warmth")(images, ["a", "b"])
    three = load_reward("ak_testplug:warmth", gain=3.0)(images, ["a", "b"])
    assert torch.allclose(three, 3 * one)


@pytest.mark.parametrize("factory, message", [
    ("bad_shape", "returned shape (2, 64) for 2 images; it must return (2,)"),
    ("non_finite", "returned non-finite scores"),
    ("detached", "no gradient reaches the pixels"),
    ("fails", "the factory failed (RuntimeError: no weights here)"),
    ("missing", "module 'ak_testplug' has no attribute 'missing'"),
])
def test_the_contract_is_checked_once_at_load(plugin_path, factory, message):
    with pytest.raises(AlignkitError) as info:
        load_reward(f"ak_testplug:{factory}")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_entry_points_are_listed_and_loaded(plugin_path, tmp_path, monkeypatch, capsys):
    dist = tmp_path / "ak_testplug_dist-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ak-testplug-dist\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[alignkit.rewards]\nak_warm = ak_testplug:warmth\n"
                                           "ak_broken = ak_no_such_module:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_read", False)
    try:
        assert run_cli(["rewards"]) == 0
        listing = capsys.readouterr().out
        assert "ak_warm" in listing and "How much redder" in listing
        assert "ak_broken" in listing and "fitted" in listing
        images = torch.rand(2, 3, 16, 16)
        assert load_reward("ak_warm:2")(images, ["a", "b"]).shape == (2,)
        assert registry.get_entry("ak_warm:gain=3").status()[0]  # inline options reach a plugin too
        assert torch.allclose(load_reward("ak_warm:gain=3")(images, ["a", "b"]),
                              3 * load_reward("ak_warm")(images, ["a", "b"]))
        with pytest.raises(AlignkitError, match="cannot import module 'ak_no_such_module'"):
            load_reward("ak_broken")
    finally:
        registry.REGISTRY.pop("ak_warm", None)
        registry.REGISTRY.pop("ak_broken", None)


def test_a_fitted_reward_is_watched_by_text_alignment_by_default():
    from alignkit.evaluation.heldout import default_heldout

    assert default_heldout(["fitted:path=runs/x"]) == ["clip"]
    assert default_heldout(["fitted:path=runs/x"], {"clip": "toy_clip"}) == ["toy_clip"]
    assert default_heldout(["ak_testplug:warmth"]) == []
