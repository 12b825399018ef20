"""Sample efficiency on the toy world: alignkit (AlignProp) vs trl 0.23.1's DDPOTrainer.

The job: make the toy model draw as many objects as the prompt says (`toy_counting` prompts,
the `count` reward). Both methods start from the same base model with the same T DDIM steps
(eta 1), guidance, LoRA (rank 4, alpha 4: trl hard-codes it) and the same budget of sampled
images; each gets its own small learning-rate sweep. alignkit backpropagates the soft count;
DDPO gets the same soft count as a black-box scalar (or, with `--ddpo-reward truth`, the
independent truth below), served from alignkit's environment by `reward_bridge.py`.

Every saved LoRA (and the base model) is then scored the same way, outside both trainers:
the prompt set's held-out prompts (never trained on) with fixed seeds, plain diffusers
sampling, and per image (all kept in the result, so that `--report` recomputes every figure):

- the soft reward (what alignkit differentiates);
- the truth, read by a judge that shares no weights with the reward (`TRUTHS`): on the toy
  world the count read from pixels by the world's rules (`toy_rules`, `pixel_count_correct`);
  on another model, another detector than the reward's (`--judge-detector PATH`, the `count`
  judge); for `compress`/`incompress`, the real PIL JPEG size. A count read with the reward's
  own detector is never the truth: the aligner optimises against that detector and can fool
  it (it did: docs/experiments/2026-12-02-toy-count-recipes.md, "What the previous default did");
- the proxy: the reward's own detector's NMS count accuracy, reported beside the truth and
  labelled as such.

Each point's truth carries a 95% interval over the evaluation images (Wilson's for an
accuracy, Student's t otherwise), and each method's final truth its paired gain over the base
model (same prompts and seeds) with a 95% t-interval. Curves are against images sampled and
training wall time (sampling, reward and update; not checkpointing or evaluation). alignkit
is scored at doubling sample counts (one optimizer step, two, four, ...), DDPO at even
intervals of a larger budget. The headline, read on the independent truth: how many samples
each needs to reach DDPO's final level (best learning rate of each), counted conservatively
for alignkit: DDPO's count is interpolated between its points, alignkit's is the first scored
point from which every later point stays at the level. The same ratios on the soft reward
and on the proxy are shown beside it, without a target.

    python benchmarks/vs_ddpo.py --quick          # one learning rate each, a few dozen samples
    python benchmarks/vs_ddpo.py --full           # 3 learning rates each; 512 / 960 samples
    python benchmarks/vs_ddpo.py --model DIR --judge-detector PATH   # count on another model
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Run as `python benchmarks/NAME.py`: Python puts benchmarks/ first on sys.path, so the
# harness imports as a sibling; alignkit is the installed package (`make venv`).
import harness
from harness import BenchError, Check, Result, Unavailable

NAME = "vs_ddpo"
TRL_LORA_RANK, TRL_LORA_ALPHA = 4, 4.0
# samples DDPO needs / samples alignkit needs, to reach DDPO's final level. AlignProp reports
# 25x DDPO's sample efficiency; that is the target.
TARGET_SAMPLE_RATIO = ">= 25"


@dataclass(frozen=True)
class Truth:
    """The true quantity a reward is a proxy for, read by something that shares no weights with
    the reward: a judge of `alignkit.evaluation.judges` (`judge`), or a model-free column of the
    reward's own `targets()` (`judge` None, e.g. the PIL JPEG size). `proxy`: a `targets()`
    column read with the reward's own weights, shown beside the truth and never as it."""

    key: str
    label: str
    sign: float = 1.0
    judge: str | None = None
    proxy: str | None = None
    proxy_label: str = ""
    # A 0/1 column (an accuracy): its interval is Wilson's, not Student's t.
    binary: bool = False


COUNT_PROXY = dict(proxy="count_nms_correct", proxy_label="count accuracy, proxy (reward's detector)")

# (reward name, where its truth is read) -> the truth (a table, not an if/elif on names).
# Where: "toy", the toy world's rules; "detector", another detector the user names with
# --judge-detector; "any", a model-free target that needs no judge.
TRUTHS = {
    ("count", "toy"): Truth("pixel_count_correct", "count accuracy, independent (toy rules)",
                            judge="toy_rules", binary=True, **COUNT_PROXY),
    ("count", "detector"): Truth("judge_count_nms_correct", "count accuracy, independent (judge detector)",
                                 judge="count", binary=True, **COUNT_PROXY),
    ("compress", "any"): Truth("jpeg_kb", "JPEG size kB, independent (PIL)", -1.0),
    ("incompress", "any"): Truth("jpeg_kb", "JPEG size kB, independent (PIL)"),
}


def truth_source(reward: str, toy: bool, judge_detector: str | None) -> str:
    """Where the truth of `reward` is read on this model: the key into TRUTHS. One line when only
    the reward's own detector could read it: a proxy cannot be the truth."""
    for source in ("detector" if judge_detector else "toy" if toy else None, "any"):
        if (reward, source) in TRUTHS:
            return source
    if any(name == reward for name, _ in TRUTHS):
        raise BenchError(f"--reward {reward}: off the toy world its truth needs a judge that shares no weights with "
                         f"the reward (its own detector's count is a proxy, not the truth); pass "
                         f"--judge-detector PATH (another detector)")
    known = sorted({name for name, _ in TRUTHS})
    raise BenchError(f"--reward {reward}: no true target is known for it (known: {', '.join(known)})")


PRESETS = {
    # A few minutes on an idle 2-core CPU: one learning rate each, 32 samples each.
    "quick": dict(alignkit_lrs=[2e-3], ddpo_lrs=[1e-3], alignkit_samples=32, ddpo_samples=32, ddpo_evals=2,
                  eval_prompts=12),
    # The toy's tuned lr (2e-3, train_defaults.yaml) and one either side; DDPO's default (3e-4) and
    # two above it. DDPO gets almost twice alignkit's budget so that it has room to improve: the
    # ratio is read off where it ends, so a larger DDPO budget can only make it fairer to DDPO.
    "full": dict(alignkit_lrs=[1e-3, 2e-3, 4e-3], ddpo_lrs=[3e-4, 1e-3, 3e-3], alignkit_samples=512,
                 ddpo_samples=960, ddpo_evals=6, eval_prompts=96),
}


def build_parser() -> argparse.ArgumentParser:
    p = harness.preset_parser(__doc__)
    p.add_argument("--model", default="toy", help="'toy' (alignkit.toy.pipeline_path()) or a diffusers folder")
    p.add_argument("--reward", default="count", help="alignkit reward both methods optimise")
    p.add_argument("--prompts", default="toy_counting", help="prompt set (its train split is sampled)")
    p.add_argument("--alignkit-samples", type=int,
                   help="images each alignkit run samples (scored after 1, 2, 4, ... optimizer steps and at the end)")
    p.add_argument("--ddpo-samples", type=int, help="images each DDPO run samples")
    p.add_argument("--ddpo-evals", type=int, help="evaluation points per DDPO run, evenly spaced")
    p.add_argument("--eval-prompts", type=int, help="images per evaluation point: the set's held-out prompts, "
                   "repeated as needed, one seed each")
    p.add_argument("--alignkit-lrs", type=float, nargs="+")
    p.add_argument("--ddpo-lrs", type=float, nargs="+")
    p.add_argument("--num-inference-steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--truncation", default="last:5", help="alignkit's truncation (the toy's default)")
    p.add_argument("--alignkit-batch", type=int, default=8, help="alignkit samples per optimizer step")
    p.add_argument("--ddpo-sample-batch", type=int, default=8)
    p.add_argument("--ddpo-batches-per-epoch", type=int, default=2)
    p.add_argument("--ddpo-train-batch", type=int, default=4)
    p.add_argument("--ddpo-reward", choices=["soft", "truth"], default="soft",
                   help="what DDPO is given: the soft reward, or the independent truth the evaluation reads "
                        "(toy: the count by the world's rules; else the --judge-detector count; PIL JPEG size)")
    p.add_argument("--judge-detector", metavar="PATH",
                   help="--reward count off the toy world: another detector than the reward's (a folder with "
                        "model.yaml + model.safetensors, or an ultralytics .pt), whose NMS count is the truth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--timeout", type=float, default=7200)
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "alignkit-bench" / NAME)
    p.add_argument("--results", type=Path, default=harness.RESULTS)
    p.add_argument("--name", help=f"result file name (default: {NAME}, {NAME}_quick with --quick)")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="no training: recompute the figures of a saved result from its raw samples (in place)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.report:
        return args
    for key, value in PRESETS[args.preset or "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # A quick run never overwrites the full run's result.
    args.name = args.name or (f"{NAME}_quick" if args.preset == "quick" else NAME)
    per_epoch = args.ddpo_sample_batch * args.ddpo_batches_per_epoch
    if args.alignkit_samples % args.alignkit_batch:
        raise BenchError(f"--alignkit-samples {args.alignkit_samples} must be whole steps of --alignkit-batch "
                         f"{args.alignkit_batch}; use a multiple of {args.alignkit_batch}")
    if args.ddpo_samples % (per_epoch * args.ddpo_evals):
        raise BenchError(f"--ddpo-samples {args.ddpo_samples} must split into --ddpo-evals {args.ddpo_evals} whole "
                         f"DDPO epochs of {per_epoch} samples; use a multiple of {per_epoch * args.ddpo_evals}")
    return args


def doubling_steps(total: int) -> list[int]:
    """1, 2, 4, ... up to `total`, and `total` itself: where alignkit is scored."""
    steps = [2 ** i for i in range(total.bit_length()) if 2 ** i < total]
    return steps + [total]


# ---- prerequisites: the toy world, the reward, the prompts ------------------------------------------

@dataclass
class World:
    model: str
    prompts: list[str]  # what both methods train on
    truth: Truth
    truth_from: str  # its key in TRUTHS, with the reward's name
    # The independent judge that reads the truth (None: a model-free column of the reward's targets).
    judge: object | None = None  # alignkit.evaluation.judges.JudgeScorer
    # The prompt set's held-out prompts: every model is scored on these, never on `prompts`.
    held_out: list[str] = field(default_factory=list)


def require_world(args) -> World:
    """The model, the reward, its independent judge and the prompts, or one line saying what is missing."""
    from alignkit.errors import AlignkitError
    from alignkit.models import find_model, get_model
    from alignkit.prompts import load_prompt_set
    from alignkit.rewards import get_entry, load_reward, parse_spec

    harness.require_alignkit(args.reward)
    model = args.model
    names = [name for name, _ in parse_spec(args.reward)]
    if len(names) != 1:
        raise BenchError(f"--reward {args.reward}: one reward, whose truth is known (known: "
                         f"{', '.join(sorted({name for name, _ in TRUTHS}))})")
    named = find_model(model)
    toy = named is not None and named.name == "toy"
    source = truth_source(names[0], toy, args.judge_detector)
    truth = TRUTHS[names[0], source]
    try:
        if get_model(model) is not None:  # a named model ("toy"): its folder
            model = str(get_model(model).path())
        for name in names:
            ok, why = get_entry(name).status()
            if not ok:
                raise Unavailable(f"reward '{name}' is not available here: {why}")
        # Built once here so that a missing detector (the reward's or the judge's) fails now, not
        # after an hour of training.
        reward = load_reward(args.reward)
        judge = make_judge(truth, args.judge_detector)
        prompt_set = load_prompt_set(args.prompts)
        prompts, held_out = prompt_set.train, prompt_set.eval
    except BenchError:
        raise
    except AlignkitError as exc:
        raise Unavailable(f"vs_ddpo cannot run: {exc}") from None
    if judge is not None:
        from alignkit.evaluation.judges import check_independent

        try:  # a judge that reads with the reward's own weights is a proxy: a wrong flag, not a missing part
            check_independent(judge, lambda: reward)
        except AlignkitError as exc:
            raise BenchError(str(exc)) from None
    if not (Path(model) / "model_index.json").is_file():
        raise BenchError(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")
    if not held_out:
        raise BenchError(f"--prompts {args.prompts}: the set has no held-out prompts to score the models on")
    return World(model, prompts, truth, source, judge, held_out)


def judge_options(truth: Truth, judge_detector: str | None) -> dict:
    """The options of the truth's judge (the same for the evaluation and for DDPO's bridge)."""
    return {"detector": judge_detector} if truth.judge == "count" else {}


def make_judge(truth: Truth, judge_detector: str | None):
    """The truth's judge through alignkit's registry (None for a model-free target)."""
    if truth.judge is None:
        return None
    from alignkit.evaluation.judges import JudgeScorer

    scorer = JudgeScorer(truth.judge, judge_options(truth, judge_detector))
    scorer.judge  # built now: a missing judge detector is one line before any training
    return scorer


# ---- training runs ------------------------------------------------------------------------------------

@dataclass
class Point:
    """One evaluation point of a run: how much it had sampled and trained, and its LoRA."""

    samples: int
    wall_s: float
    lora: str | None
    scores: dict = field(default_factory=dict)


@dataclass
class Run:
    method: str
    lr: float
    points: list[Point]
    train_log: list[dict]
    peak_rss_mb: float

    @property
    def label(self) -> str:
        return f"{self.method} lr={self.lr:g}"


def train_alignkit(world: World, lr: float, args) -> Run:
    steps = args.alignkit_samples // args.alignkit_batch
    scored = doubling_steps(steps)
    out = _fresh(args.work_dir / f"alignkit-lr{lr:g}")
    train_args = ["--model", world.model, "--reward", args.reward,
                  "--prompts", args.prompts, "--num-inference-steps", args.num_inference_steps,
                  "--guidance-scale", args.guidance_scale, "--eta", args.eta, "--truncation", args.truncation,
                  "--train-batch-size", args.alignkit_batch, "--learning-rate", lr, "--rank", TRL_LORA_RANK,
                  "--lora-alpha", TRL_LORA_ALPHA, "--max-train-steps", steps,
                  "--checkpointing-steps", 1, "--report-to", "none", "--seed", args.seed]
    child, log = harness.run_alignkit_train(train_args, out, args.threads, args.timeout, f"alignkit train (lr {lr:g})")
    wall = list(itertools.accumulate(r["step_time"] for r in log))
    points = []
    for step in scored:
        ckpt = out / f"checkpoint-{step}"
        if not ckpt.is_dir():
            raise BenchError(f"alignkit train (lr {lr:g}) left no {ckpt.name} in {out}")
        points.append(Point(step * args.alignkit_batch, wall[step - 1], str(ckpt)))
    return Run("alignkit", lr, points, log, child.peak_rss_mb)


def ddpo_reward(world: World, args) -> dict:
    """What the bridge serves DDPO: the soft reward, or the independent truth, read by the same
    judge as the evaluation (the bridge loads it beside the reward), signed so that higher is
    better (DDPO maximises; a JPEG size is better smaller for `compress`)."""
    if args.ddpo_reward == "soft":
        return {"reward_key": "reward", "reward_sign": 1.0, "judge": None}
    judge = {"name": world.truth.judge, "options": judge_options(world.truth, args.judge_detector)}
    return {"reward_key": world.truth.key, "reward_sign": world.truth.sign,
            "judge": judge if world.truth.judge else None}


def train_ddpo(world: World, lr: float, args, python: Path) -> Run:
    per_epoch = args.ddpo_sample_batch * args.ddpo_batches_per_epoch
    epochs = args.ddpo_samples // per_epoch
    out = _fresh(args.work_dir / f"ddpo-lr{lr:g}")
    out.mkdir(parents=True)
    job = {"model": world.model, "prompts": world.prompts, "reward": args.reward,
           **ddpo_reward(world, args),
           "alignkit_python": sys.executable, "seed": args.seed, "epochs": epochs,
           "checkpoint_every": epochs // args.ddpo_evals, "mixed_precision": "no",
           "num_inference_steps": args.num_inference_steps, "eta": args.eta, "guidance_scale": args.guidance_scale,
           "sample_batch_size": args.ddpo_sample_batch, "sample_num_batches_per_epoch": args.ddpo_batches_per_epoch,
           "train_batch_size": args.ddpo_train_batch, "learning_rate": lr, "per_prompt_stat_tracking": False,
           "output_dir": str(out)}
    child, result = harness.run_peer(python, "trl_ddpo_child.py", job, out, args.threads, args.timeout,
                                     f"trl DDPOTrainer (lr {lr:g})")
    log = result["epochs"]
    wall = list(itertools.accumulate(r["step_time"] for r in log))
    points = [Point(r["samples"], wall[i], r["checkpoint"]) for i, r in enumerate(log) if r.get("checkpoint")]
    return Run("ddpo", lr, points, log, child.peak_rss_mb)


# ---- the shared evaluation ---------------------------------------------------------------------------

def eval_prompts(prompts: list[str], n: int) -> list[str]:
    """n images' prompts from the held-out ones: a seeded shuffle (so that a short list still
    mixes counts, shapes, colours and backgrounds; the set is ordered), repeated as often as n
    needs (each image has its own seed)."""
    import random

    shuffled = sorted(prompts)
    random.Random(0).shuffle(shuffled)
    return [shuffled[i % len(shuffled)] for i in range(n)]


EVAL_SEED = 10_000  # image i of the evaluation is drawn from seed EVAL_SEED + i, for every model alike


def evaluate(world: World, loras: list[str | None], prompts: list[str], args) -> dict[str | None, dict]:
    """Score the base model (None) and each LoRA on the same prompts and seeds, with plain
    diffusers: per image, the soft reward, the independent truth and the proxy (if any), in
    prompt order, so that a gain over the base model is paired image by image."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from alignkit.rewards import load_reward

    if args.threads:
        torch.set_num_threads(args.threads)  # the children got OMP_NUM_THREADS; this process too
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    pipe = StableDiffusionPipeline.from_pretrained(world.model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    reward = load_reward(args.reward)
    truth = world.truth
    scores = {}
    for lora in loras:
        if lora is not None:
            pipe.load_lora_weights(lora)
        columns = {"reward": [], "truth": [], **({"proxy": []} if truth.proxy else {})}
        for start in range(0, len(prompts), 16):
            chunk = prompts[start:start + 16]
            gens = [torch.Generator().manual_seed(EVAL_SEED + start + i) for i in range(len(chunk))]
            with torch.no_grad():
                images = pipe(chunk, num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                              eta=args.eta, generator=gens, output_type="pt").images
                columns["reward"] += reward(images, chunk).tolist()
                targets = reward.targets(images, chunk)
                # The truth from the judge when there is one; never from the reward's own weights.
                read = world.judge.score(images, chunk) if world.judge is not None else targets
                columns["truth"] += read[truth.key].tolist()
                if truth.proxy:
                    columns["proxy"] += targets[truth.proxy].tolist()
        if lora is not None:
            pipe.unload_lora_weights()
        scores[lora] = columns
    return scores


# ---- figures -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A mean over the evaluation images with its 95% interval."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high], "n": self.n}

    def text(self) -> str:
        return f"95% CI {self.low:.3f} to {self.high:.3f}, n={self.n}"


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def interval(values: list[float], binary: bool) -> Interval:
    """The mean of one point's per-image values with its 95% interval. For a 0/1 column (an
    accuracy), Wilson's score interval: the normal one collapses to a width of 0 at 0% or 100%
    and undercovers on a few dozen images. Otherwise Student's t on the values."""
    n = len(values)
    if n == 0:
        raise BenchError("no evaluation images to read an interval from")
    mean = sum(values) / n
    if binary:
        z2 = Z95 ** 2
        centre = (mean + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * math.sqrt(mean * (1 - mean) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return Interval(mean, max(0.0, centre - half), min(1.0, centre + half), n)
    if n < 2:
        return Interval(mean, -math.inf, math.inf, n)
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def curve(run: Run, base: dict, metric: str, x: str = "samples") -> list[tuple[float, float]]:
    start = [(0.0, _mean(base[metric]))]
    return start + [(getattr(p, x if x != "wall" else "wall_s"), _mean(p.scores[metric])) for p in run.points]


def first_reach(points: list[tuple[float, float]], level: float, sign: float) -> float | None:
    """The x at which a curve first reaches `level`, linear between points (generous to that
    side); None if never."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        a, b = sign * y0, sign * y1
        if a >= sign * level:
            return x0
        if b >= sign * level:
            return x0 + (x1 - x0) * (sign * level - a) / (b - a)
    return points[-1][0] if sign * points[-1][1] >= sign * level else None


def reach_and_hold(points: list[tuple[float, float]], level: float, sign: float) -> float | None:
    """The first scored x from which every later point is at or above `level`; None if the
    last point is below it. Strict on purpose: a single-seed evaluation is noisy, and a lucky
    early point must not count as having reached the level."""
    held = None
    for x, y in reversed(points):
        if sign * y < sign * level:
            break
        held = x
    return held


def best(runs: list[Run], sign: float) -> Run:
    """The learning rate whose final point is best on the independent truth (the reward breaks ties)."""
    return max(runs, key=lambda r: (sign * _mean(r.points[-1].scores["truth"]), _mean(r.points[-1].scores["reward"])))


def measures(truth: Truth) -> list[tuple[str, str, float, str | None]]:
    """(column, label, sign, target) of what the headline is read on: the independent truth, held
    to the target; then the soft reward and the proxy beside it, without one (both are read with
    the reward's own weights, which the aligner optimises against: they can rise while the truth
    does not)."""
    out = [("truth", truth.label, truth.sign, TARGET_SAMPLE_RATIO), ("reward", "soft reward", 1.0, None)]
    if truth.proxy:
        out.append(("proxy", truth.proxy_label, 1.0, None))
    return out


def headline(ak: Run, dd: Run, base: dict, truth: Truth) -> list[Check]:
    """Samples (and wall time) each needs to reach DDPO's final level: DDPO's count interpolated,
    alignkit's the first scored point from which it stays there. And, since DDPO's last point
    need not be its best, a lower bound: DDPO's whole budget over the samples alignkit needs
    to reach and hold the best point DDPO ever scored."""
    checks = []
    for metric, label, sign, target in measures(truth):
        level = _mean(dd.points[-1].scores[metric])
        base_level = _mean(base[metric])
        name = f"samples to DDPO's final {label}: DDPO / alignkit"
        if sign * level > sign * base_level:
            ddpo_n = first_reach(curve(dd, base, metric), level, sign)
            ak_n = reach_and_hold(curve(ak, base, metric), level, sign)
            ddpo_t = first_reach(curve(dd, base, metric, "wall"), level, sign)
            ak_t = reach_and_hold(curve(ak, base, metric, "wall"), level, sign)
            checks.append(Check(name, _ratio(ddpo_n, ak_n), "{:.1f}x", target,
                                f"{_fmt(ddpo_n)} vs {_fmt(ak_n)} images (level {level:.3g})"))
            checks.append(Check(f"wall time to DDPO's final {label}: DDPO / alignkit", _ratio(ddpo_t, ak_t),
                                "{:.1f}x", None, f"{_fmt(ddpo_t, 's')} vs {_fmt(ak_t, 's')}"))
        else:
            checks.append(Check(name, None, "{:.1f}x", None,
                                f"DDPO ended at {level:.3g}, not better than the base model's {base_level:.3g}"))
        best_dd = sign * max(sign * _mean(p.scores[metric]) for p in dd.points)  # DDPO's best scored point
        held = reach_and_hold(curve(ak, base, metric), best_dd, sign)
        budget = dd.points[-1].samples
        checks.append(Check(f"{label}: DDPO's budget / alignkit's samples to hold DDPO's best (lower bound)",
                            budget / held if held else None, "> {:.1f}x", None,
                            f"alignkit held {best_dd:.3g} from {held:.0f} images on; DDPO's budget {budget}" if held
                            else f"the base model already holds DDPO's best ({best_dd:.3g})" if held == 0
                            else f"alignkit did not hold DDPO's best ({best_dd:.3g})"))
    return checks


RUN_NAMES = {"alignkit": "alignkit", "ddpo": "DDPO"}


def levels(chosen: dict[str, Run], base: dict, truth: Truth) -> list[Check]:
    """The base model's and each method's final truth (and proxy), each with its 95% interval over
    the evaluation images, and each final's paired gain over the base model (same prompts and
    seeds) with its 95% t-interval: whether a gain is beyond the noise of the evaluation."""
    from alignkit.evaluation.metrics import Gain

    checks = []
    for metric, label in (("truth", truth.label), ("proxy", truth.proxy_label)):
        if metric not in base:
            continue
        # (The proxy of a binary truth is an accuracy too: the same kind of interval.)
        finals = {"base": base, **{f"{RUN_NAMES[m]} final": run.points[-1].scores for m, run in chosen.items()}}
        for who, scores in finals.items():
            iv = interval(scores[metric], truth.binary)
            checks.append(Check(f"{who} {label}", iv.mean, "{:.3f}", None, iv.text()))
        for method, run in chosen.items():
            gain = Gain.paired(base[metric], run.points[-1].scores[metric])
            checks.append(Check(f"{RUN_NAMES[method]} final gain over base, {label}", gain.mean, "{:+.3f}", None,
                                f"95% CI {gain.low:+.3f} to {gain.high:+.3f}, n={gain.n} paired (same prompts, seeds)"))
    return checks


def curves(runs: list[Run], base: dict, truth: Truth) -> dict:
    """Every point's means, with the 95% interval of its truth and proxy: the curves as the JSON keeps them."""
    def row(samples: float, wall_s: float, scores: dict) -> dict:
        out = {"samples": samples, "wall_s": wall_s, "reward": _mean(scores["reward"])}
        for metric in ("truth", "proxy"):
            if metric in scores:
                out[metric] = interval(scores[metric], truth.binary).as_dict()
        return out

    return {"base": row(0, 0.0, base),
            "runs": [{"run": r.label, "points": [row(p.samples, p.wall_s, p.scores) for p in r.points]} for r in runs]}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return math.inf if b == 0 else a / b


def _fmt(x: float | None, unit: str = "") -> str:
    return "never" if x is None else f"{x:.0f}{unit}"


def runs_table(runs: list[Run], base: dict, truth: Truth):
    from rich.table import Table

    # Short headers and a legend: the labels are sentences, which an 80-column terminal cut to `…`.
    legend = (f"truth: final {truth.label}, 95% interval; "
              + (f"proxy: final {truth.proxy_label}; " if truth.proxy else "")
              + "reward: final soft reward; wall s: training time; RSS MB: peak")
    table = Table(title=f"alignkit vs trl DDPOTrainer (base: reward {_mean(base['reward']):.3f}, "
                        f"{truth.label} {_mean(base['truth']):.3f})", title_justify="left",
                  caption=legend, caption_justify="left")
    columns = ["run", "images", "wall s", "reward", "truth [95% CI]", *(["proxy"] if truth.proxy else []), "RSS MB"]
    for column in columns:
        table.add_column(column, justify="right" if column != "run" else "left")
    for run in runs:
        last = run.points[-1]
        iv = interval(last.scores["truth"], truth.binary)
        proxy = [f"{_mean(last.scores['proxy']):.3f}"] if truth.proxy else []
        table.add_row(run.label, str(last.samples), f"{last.wall_s:.0f}", f"{_mean(last.scores['reward']):.3f}",
                      f"{iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]", *proxy, f"{run.peak_rss_mb:.0f}")
    return table


def plot(runs: list[Run], chosen: dict, base: dict, truth: Truth, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward", "samples", "soft reward", "images sampled"),
              ("truth", "samples", truth.label, "images sampled"),
              ("truth", "wall", truth.label, "training wall time (s)")]
    if truth.proxy:
        panels.append(("proxy", "samples", truth.proxy_label, "images sampled"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    colours = {"alignkit": "tab:blue", "ddpo": "tab:orange"}
    for ax, (metric, x, ylabel, xlabel) in zip(axes, panels):
        for run in runs:
            xs, ys = zip(*curve(run, base, metric, x))
            top = run is chosen[run.method]
            ax.plot(xs, ys, marker="o", ms=3, color=colours[run.method], alpha=1.0 if top else 0.35,
                    lw=2 if top else 1, label=run.label + (" (best)" if top else ""))
            if top and metric != "reward":  # the 95% interval of each point of the best runs
                ivs = [interval(s[metric], truth.binary) for s in [base, *(p.scores for p in run.points)]]
                ax.fill_between(xs, [i.low for i in ivs], [i.high for i in ivs], color=colours[run.method], alpha=0.15,
                                lw=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("alignkit (AlignProp) vs trl 0.23.1 DDPOTrainer, same base model, prompts, T and LoRA rank "
                 "(bands: 95% intervals over the evaluation images)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- main -----------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> Result:
    world = require_world(args)
    python = harness.trl_python()
    con = harness.console(stderr=True)  # progress; the report itself goes to stdout
    if warning := harness.busy_warning():
        con.print(f"[yellow]warning:[/] {warning}")
    runs = []
    for lr in args.alignkit_lrs:
        with con.status(f"alignkit lr={lr:g}: training"):
            runs.append(train_alignkit(world, lr, args))
    for lr in args.ddpo_lrs:
        with con.status(f"DDPO lr={lr:g}: training"):
            runs.append(train_ddpo(world, lr, args, python))
    loras = [None] + [p.lora for r in runs for p in r.points]
    # Image i of every model: prompts[i] with seed EVAL_SEED + i.
    prompts = eval_prompts(world.held_out, args.eval_prompts)
    with con.status(f"evaluating {len(loras)} models on {args.eval_prompts} images"):
        scores = evaluate(world, loras, prompts, args)
    base = scores[None]
    for r in runs:
        for p in r.points:
            p.scores = scores[p.lora]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(model=world.model, lora_rank=TRL_LORA_RANK, lora_alpha=TRL_LORA_ALPHA,
                    truth=world.truth.key, truth_from=world.truth_from, judge=world.truth.judge,
                    proxy=world.truth.proxy, train_prompts=len(world.prompts), held_out_prompts=len(world.held_out))
    # Per image, in this order, for every model: what pairs a gain over the base model.
    samples = {"eval": {"prompts": prompts, "seeds": [EVAL_SEED + i for i in range(len(prompts))]},
               "base": base, "runs": [{"method": r.method, "lr": r.lr, "peak_rss_mb": r.peak_rss_mb,
                                       "points": [p.__dict__ for p in r.points], "train_log": r.train_log}
                                      for r in runs]}
    return summarize(args.name, settings, samples, args.results)


def saved_truth(settings: dict, samples: dict) -> Truth:
    """The truth a result was measured with. One line for a result saved before the truth was read
    by an independent judge and kept per image: its means cannot be re-read, only re-measured."""
    truth = TRUTHS.get((settings.get("reward"), settings.get("truth_from")))
    if truth is None or not isinstance(samples.get("base", {}).get("truth"), list):
        raise BenchError(f"no independent per-image truth in it (its truth '{settings.get('truth')}' is kept as means "
                         f"only, read by the reward's own detector); re-run vs_ddpo to measure it")
    return truth


def summarize(name: str, settings: dict, samples: dict, results: Path) -> Result:
    """The figures, table and plot from the raw samples (a fresh run's, or a saved result's)."""
    truth = saved_truth(settings, samples)
    base = samples["base"]
    runs = [Run(r["method"], r["lr"], [Point(**p) for p in r["points"]], r["train_log"], r["peak_rss_mb"])
            for r in samples["runs"]]
    chosen = {m: best([r for r in runs if r.method == m], truth.sign) for m in ("alignkit", "ddpo")}
    checks = [Check("alignkit best learning rate", chosen["alignkit"].lr, "{:g}"),
              Check("DDPO best learning rate", chosen["ddpo"].lr, "{:g}"),
              *levels(chosen, base, truth),
              *headline(chosen["alignkit"], chosen["ddpo"], base, truth)]
    figure = plot(runs, chosen, base, truth, results / f"{name}.png")
    return Result(name, settings, samples, checks,
                  extra={"plot": str(figure), "curves": curves(runs, base, truth), "runs_table": (runs, base, truth)})


def report(result: Result, con) -> None:
    runs, base, truth = result.extra["runs_table"]
    con.print(runs_table(runs, base, truth))
    con.print(harness.checks_table("sample efficiency: alignkit vs DDPO (best learning rate of each)", result.checks,
                                   caption=f"independent: read by {truth.judge or 'a model-free measure'}, which "
                                           f"shares no weights with the reward; proxy: read with the reward's own "
                                           f"weights (beside, never the headline). curves: {result.extra['plot']}"))


def _fresh(path: Path) -> Path:
    import shutil

    if path.exists():
        shutil.rmtree(path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return rereport(args.report)
    result = run(args)
    con = harness.console()
    report(result, con)
    result.extra.pop("runs_table")  # live objects: the JSON has the same data under samples
    path = harness.write_result(result, harness.trl_python(), args.results)
    con.print(f"wrote {path}")
    return 0


def rereport(path: Path) -> int:
    """Recompute a saved result's figures with this script's rules; the measurement (date,
    command, machine, samples) stays as it was, and the recomputation is recorded beside it."""
    try:
        saved = json.loads(path.read_text())
        result = summarize(saved["benchmark"], saved["settings"], saved["samples"], path.parent)
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(f"--report {path}: not a vs_ddpo result ({type(exc).__name__}: {exc})") from None
    except BenchError as exc:
        raise BenchError(f"--report {path}: {exc}") from None
    con = harness.console()
    report(result, con)
    saved["figures"] = result.figures()
    saved["curves"] = result.extra["curves"]
    saved["figures_recomputed"] = harness.stamp()
    harness.write_json(path, saved)
    con.print(f"rewrote the figures of {path}")
    return 0


if __name__ == "__main__":
    harness.entry_point(main)
