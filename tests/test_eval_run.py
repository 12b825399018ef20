"""`alignkit eval` end to end on a tiny Stable Diffusion pipeline built from configs.

The run folder is laid out exactly as the aligner writes it (config.yaml, metrics.jsonl, the
final LoRA and two checkpoint-<step> LoRAs, all in diffusers' format); the rewards are tiny
ones registered here, so everything runs offline on CPU in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import yaml

from alignkit.errors import AlignkitError
from alignkit.evaluation import EvalConfig, run
from alignkit.evaluation.judges import register_judge
from alignkit.rewards import Reward, register
from alignkit.rewards.base import clip_pixels
from alignkit.testing import assemble, build_sd
from tiny_models import small_clip_model

PROMPTS = ["a red cat", "two blue dogs"]
STEPS = 3


# -- tiny rewards ---------------------------------------------------------------------------

class Brightness(Reward):
    """Mean pixel value, times `sign`: the "trained" reward."""

    def __init__(self, sign: float = 1.0):
        super().__init__()
        self.sign = sign

    def score(self, images, prompts):
        return self.sign * images.mean(dim=(1, 2, 3))


# Per-prompt image-space directions, set by a test: the tiny random VAE maps every latent to
# about the same brightness, so a reward must look along the direction the LoRA moves images.
DIRECTIONS: dict[str, dict[str, torch.Tensor]] = {}


class Along(Reward):
    """How far an image lies along its prompt's direction: rises with the LoRA scale."""

    def __init__(self, tag: str):
        super().__init__()
        self.directions = DIRECTIONS[tag]

    def score(self, images, prompts):
        d = torch.stack([self.directions[p] for p in prompts]).to(images)
        return (images * d).mean(dim=(1, 2, 3)) * 1000


class Planted(Along):
    """A held-out reward planted to fall once `Along` passes `threshold`."""

    def __init__(self, tag: str, threshold: float):
        super().__init__(tag)
        self.threshold = threshold

    def score(self, images, prompts):
        return -torch.relu(super().score(images, prompts) - self.threshold)


class DarkFraction(Reward):
    """A reward with a true target beside it, like `compress` beside `jpeg_kb`."""

    def score(self, images, prompts):
        return -images.mean(dim=(1, 2, 3))

    @torch.no_grad()
    def targets(self, images, prompts):
        return {"dark_pixels": (images.mean(dim=1) < 0.5).float().mean(dim=(1, 2))}


SCORE_CALLS = {"n": 0}


@register("eval_brightness", "test: mean brightness")
def _brightness(device=None, dtype=None, sign: float = 1.0):
    SCORE_CALLS["n"] += 1
    return Brightness(sign)


@register("eval_along", "test: projection on a planted image-space direction")
def _along(device=None, dtype=None, tag: str = ""):
    return Along(tag)


@register("eval_planted", "test: held-out reward that falls above a threshold")
def _planted(device=None, dtype=None, tag: str = "", threshold: float = 0.0):
    return Planted(tag, threshold)


@register("eval_dark", "test: darkness with a true target")
def _dark(device=None, dtype=None):
    return DarkFraction()


class TinyClipReward(Reward):
    """A reward with a (random, tiny) transformers CLIP inside, as the clip family has."""

    def __init__(self):
        super().__init__()
        self.model = small_clip_model()

    def score(self, images, prompts):
        x = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear")
        return self.model.get_image_features(pixel_values=x).pooler_output[:, 0]

    def embed_images(self, images):
        return self.model.get_image_features(pixel_values=clip_pixels(images, 16)).pooler_output


CLIP_BUILDS = {"n": 0}


class AlongWithProxy(Along):
    """`Along` with a proxy target read by its own weights, as `count` has its detector's NMS count."""

    proxy_targets = frozenset({"along_proxy"})

    @torch.no_grad()
    def targets(self, images, prompts):
        return {"along_proxy": self.score(images, prompts)}


@register("eval_along_proxy", "test: Along with a proxy target")
def _along_proxy(device=None, dtype=None, tag: str = ""):
    return AlongWithProxy(tag)


def _judge(options, device):
    """A test judge of `eval_along_proxy`: `mode=blind` sees nothing change (the planted case:
    the proxy rose, the truth did not); `mode=sees` reads what the reward reads."""
    from alignkit.evaluation.judges import Judge

    along = Along(options["tag"])

    def read(images, prompts):
        if options["mode"] == "blind":
            return {"judged": torch.zeros(len(prompts))}
        return {"judged": along(images, prompts)}

    return Judge("eval_judge", read, {"judged": +1}, {"judged": ("eval_along_proxy",)}, "test judge")


register_judge("eval_judge", _judge)


@register("eval_tinyclip", "test: a reward with a CLIP image embedding")
def _tinyclip(device=None, dtype=None):
    CLIP_BUILDS["n"] += 1
    return TinyClipReward()


@register("eval_broken", "test: a reward whose checkpoint fails to load")
def _broken(device=None, dtype=None):
    from alignkit.errors import CheckpointError

    raise CheckpointError("eval_broken: /nowhere/head.pth is corrupted or not a checkpoint (EOFError)")


@register("eval_needs_weights", "test: a reward whose weights are not here",
          weights=(("alignkit-test/absent", "absent.safetensors"),))
def _absent(device=None, dtype=None):  # pragma: no cover - never built: its weights are absent
    raise AssertionError("must be skipped before loading")


# -- tiny pipeline and LoRAs ----------------------------------------------------------------

def save_lora(pipe, folder: Path, strength: float, seed: int = 1) -> None:
    """A LoRA as the aligner saves it; lora_B is randomised (peft zero-inits it: a no-op)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = pipe.unet
    if not getattr(unet, "peft_config", None):
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.6 * strength)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A base pipeline folder, a run folder in the aligner's layout, and a mismatched LoRA."""
    root = tmp_path_factory.mktemp("eval")
    pipe = assemble(build_sd())
    pipe.save_pretrained(root / "base")
    run_dir = root / "run"
    # Checkpoints along the way to the final LoRA: the same direction, growing.
    for step, strength in ((2, 0.4), (4, 0.7)):
        save_lora(pipe, run_dir / f"checkpoint-{step}", strength)
        (run_dir / f"checkpoint-{step}" / "optimizer.bin").write_bytes(b"accelerate state")
    save_lora(pipe, run_dir, 1.0)
    config = {"pretrained_model_name_or_path": str(root / "base"), "reward": "eval_brightness",
              "reward_options": {"eval_brightness": {"sign": 1.0}}, "prompts": None, "prompt": PROMPTS[0],
              "resolution": 32, "num_inference_steps": STEPS, "guidance_scale": 3.0, "eta": 0.0,
              "seed": 7, "rank": 4, "lora_alpha": 4}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "reward": 0.4 + 0.01 * s, "loss": -0.4, "lr": 1e-4, "k": 1,
                    "step_time": 0.1, "peak_mem_mb": 10.0}) + "\n" for s in range(1, 7)))
    bad = assemble(build_sd(cross_attention_dim=16))
    save_lora(bad, root / "other_lora", 1.0)
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {"root": root, "run": run_dir, "base": root / "base", "other": root / "other_lora",
            "prompts": root / "prompts.txt"}


@pytest.fixture(scope="module")
def evaluated(world, tmp_path_factory):
    """One full evaluation of the run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("evaluated") / "out"
    return evaluate(world, out), out


def copy_of(evaluated, tmp_path) -> Path:
    """A private copy of the shared output folder: its cache, for tests that add to it."""
    import shutil

    shutil.copytree(evaluated[1], tmp_path / "out")
    return tmp_path / "out"


def evaluate(world, out: Path, **overrides):
    options = {"path": world["run"], "prompts": str(world["prompts"]), "seeds": 2, "output_dir": out,
               "heldout": "eval_dark", "device": "cpu", **overrides}
    return run(EvalConfig(**options))


# -- the run: outputs, shared seeds, over-optimisation, reuse ---------------------------------

def test_outputs_and_their_fields(evaluated):
    result, out = evaluated
    for name in ("scores.jsonl", "summary.json", "grid.png", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    labels = ["base", "checkpoint-2@1", "checkpoint-4@1", "final@0", "final@0.25", "final@0.5", "final@0.75", "final@1"]
    assert [c.label for c in result.conditions] == labels
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == len(labels) * len(PROMPTS) * 2
    for row in rows:
        assert {"prompt", "seed", "checkpoint", "step", "scale", "image", "reward",
                "eval_dark", "dark_pixels", "drift/mse"} <= set(row)
        assert (out / row["image"]).is_file() and row["image"].startswith("images/")
    assert {r["seed"] for r in rows} == {7, 8}  # the run's seed, then the next one
    assert {r["step"] for r in rows} == {0, 2, 4, 6}  # final = last step of metrics.jsonl

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["versions"]) >= {"torch", "diffusers", "alignkit"}
    assert summary["reward"] == "eval_brightness"
    assert summary["settings"] == {"num_inference_steps": STEPS, "guidance_scale": 3.0, "eta": 0.0, "resolution": 32}
    assert summary["pick"]["condition"] in labels and summary["pick"]["reason"].startswith("keep ")
    assert "\n" not in summary["pick"]["reason"]
    conditions = {c["label"]: c for c in summary["conditions"]}
    assert set(conditions) == set(labels)
    stat = conditions["final@1"]["stats"]["reward"]
    assert stat["n"] == 4 and stat["std"] >= 0
    # Every reward, target, diversity and drift per condition and scale.
    assert {"reward", "eval_dark", "dark_pixels", "diversity/pixel", "drift/mse"} <= set(conditions["final@0.5"]["stats"])
    assert conditions["base"]["stats"]["diversity/pixel"]["n"] == len(PROMPTS)
    # The test rewards carry no CLIP: the pixel-space fallback is used, and said so.
    assert summary["embedder"] == "pixel" and any("pixel space" in n for n in summary["notes"])

    from PIL import Image

    with Image.open(out / "grid.png") as grid:
        assert grid.width > grid.height  # two prompt rows, four images each


def test_first_seed_reads_fresh_samples():
    """Seeds run from the run's training seed, or from --first-seed (a replication on fresh samples)."""
    from alignkit.evaluation.config import EvalConfig, resolve_seeds
    from alignkit.evaluation.source import EvalSource

    source = EvalSource(Path("run"), "toy", [], config={"seed": 7})
    assert resolve_seeds(EvalConfig(path=Path("run"), seeds=3), source) == [7, 8, 9]
    assert resolve_seeds(EvalConfig(path=Path("run"), seeds=3, first_seed=1000), source) == [1000, 1001, 1002]
    assert resolve_seeds(EvalConfig(path=Path("run"), seeds=2, first_seed=0), source) == [0, 1]


def test_base_and_tuned_share_seeds(evaluated):
    result, _ = evaluated
    images = {(r.condition.label, r.prompt, r.seed): r.image.float() for r in result.records}
    for prompt in PROMPTS:
        for seed in (7, 8):
            base = images[("base", prompt, seed)]
            # Scale 0 turns the LoRA off: the base model's image, from the same noise.
            assert (images[("final@0", prompt, seed)] - base).abs().max() <= 1  # uint8 rounding
            # The LoRA really changes the image, more at scale 1 than at 0.25.
            d1 = (images[("final@1", prompt, seed)] - base).abs().mean()
            d25 = (images[("final@0.25", prompt, seed)] - base).abs().mean()
            assert d1 > d25 > 0
        # Different seeds give different images.
        assert (images[("base", prompt, 7)] - images[("base", prompt, 8)]).abs().mean() > 1
    drift = {c.label: result.stats[c.label]["drift/mse"].mean for c in result.conditions}
    assert drift["base"] == 0 and drift["final@0"] < 1e-5 < drift["final@1"]


def test_rerun_reuses_images_and_scores(world, evaluated, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    first = evaluated[0]
    assert first.pipeline_calls == 8 * len(PROMPTS)  # one call per (condition, prompt): both seeds in a batch
    calls = {"n": 0}
    original = StableDiffusionPipeline.__call__

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counting)
    out = copy_of(evaluated, tmp_path)
    built = SCORE_CALLS["n"]
    second = evaluate(world, out)
    assert calls["n"] == 0 and second.pipeline_calls == 0
    assert SCORE_CALLS["n"] == built  # every score came from the cache: the reward was not even built
    assert second.stats == first.stats and second.pick == first.pick
    # A new scale is a new condition: only its images are generated.
    third = evaluate(world, out, scales=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5))
    assert calls["n"] == len(PROMPTS) and "final@1.5" in third.stats
    # Other settings are other images, never stale ones.
    evaluate(world, out, num_inference_steps=2, scales=(1.0,))
    assert calls["n"] == len(PROMPTS) + 4 * len(PROMPTS)


def test_planted_overoptimisation_is_flagged_and_pick_follows_heldout(world, evaluated, tmp_path):
    out = copy_of(evaluated, tmp_path)
    probe = evaluated[0]
    # The direction each prompt's images move in under the final LoRA, averaged over seeds.
    images = {(r.condition.label, r.prompt, r.seed): r.as_float() for r in probe.records}
    DIRECTIONS["planted"] = {p: torch.stack([images[("final@1", p, s)] - images[("base", p, s)] for s in probe.seeds]).mean(0)
                             for p in PROMPTS}
    along = _along(tag="planted")
    per_image: dict[str, list[float]] = {}
    for r in probe.records:
        per_image.setdefault(r.condition.label, []).append(float(along(r.as_float()[None], [r.prompt])[0]))
    means = {c: sum(v) / len(v) for c, v in per_image.items()}
    candidates = sorted((c for c in means if c not in ("base", "final@0")), key=means.get)
    top2, rest = candidates[-2:], candidates[:-2]
    assert means[rest[-1]] > means["base"]  # an unflagged candidate beats the base
    # The held-out reward is 0 on every image up to the threshold: it falls only for the top two.
    threshold = max(max(per_image[c]) for c in [*rest, "base", "final@0"]) + 1e-6
    assert all(max(per_image[c]) > threshold for c in top2)

    # A huge std tolerance: only the planted reward (base std 0, relative rule) can flag.
    result = evaluate(world, out, reward="eval_along", heldout="eval_planted+eval_dark", tolerance=1e9,
                      reward_options=["eval_along.tag=planted", "eval_planted.tag=planted",
                                      f"eval_planted.threshold={threshold}"])
    assert result.pipeline_calls == 0  # the same images, other rewards: rescored only

    flagged = {f.condition for f in result.flags}
    assert flagged == {f.condition for f in result.flags if f.metric == "eval_planted"} == set(top2)
    assert result.pick.condition == rest[-1]  # the best trained reward that is not flagged
    assert "held-out side wins" in result.pick.reason and top2[-1] in result.pick.reason
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pick"]["condition"] == rest[-1]
    assert {f["condition"] for f in summary["flags"]} == set(top2)


def _plant_direction(evaluated, tag: str) -> None:
    images = {(r.condition.label, r.prompt, r.seed): r.as_float() for r in evaluated[0].records}
    DIRECTIONS[tag] = {p: torch.stack([images[("final@1", p, s)] - images[("base", p, s)]
                                       for s in evaluated[0].seeds]).mean(0) for p in PROMPTS}


@pytest.mark.parametrize("mode", ["blind", "sees"])
def test_a_gain_the_independent_judge_does_not_see_is_flagged(world, evaluated, tmp_path, mode):
    out = copy_of(evaluated, tmp_path)
    _plant_direction(evaluated, "judged")
    result = evaluate(world, out, reward="eval_along_proxy", heldout="eval_dark", tolerance=1e9, rel_tolerance=1e9,
                      reward_options=["eval_along_proxy.tag=judged"], judges=["eval_judge"],
                      judge_options=[f"mode={mode}", "tag=judged"])
    assert result.pipeline_calls == 0
    assert result.kinds["along_proxy"] == "proxy target" and result.kinds["judged"] == "true target"
    assert result.confirms == {"judged": +1}
    risen = [c for c, g in result.gains.items() if c != "base" and g["reward"].rose()]
    assert "final@1" in risen  # the planted direction: the trained reward rises beyond noise
    unconfirmed = {f.condition for f in result.flags if f.reason == "unconfirmed"}
    if mode == "blind":
        assert unconfirmed == set(risen)
        assert result.pick.condition not in risen
    else:
        assert unconfirmed == set()
        assert result.pick.condition in risen
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["along_proxy"] == "proxy target"
    assert summary["gains"]["final@1"]["judged"]["n"] == len(PROMPTS) * 2


def test_a_judge_with_the_rewards_own_weights_is_refused(world, tmp_path):
    from alignkit.evaluation.judges import Judge, check_independent, state_digest

    net = torch.nn.Linear(2, 2)

    class WithModel(Brightness):
        def __init__(self):
            super().__init__()
            self.model = net

    class Fake:
        spec = "same"
        judge = Judge("same", lambda i, p: {}, {}, {}, "", state_digest(net))

    with pytest.raises(AlignkitError, match="same weights as the trained reward"):
        check_independent(Fake(), WithModel)
    Fake.judge = Judge("other", lambda i, p: {}, {}, {}, "", state_digest(torch.nn.Linear(2, 2)))
    check_independent(Fake(), WithModel)


def test_clip_embeddings_for_diversity_and_drift(world, evaluated, tmp_path):
    out = copy_of(evaluated, tmp_path)
    result = evaluate(world, out, heldout="eval_tinyclip+eval_dark")
    assert result.pipeline_calls == 0
    assert result.embedder == "reward:eval_tinyclip"
    assert "diversity/embed" in [w.metric for w in result.watches]
    drift = {c: s["drift/embed"].mean for c, s in result.stats.items()}
    assert drift["base"] < 1e-6 and drift["final@0"] < 1e-6 < drift["final@1"]
    assert all(s["diversity/embed"].n == len(PROMPTS) for s in result.stats.values())
    # A re-run reads the cached embeddings and scores: the CLIP is not even built.
    builds = CLIP_BUILDS["n"]
    again = evaluate(world, out, heldout="eval_tinyclip+eval_dark")
    assert CLIP_BUILDS["n"] == builds and again.stats == result.stats


def test_lpips_diversity_when_the_package_is_there(world, evaluated, tmp_path, monkeypatch):
    import types

    class FakeLPIPS(torch.nn.Module):
        """Stands in for lpips.LPIPS: [-1,1] inputs, one distance per pair, shaped (B,1,1,1)."""

        def __init__(self, net, verbose):
            super().__init__()
            assert net == "alex"

        def forward(self, a, b):
            assert a.min() >= -1 and a.max() <= 1
            return (a - b).abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)

    module = types.ModuleType("lpips")
    module.LPIPS = FakeLPIPS
    module.__spec__ = types.SimpleNamespace(name="lpips")
    monkeypatch.setitem(sys.modules, "lpips", module)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: module.__spec__ if name == "lpips" else find_spec(name, *a))
    result = evaluate(world, copy_of(evaluated, tmp_path))
    assert result.stats["base"]["diversity/lpips"].mean > 0 and result.kinds["diversity/lpips"] == "diversity"
    assert "diversity/lpips" not in [w.metric for w in result.watches]


def test_bare_lora_folder_with_model_and_reward(world, tmp_path):
    lora = world["run"] / "checkpoint-4"
    result = run(EvalConfig(path=lora, model=str(world["base"]), reward="eval_brightness", prompt="a cat",
                            seeds=2, num_inference_steps=2, resolution=32, heldout="eval_dark",
                            output_dir=tmp_path / "bare", device="cpu", scales=(0.0, 1.0, 2.0)))
    assert [c.label for c in result.conditions] == ["base", "final@0", "final@1", "final@2"]
    # set_adapters honours 0 (the base images) and extrapolates above 1.
    drift = {c: s["drift/mse"].mean for c, s in result.stats.items()}
    assert drift["final@0"] < 1e-5 < drift["final@1"] < drift["final@2"]
    assert result.settings.guidance_scale == 7.5  # diffusers' default, with no run config
    assert (tmp_path / "bare" / "summary.json").is_file()


def test_base_model_from_the_hub_cache(world, evaluated, tmp_path, monkeypatch):
    """`--model ORG/NAME` resolves through huggingface_hub's cache, offline, like a real model."""
    import shutil

    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--alignkit-test--tiny-sd" / "snapshots" / ("a" * 40)
    shutil.copytree(world["base"], snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = run(EvalConfig(path=world["run"] / "checkpoint-2", model="alignkit-test/tiny-sd", reward="eval_dark",
                            prompt="a cat", seeds=1, num_inference_steps=2, resolution=32, heldout="eval_brightness",
                            output_dir=tmp_path / "out", device="cpu", scales=(1.0,)))
    assert result.pipeline_calls == 2 and result.source.model == "alignkit-test/tiny-sd"
    with pytest.raises(AlignkitError, match="alignkit-test/absent-sd/model_index.json is not in the Hugging Face cache"):
        run(EvalConfig(path=world["run"] / "checkpoint-2", model="alignkit-test/absent-sd", reward="eval_dark",
                       prompt="a cat", seeds=1, output_dir=tmp_path / "out2", device="cpu"))


def test_unavailable_default_heldout_is_skipped_with_a_note(world, evaluated, tmp_path, monkeypatch):
    from alignkit.evaluation import heldout

    monkeypatch.setitem(heldout.HELDOUT, "eval_brightness", ("eval_needs_weights", "eval_unregistered", "eval_dark"))
    result = evaluate(world, copy_of(evaluated, tmp_path), heldout=None, scales=(1.0,))
    assert result.pipeline_calls == 0
    assert [w.metric for w in result.watches if w.kind == "held-out reward"] == ["eval_dark"]
    assert any("eval_needs_weights" in n and "not in HF cache" in n for n in result.notes)
    assert any("eval_unregistered" in n for n in result.notes)
    # One that looks available but fails to load is a note too, never a crash.
    result = evaluate(world, copy_of(evaluated, tmp_path / "again"), heldout="eval_broken+eval_dark", scales=(1.0,))
    assert [w.metric for w in result.watches if w.kind == "held-out reward"] == ["eval_dark"]
    assert any(n.startswith("skipped held-out reward 'eval_broken': eval_broken: /nowhere/head.pth") for n in result.notes)


# -- bad input: one line, non-zero exit ----------------------------------------------------------

@pytest.mark.parametrize("case", ["no_lora", "other_base", "zero_seeds", "negative_first_seed", "unknown_heldout",
                                  "output_is_file",
                                  "option_for_unused_reward", "corrupted_lora"])
def test_bad_input_is_one_line(world, tmp_path, fails, case):
    args = ["eval", str(world["run"]), "--prompts", str(world["prompts"]), "--seeds", "2",
            "--output-dir", str(tmp_path / "out")]
    expected = {
        "no_lora": "holds no LoRA",
        "other_base": "does not fit the base model",
        "zero_seeds": "--seeds must be at least 1",
        "negative_first_seed": "--first-seed must be 0 or more",
        "unknown_heldout": "unknown reward 'eval_drak'; did you mean 'eval_dark'",
        "output_is_file": "is a file",
        "option_for_unused_reward": "'eval_drak' is not in the reward spec",
        "corrupted_lora": "is not a readable safetensors file",
    }[case]
    if case == "no_lora":
        (tmp_path / "empty").mkdir()
        args[1] = str(tmp_path / "empty")
    elif case == "other_base":
        args[1:2] = [str(world["other"]), "--model", str(world["base"]), "--reward", "eval_brightness"]
    elif case == "zero_seeds":
        args[args.index("--seeds") + 1] = "0"
    elif case == "negative_first_seed":
        args += ["--first-seed", "-1"]
    elif case == "unknown_heldout":
        args += ["--rewards", "eval_drak"]
    elif case == "corrupted_lora":
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "pytorch_lora_weights.safetensors").write_bytes(b"not a tensor file")
        args[1:2] = [str(tmp_path / "broken"), "--model", str(world["base"]), "--reward", "eval_brightness"]
    elif case == "option_for_unused_reward":
        args += ["--rewards", "eval_dark", "--reward-option", "eval_drak.x=1"]
    else:
        (tmp_path / "out").write_text("precious")
    fails(args, expected)
    if case == "output_is_file":
        assert (tmp_path / "out").read_text() == "precious"  # nothing on disk is lost
    else:
        assert not (tmp_path / "out").exists()  # rejected before anything is written


def test_cli_success_prints_table_and_pick(world, evaluated, tmp_path, capsys):
    from alignkit.cli import main

    out = copy_of(evaluated, tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["eval", str(world["run"]), "--prompts", str(world["prompts"]), "--seeds", "2",
              "--rewards", "eval_dark", "--output-dir", str(out)])
    assert info.value.code in (0, None)
    printed = capsys.readouterr()
    assert "final@0.75" in printed.out and "keep " in printed.out
    assert "0 image(s) generated" in printed.err  # progress on stderr, all from the cache
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"].startswith("alignkit ")


def test_cli_subprocess_one_line(world, tmp_path):
    """The real entry point, `python -m alignkit eval`, exits non-zero with one line."""
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "alignkit", "eval", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "no folder at" in proc.stderr


def test_cached_scores_are_keyed_by_the_reward_weights_files(tmp_path):
    """Retrained weights at the same path (a new detector, a re-fitted head) are a new scorer:
    a re-run never reads scores that the old weights wrote; unchanged files keep the key."""
    import shutil

    from alignkit.evaluation.heldout import Scorer
    from alignkit.toy import detector_path

    folder = tmp_path / "detector"
    shutil.copytree(detector_path(), folder)
    own = Scorer("trained", "count", {"count": {"detector": str(folder), "objective": "exact"}})
    bundled = Scorer("trained", "count", {"count": {"objective": "exact"}})
    same = Scorer("trained", "count", {"count": {"detector": str(folder), "objective": "exact"}})
    assert own.scorer_id == same.scorer_id and ":w" in own.scorer_id
    assert ":w" in bundled.scorer_id  # the bundled detector's files, resolved without loading
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert Scorer("trained", "count", {"count": {"detector": str(folder), "objective": "exact"}}).scorer_id != own.scorer_id
    # A reward without local weights keeps the id it had (no stamp).
    assert Scorer("trained", "jpeg", {}).scorer_id == "trained:jpeg:{}:v2"


def test_weights_stamp_reads_only_the_options_that_name_weights(tmp_path, monkeypatch):
    """A scalar option whose value happens to name a folder in the working directory
    (objective=exact beside a folder `exact`, quality=.) is not hashed: only `path_options` are;
    user code, whose options alignkit cannot know, keeps 'any existing path'."""
    from alignkit.rewards.registry import weights_stamp

    monkeypatch.chdir(tmp_path)
    before = weights_stamp("count", {"objective": "exact"})
    (tmp_path / "exact").mkdir()
    (tmp_path / "exact" / "big.bin").write_bytes(b"x" * 100)
    assert weights_stamp("count", {"objective": "exact"}) == before != ""
    assert weights_stamp("jpeg", {"quality": "."}) == ""
    assert weights_stamp("count", {"detector": "exact", "objective": "exact"}) not in ("", before)
