"""Sample efficiency on the toy world: alignkit (AlignProp last:K, DRTune, GRPO) vs trl 0.23.1's DDPOTrainer.

The job: make the toy model draw as many objects as the prompt says (`toy_counting` prompts,
the `count` reward). Every method starts from the same base model with the same T DDIM steps
(eta 1), guidance, LoRA (rank 4, alpha 4: trl hard-codes it) and trains on the same prompts;
each gets its own small learning-rate sweep. alignkit's methods are a list (`--methods`), each
run through `python -m alignkit train` with the flags a user would pass: a truncation policy
(`last:5`, `drtune:5`, ...) is AlignProp backpropagating the soft count through those steps;
`grpo` is `--algorithm grpo` on the soft count's value. DDPO gets the same soft count as a
black-box scalar (or, with `--ddpo-reward truth`, the independent truth below), served from
alignkit's environment by `reward_bridge.py`.

The two policy-gradient methods are matched step for step: GRPO's step and DDPO's epoch sample
the same images (`--pg-batch`, in micro-batches of `--pg-micro-batch` for sampling and for
training), train the same number of the T steps of each trajectory (`--pg-trained-steps` K:
GRPO `--grpo-steps first:K`, the high-noise ones; DDPO `train_timestep_fraction` K/T, a random
K of them per trajectory, as trl draws them), one pass over the samples each (`--inner-epochs
1`, trl's `train_num_inner_epochs=1`), fp32, classifier-free guidance in training on both.
What differs is each trainer's own: GRPO's group-relative advantages (`--group-size`), its
clip range and KL to the base model (`--kl-beta`, its default 0.04: one reference forward per
trained step); DDPO's batch-normalised advantages, clip range 1e-4 and one optimizer update per
micro-batch (GRPO: one per step). A separate timing phase then runs GRPO (its defaults, and
with `--kl-beta 0`: DDPO's work exactly) and DDPOTrainer in alternating fresh processes for a
few steps each at those settings: seconds per step (median after the first step) and peak RSS
of the trainer's process, as ratios measured in the same run (targets: GRPO >= 1.5x faster,
<= 1.0x the memory). `--speed-chain T'` adds GRPO sampling its training images with a T'-step
chain (Flow-GRPO's denoising reduction; the same share of its steps trained, the images still
`--pg-batch` a step), a setting of GRPO's own, reported as its own row. DDPO's reward is
computed in its bridge process, whose memory is reported beside its own and not counted in it.

Every saved LoRA (and the base model) is then scored the same way, outside all trainers:
the prompt set's held-out prompts (never trained on) with fixed seeds, plain diffusers
sampling, and per image (all kept in the result, so that `--report` recomputes every figure):

- the soft reward (what AlignProp differentiates and the others are given);
- the truth, read by a judge that shares no weights with the reward (`TRUTHS`): on the toy
  world the count read from pixels by the world's rules (`toy_rules`, `pixel_count_correct`);
  on another model, another detector than the reward's (`--judge-detector PATH`, the `count`
  judge); for `compress`/`incompress`, the real PIL JPEG size. A count read with the reward's
  own detector is never the truth: the aligner optimises against that detector and can fool
  it (it did: docs/experiments/2026-12-02-toy-count-recipes.md, "What the previous default did");
- the proxy: the reward's own detector's NMS count accuracy, reported beside the truth and
  labelled as such.

The final point of every run is scored first; the learning rate whose final truth is best is
each method's, and only its earlier points are then scored (the curves). Each point's truth
carries a 95% interval over the evaluation images (Wilson's for an accuracy, Student's t
otherwise), and each method's final truth its paired gain over the base model (same prompts
and seeds) with a 95% t-interval. Curves are against images sampled and training wall time
(sampling, reward and update; not checkpointing or evaluation). alignkit's methods are scored
at doubling step counts (one optimizer step, two, four, ...), DDPO at even intervals of its
budget. The headline, read on the independent truth, for each alignkit method: how many
samples (and how much wall time) it needs to reach DDPO's final level (best learning rate of
each), counted conservatively for alignkit: DDPO's count is interpolated between its points,
alignkit's is the first scored point from which every later point stays at the level. AlignProp
(`last:K`) is held to its paper's 25x; the others are shown without a target. The same sample
ratios on the soft reward and on the proxy are shown beside it, without a target.

    python benchmarks/vs_ddpo.py --quick          # one learning rate each, a few dozen samples
    python benchmarks/vs_ddpo.py --full           # 2 learning rates each; 256 / 512 samples
    python benchmarks/vs_ddpo.py --methods last:5=1e-3,2e-3 grpo=1e-3 --ddpo-lrs 3e-3 ...
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
# samples DDPO needs / samples AlignProp (last:K) needs, to reach DDPO's final level. AlignProp
# reports 25x DDPO's sample efficiency; that is its target. DRTune and GRPO have none.
TARGET_SAMPLE_RATIO = ">= 25"
# GRPO against DDPOTrainer at equal images per step: DDPO's s/step / GRPO's, and GRPO's peak
# memory / DDPO's (issue 21).
TARGET_STEP_SPEEDUP = ">= 1.5"
TARGET_MEMORY_RATIO = "<= 1.0"
# The learning rate of the timing runs (it does not change the work of a step).
SPEED_LR = 1e-3


@dataclass(frozen=True)
class Method:
    """One of the methods compared: `key` is how `alignkit train` runs it (a truncation policy,
    e.g. `last:5` or `drtune:5`: AlignProp with that policy; `grpo`: `--algorithm grpo`), or
    `ddpo` (trl's DDPOTrainer), with its learning rates."""

    key: str
    lrs: tuple[float, ...] = ()

    @property
    def kind(self) -> str:
        return self.key if self.key in ("grpo", "ddpo") else "alignprop"

    @property
    def name(self) -> str:
        return display(self.key)


def display(key: str) -> str:
    """A method's name in reports: its truncation policy for AlignProp, GRPO, DDPO."""
    return {"grpo": "GRPO", "ddpo": "DDPO"}.get(key, key)


def parse_methods(specs: list[str], num_steps: int) -> list[Method]:
    """`--methods NAME=LR[,LR...] ...` -> Methods; one line for a bad one."""
    from alignkit.aligner.truncation import parse_truncation
    from alignkit.errors import AlignkitError

    methods = []
    for spec in specs:
        key, eq, lrs = spec.partition("=")
        key = key.strip()
        try:
            rates = tuple(float(x) for x in lrs.split(",")) if eq else ()
        except ValueError:
            rates = ()
        if not rates or not all(math.isfinite(lr) and lr > 0 for lr in rates):
            raise BenchError(f"--methods {spec}: write NAME=LR[,LR...], e.g. last:5=1e-3,2e-3 or grpo=1e-3")
        if key == "ddpo":
            raise BenchError("--methods: DDPO is always run; give its learning rates with --ddpo-lrs")
        if key != "grpo":
            try:
                parse_truncation(key, num_steps)
            except AlignkitError as exc:
                raise BenchError(f"--methods {spec}: not grpo, and not a truncation policy for AlignProp "
                                 f"({exc})") from None
        if any(m.key == key for m in methods):
            raise BenchError(f"--methods: {key} is given twice; list its learning rates once, comma-separated")
        methods.append(Method(key, rates))
    return methods


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
    # Short names for the figures of an 80-column report (the captions spell the labels out).
    short: str = "truth"
    proxy_short: str = "proxy"


COUNT_PROXY = dict(proxy="count_nms_correct", proxy_label="count accuracy, proxy (reward's detector)",
                   short="judged count", proxy_short="proxy count")

# (reward name, where its truth is read) -> the truth (a table, not an if/elif on names).
# Where: "toy", the toy world's rules; "detector", another detector the user names with
# --judge-detector; "any", a model-free target that needs no judge.
TRUTHS = {
    ("count", "toy"): Truth("pixel_count_correct", "count accuracy, independent (toy rules)",
                            judge="toy_rules", binary=True, **COUNT_PROXY),
    ("count", "detector"): Truth("judge_count_nms_correct", "count accuracy, independent (judge detector)",
                                 judge="count", binary=True, **COUNT_PROXY),
    ("compress", "any"): Truth("jpeg_kb", "JPEG size kB, independent (PIL)", -1.0, short="JPEG kB"),
    ("incompress", "any"): Truth("jpeg_kb", "JPEG size kB, independent (PIL)", short="JPEG kB"),
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
    # A few minutes on a 2-core CPU: one learning rate each, 16-32 samples each, one timing pair.
    "quick": dict(methods=["last:5=2e-3", "drtune:5=1e-3", "grpo=1e-3"], ddpo_lrs=[1e-3], alignprop_samples=16,
                  grpo_samples=32, ddpo_samples=32, ddpo_evals=2, pg_batch=16, eval_prompts=12, speed_pairs=1,
                  speed_steps=3, speed_kl0=False),
    # About an hour on a 2-core CPU, one thread. AlignProp's lrs: the best of the 2 Dec sweep (1e-3
    # of 1e-3/2e-3/4e-3) and the toy's former default; DRTune's: those that did not diverge in
    # docs/experiments/2026-12-04-early-steps.md; GRPO and DDPO the same two (DDPO's best of
    # 3e-4/1e-3/3e-3 on 2 Dec was 3e-3). The policy gradients get twice the images of AlignProp:
    # they learn from a scalar per image.
    "full": dict(methods=["last:5=1e-3,2e-3", "drtune:5=5e-4,1e-3", "grpo=1e-3,3e-3"], ddpo_lrs=[1e-3, 3e-3],
                 alignprop_samples=256, grpo_samples=512, ddpo_samples=512, ddpo_evals=4, pg_batch=32,
                 eval_prompts=192, speed_pairs=2, speed_steps=4, speed_kl0=True),
}


def build_parser() -> argparse.ArgumentParser:
    p = harness.preset_parser(__doc__)
    p.add_argument("--model", default="toy", help="'toy' (alignkit.toy.pipeline_path()) or a diffusers folder")
    p.add_argument("--reward", default="count", help="alignkit reward every method optimises")
    p.add_argument("--prompts", default="toy_counting", help="prompt set (its train split is sampled)")
    p.add_argument("--methods", nargs="*", metavar="NAME=LR[,LR]",
                   help="alignkit's methods and their learning rates: a truncation policy (AlignProp: last:5, "
                        "drtune:5, ...) or grpo, e.g. last:5=1e-3,2e-3 drtune:5=5e-4 grpo=1e-3; none: DDPO alone")
    p.add_argument("--ddpo-lrs", type=float, nargs="+")
    p.add_argument("--alignprop-samples", "--alignkit-samples", dest="alignprop_samples", type=int,
                   help="images each AlignProp run samples (scored after 1, 2, 4, ... optimizer steps and at the end)")
    p.add_argument("--grpo-samples", type=int, help="images each GRPO run samples (scored as AlignProp's)")
    p.add_argument("--ddpo-samples", type=int, help="images each DDPO run samples")
    p.add_argument("--ddpo-evals", type=int, help="evaluation points per DDPO run, evenly spaced")
    p.add_argument("--eval-prompts", type=int, help="images per evaluation point: the set's held-out prompts, "
                   "repeated as needed, one seed each")
    p.add_argument("--num-inference-steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--alignprop-batch", "--alignkit-batch", dest="alignprop_batch", type=int, default=8,
                   help="AlignProp's samples per optimizer step")
    p.add_argument("--pg-batch", type=int,
                   help="GRPO's images per step and DDPO's per epoch (the same: equal images per step)")
    p.add_argument("--pg-micro-batch", type=int, default=8,
                   help="GRPO's --train-batch-size and DDPO's sample and train batch sizes")
    p.add_argument("--pg-trained-steps", type=int, default=5,
                   help="denoising steps of each trajectory GRPO and DDPO train (GRPO: the first K; DDPO: a random "
                        "K, train_timestep_fraction K/T); default 5, the first quarter of 20")
    p.add_argument("--ddpo-trained-steps", type=int,
                   help="the DDPO runs' trained steps per trajectory, if not --pg-trained-steps (e.g. 20: trl's "
                        "default, every step; unmatched, a check of the matched setting; the timing stays matched)")
    p.add_argument("--group-size", type=int, default=8, help="GRPO's images per prompt")
    p.add_argument("--speed-pairs", type=int,
                   help="timing rounds (GRPO, then DDPO, each a fresh process); 0 skips the timing")
    p.add_argument("--speed-steps", type=int, help="steps of each timing run; the first is not timed")
    p.add_argument("--speed-kl0", action=argparse.BooleanOptionalAction, default=None,
                   help="also time GRPO with --kl-beta 0 (DDPO's work exactly: no reference forward)")
    p.add_argument("--speed-chain", type=int, metavar="T",
                   help="also time GRPO sampling with a T-step chain (Flow-GRPO's denoising reduction), "
                        "the same share of its steps trained")
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
    args.method_list = parse_methods(args.methods, args.num_inference_steps)
    n, m, g, k = args.pg_batch, args.pg_micro_batch, args.group_size, args.pg_trained_steps
    if args.alignprop_samples % args.alignprop_batch:
        raise BenchError(f"--alignprop-samples {args.alignprop_samples} must be whole steps of --alignprop-batch "
                         f"{args.alignprop_batch}; use a multiple of {args.alignprop_batch}")
    if n % m or n % g:
        raise BenchError(f"--pg-batch {n} must be whole micro-batches of --pg-micro-batch {m} and whole groups of "
                         f"--group-size {g}; use a multiple of {m * g // math.gcd(m, g)}")
    if args.grpo_samples % n:
        raise BenchError(f"--grpo-samples {args.grpo_samples} must be whole steps of --pg-batch {n}; "
                         f"use a multiple of {n}")
    if args.ddpo_samples % (n * args.ddpo_evals):
        raise BenchError(f"--ddpo-samples {args.ddpo_samples} must split into --ddpo-evals {args.ddpo_evals} whole "
                         f"DDPO epochs of --pg-batch {n} samples; use a multiple of {n * args.ddpo_evals}")
    args.ddpo_trained_steps = args.ddpo_trained_steps or k
    for flag, value in (("--pg-trained-steps", k), ("--ddpo-trained-steps", args.ddpo_trained_steps)):
        if not 1 <= value <= args.num_inference_steps:
            raise BenchError(f"{flag} {value}: from 1 to the {args.num_inference_steps} steps of "
                             f"--num-inference-steps")
    if args.speed_pairs and args.speed_steps < 2:
        raise BenchError(f"--speed-steps {args.speed_steps}: at least 2 (the first step of a run is not timed)")
    if args.speed_chain is not None and not 1 <= args.speed_chain <= args.num_inference_steps:
        raise BenchError(f"--speed-chain {args.speed_chain}: from 1 to the {args.num_inference_steps} steps of "
                         f"--num-inference-steps (a shorter training chain)")
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
    """One evaluation point of a run: how much it had sampled and trained, and its LoRA (scores
    empty where it was not evaluated: the earlier points of a learning rate that was not the best)."""

    samples: int
    wall_s: float
    lora: str | None
    scores: dict = field(default_factory=dict)


@dataclass
class Run:
    method: str  # a Method's key: "last:5", "drtune:5", "grpo", "ddpo"
    lr: float
    points: list[Point]
    train_log: list[dict]
    peak_rss_mb: float

    @property
    def label(self) -> str:
        return f"{display(self.method)} lr={self.lr:g}"

    @property
    def scored(self) -> list[Point]:
        return [p for p in self.points if p.scores]


def pg_flags(args) -> list:
    """GRPO's flags at the matched settings (the module's doc-string); its own defaults otherwise."""
    n, m = args.pg_batch, args.pg_micro_batch
    return ["--algorithm", "grpo", "--train-batch-size", m, "--gradient-accumulation-steps", n // m,
            "--group-size", args.group_size, "--grpo-steps", f"first:{args.pg_trained_steps}", "--inner-epochs", 1]


def alignkit_flags(world: World, method: Method, lr: float, steps: int, args) -> list:
    """`alignkit train` flags of one run, as a user passes them (the model is a folder: no named
    model's recommended settings come in between)."""
    common = ["--model", world.model, "--reward", args.reward, "--prompts", args.prompts,
              "--num-inference-steps", args.num_inference_steps, "--guidance-scale", args.guidance_scale,
              "--eta", args.eta, "--learning-rate", lr, "--rank", TRL_LORA_RANK, "--lora-alpha", TRL_LORA_ALPHA,
              "--max-train-steps", steps, "--report-to", "none", "--seed", args.seed]
    if method.kind == "grpo":
        return common + pg_flags(args)
    return common + ["--truncation", method.key, "--train-batch-size", args.alignprop_batch]


def batch_and_steps(method: Method, args) -> tuple[int, int]:
    """A method's images per optimizer step and its number of steps."""
    batch, budget = ((args.pg_batch, args.grpo_samples) if method.kind == "grpo"
                     else (args.alignprop_batch, args.alignprop_samples))
    return batch, budget // batch


def run_dir(method: str, lr: float) -> str:
    """A run's folder name, without dots: its log is the folder's name + .log (`with_suffix`), which
    a dot in the learning rate would cut, so that two learning rates shared one log."""
    return f"{method}-lr{lr:g}".replace(":", "-").replace(",", "-").replace(".", "_")


def train_alignkit(world: World, method: Method, lr: float, args) -> Run:
    batch, steps = batch_and_steps(method, args)
    out = _fresh(args.work_dir / run_dir(method.key, lr))
    flags = alignkit_flags(world, method, lr, steps, args) + ["--checkpointing-steps", 1]
    child, log = harness.run_alignkit_train(flags, out, args.threads, args.timeout,
                                            f"alignkit train {method.name} (lr {lr:g})")
    wall = list(itertools.accumulate(r["step_time"] for r in log))
    points = []
    for step in doubling_steps(steps):
        ckpt = out / f"checkpoint-{step}"
        if not ckpt.is_dir():
            raise BenchError(f"alignkit train {method.name} (lr {lr:g}) left no {ckpt.name} in {out}")
        points.append(Point(step * batch, wall[step - 1], str(ckpt)))
    return Run(method.key, lr, points, log, child.peak_rss_mb)


def ddpo_reward(world: World, args) -> dict:
    """What the bridge serves DDPO: the soft reward, or the independent truth, read by the same
    judge as the evaluation (the bridge loads it beside the reward), signed so that higher is
    better (DDPO maximises; a JPEG size is better smaller for `compress`)."""
    if args.ddpo_reward == "soft":
        return {"reward_key": "reward", "reward_sign": 1.0, "judge": None}
    judge = {"name": world.truth.judge, "options": judge_options(world.truth, args.judge_detector)}
    return {"reward_key": world.truth.key, "reward_sign": world.truth.sign,
            "judge": judge if world.truth.judge else None}


def ddpo_job(world: World, lr: float, epochs: int, checkpoint_every: int, out: Path, args,
             trained_steps: int | None = None) -> dict:
    """A DDPOTrainer run at the matched settings: --pg-batch images an epoch in micro-batches of
    --pg-micro-batch (sampling and training), K of T steps trained (trl trains int(T x fraction):
    (K + 0.5) / T gives exactly K; K = --pg-trained-steps unless `trained_steps`), one inner epoch."""
    n, m = args.pg_batch, args.pg_micro_batch
    k = trained_steps or args.pg_trained_steps
    return {"model": world.model, "prompts": world.prompts, "reward": args.reward, **ddpo_reward(world, args),
            "alignkit_python": sys.executable, "seed": args.seed, "epochs": epochs,
            "checkpoint_every": checkpoint_every, "mixed_precision": "no",
            "num_inference_steps": args.num_inference_steps, "eta": args.eta, "guidance_scale": args.guidance_scale,
            "sample_batch_size": m, "sample_num_batches_per_epoch": n // m, "train_batch_size": m,
            "train_timestep_fraction": (k + 0.5) / args.num_inference_steps, "inner_epochs": 1,
            "learning_rate": lr, "per_prompt_stat_tracking": False, "output_dir": str(out)}


def train_ddpo(world: World, lr: float, args, python: Path) -> Run:
    epochs = args.ddpo_samples // args.pg_batch
    out = _fresh(args.work_dir / run_dir("ddpo", lr))
    out.mkdir(parents=True)
    job = ddpo_job(world, lr, epochs, epochs // args.ddpo_evals, out, args, args.ddpo_trained_steps)
    child, result = harness.run_peer(python, "trl_ddpo_child.py", job, out, args.threads, args.timeout,
                                     f"trl DDPOTrainer (lr {lr:g})")
    _check_trained_steps(result, args.ddpo_trained_steps)
    log = result["epochs"]
    wall = list(itertools.accumulate(r["step_time"] for r in log))
    points = [Point(r["samples"], wall[i], r["checkpoint"]) for i, r in enumerate(log) if r.get("checkpoint")]
    return Run("ddpo", lr, points, log, child.peak_rss_mb)


def _check_trained_steps(result: dict, k: int) -> None:
    if result.get("trained_timesteps", k) != k:
        raise BenchError(f"trl DDPOTrainer trained {result['trained_timesteps']} steps of each trajectory, not "
                         f"the {k} asked for: the comparison would not be what it says")


# ---- GRPO vs DDPOTrainer per step: time and memory at equal images per step ----------------------

def chain_trained_steps(args) -> int:
    """GRPO's trained steps on the --speed-chain T' chain: the same share as K of T, rounded up."""
    return math.ceil(args.pg_trained_steps * args.speed_chain / args.num_inference_steps)


def speed_configs(args) -> list[tuple[str, list]]:
    """(name, GRPO's flags beyond the matched ones) of the timing runs, DDPO last."""
    configs = [("grpo", [])]
    if args.speed_kl0:
        configs.append(("grpo kl 0", ["--kl-beta", 0.0]))
    if args.speed_chain:
        configs.append((f"grpo T={args.speed_chain}", ["--num-inference-steps", args.speed_chain,
                                                      "--grpo-steps", f"first:{chain_trained_steps(args)}"]))
    return configs + [("ddpo", [])]


def time_speed(world: World, args, python: Path) -> dict:
    """Alternating fresh processes (GRPO, [GRPO --kl-beta 0,] DDPO) x --speed-pairs, each
    --speed-steps steps at the matched settings; per run its step times and peak memory."""
    n, steps = args.pg_batch, args.speed_steps
    rows = []
    for pair in range(args.speed_pairs):
        for name, extra in speed_configs(args):
            out = _fresh(args.work_dir / f"speed-{pair}-{name.replace(' ', '').replace('=', '')}")
            if name.startswith("grpo"):
                # The extra flags come last: they override the matched ones (the last value wins).
                flags = alignkit_flags(world, Method("grpo"), SPEED_LR, steps, args)
                flags += ["--checkpointing-steps", 0, *extra]
                child, log = harness.run_alignkit_train(flags, out, args.threads, args.timeout,
                                                        f"timing: alignkit train {name}")
                times = [r["step_time"] for r in log]
                # The trainer's own peak (RUSAGE_SELF, metrics.jsonl), read as DDPO's side reads its own.
                rows.append({"pair": pair, "config": name, "step_times": times,
                             "peak_rss_mb": max(r["peak_mem_mb"] for r in log),
                             "process_peak_rss_mb": child.peak_rss_mb, "extra_flags": [str(f) for f in extra]})
            else:
                out.mkdir(parents=True)
                job = ddpo_job(world, SPEED_LR, steps, steps, out, args)
                child, result = harness.run_peer(python, "trl_ddpo_child.py", job, out, args.threads, args.timeout,
                                                 "timing: trl DDPOTrainer")
                _check_trained_steps(result, args.pg_trained_steps)
                rows.append({"pair": pair, "config": name, "step_times": [r["step_time"] for r in result["epochs"]],
                             "peak_rss_mb": result["self_peak_rss_mb"], "process_peak_rss_mb": child.peak_rss_mb,
                             "bridge_peak_rss_mb": result.get("bridge_peak_rss_mb")})
    return {"images_per_step": n, "micro_batch": args.pg_micro_batch, "trained_steps": args.pg_trained_steps,
            "num_inference_steps": args.num_inference_steps, "steps": steps, "lr": SPEED_LR, "rows": rows,
            "reward_in_process_mb": reward_footprint(args)}


# What the reward adds to a process that already holds torch and diffusers: GRPO's process holds
# it, DDPO's does not (its bridge does). Resident memory before and after importing alignkit's
# rewards, loading the reward and scoring one micro-batch of 64 px images (the toy's size).
_FOOTPRINT = """
import json, sys, torch, diffusers, transformers, peft, accelerate
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = rss()
from alignkit.rewards import load_reward
reward = load_reward(sys.argv[1])
with torch.no_grad():
    reward(torch.rand(int(sys.argv[2]), 3, 64, 64), [sys.argv[3]] * int(sys.argv[2]))
print(json.dumps({"mb": rss() - before}))
"""


def reward_footprint(args) -> float | None:
    """The reward's resident memory in a fresh process (MB; None where /proc is not there)."""
    import subprocess

    from alignkit.prompts import load_prompt_set

    prompt = load_prompt_set(args.prompts).train[0]
    try:
        out = subprocess.run([sys.executable, "-c", _FOOTPRINT, args.reward, str(args.pg_micro_batch), prompt],
                             capture_output=True, text=True, timeout=600, env=harness.child_env(args.threads))
        return json.loads(out.stdout.strip().splitlines()[-1])["mb"]
    except (OSError, subprocess.SubprocessError, IndexError, ValueError, KeyError):
        return None


def step_time(row: dict) -> float:
    """A timing run's seconds per step: the median of its steps after the first (warm-up)."""
    return statistics.median(row["step_times"][1:])


def speed_label(config: str, speed: dict) -> str:
    """A timing config's name in the report."""
    if config == "grpo kl 0":
        return "GRPO, KL 0 (DDPO's work)"
    if config.startswith("grpo T="):
        rows = [r for r in speed["rows"] if r["config"] == config]
        chain = config.removeprefix("grpo T=")
        trained = rows[0]["extra_flags"][-1].removeprefix("first:") if rows else "?"
        return f"GRPO, {chain}-step training chain ({trained} trained)"
    return "GRPO"


def speed_checks(speed: dict) -> list[Check]:
    """DDPO's s/step over GRPO's, per pair (same round: the same machine conditions), their median;
    GRPO's peak memory over DDPO's (the highest of each over the pairs)."""
    rows = speed["rows"]
    by = {}
    for row in rows:
        by.setdefault(row["config"], {})[row["pair"]] = row
    ddpo = by["ddpo"]
    checks = []
    for name in (c for c in by if c != "ddpo"):
        pairs = sorted(set(by[name]) & set(ddpo))
        ratios = [step_time(ddpo[p]) / step_time(by[name][p]) for p in pairs]
        what = speed_label(name, speed)
        g = statistics.median(step_time(by[name][p]) for p in pairs)
        d = statistics.median(step_time(ddpo[p]) for p in pairs)
        per_pair = ", ".join(f"{r:.2f}x" for r in ratios)
        checks.append(Check(f"s/step, DDPO / {what}", statistics.median(ratios), "{:.2f}x", TARGET_STEP_SPEEDUP,
                            f"{d:.2f} vs {g:.2f} s/step (medians); pairs {per_pair}"))
    for name in (c for c in by if c != "ddpo"):
        g = max(r["peak_rss_mb"] for r in by[name].values())
        d = max(r["peak_rss_mb"] for r in ddpo.values())
        bridge = max((r.get("bridge_peak_rss_mb") or 0) for r in ddpo.values())
        what = speed_label(name, speed)
        checks.append(Check(f"peak RSS, {what} / DDPO", g / d, "{:.2f}x", TARGET_MEMORY_RATIO,
                            f"{g:.0f} vs {d:.0f} MB; DDPO's reward runs in its bridge ({bridge:.0f} MB, not counted)"))
        if name == "grpo" and speed.get("reward_in_process_mb"):
            r = speed["reward_in_process_mb"]
            checks.append(Check("peak RSS, GRPO less its reward / DDPO", (g - r) / d, "{:.2f}x", None,
                                f"the reward holds {r:.0f} MB of GRPO's process (measured in a fresh one)"))
    return checks


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
    """The base model's point, then each scored point of the run."""
    start = [(0.0, _mean(base[metric]))]
    return start + [(getattr(p, x if x != "wall" else "wall_s"), _mean(p.scores[metric])) for p in run.scored]


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


def choose(runs: list[Run], sign: float) -> dict[str, Run]:
    """Each method's best run (its final points scored), in the order the methods ran."""
    methods = list(dict.fromkeys(r.method for r in runs))
    return {m: best([r for r in runs if r.method == m], sign) for m in methods}


def measures(truth: Truth) -> list[tuple[str, str, float]]:
    """(column, label, sign) of what the headline is read on: the independent truth, held to the
    target; then the soft reward and the proxy beside it, without one (both are read with the
    reward's own weights, which the aligner optimises against: they can rise while the truth
    does not)."""
    out = [("truth", truth.short, truth.sign), ("reward", "soft reward", 1.0)]
    if truth.proxy:
        out.append(("proxy", truth.proxy_short, 1.0))
    return out


def sample_target(method: str) -> str | None:
    """AlignProp's claim (25x DDPO's sample efficiency) is the target of its own truncations, not of
    DRTune's deep supervision or of GRPO."""
    return None if method in ("grpo", "ddpo") or method.startswith("drtune") else TARGET_SAMPLE_RATIO


def headline(ak: Run, dd: Run, base: dict, truth: Truth) -> list[Check]:
    """Samples (and wall time) a method needs to reach DDPO's final truth: DDPO's count
    interpolated, the method's the first scored point from which it stays there; the same sample
    ratio on the soft reward and on the proxy in the note, without a target. And, since DDPO's
    last point need not be its best, a lower bound: DDPO's whole budget over the samples the
    method needs to reach and hold the best truth DDPO ever scored."""
    who = display(ak.method)

    def reach(metric: str, sign: float, x: str = "samples") -> tuple[float, float | None, float | None] | None:
        level = _mean(dd.points[-1].scores[metric])
        if not sign * level > sign * _mean(base[metric]):
            return None  # DDPO did not improve on the base model: no level to reach
        return (level, first_reach(curve(dd, base, metric, x), level, sign),
                reach_and_hold(curve(ak, base, metric, x), level, sign))

    beside = []
    for metric, label, sign in measures(truth)[1:]:
        got = reach(metric, sign)
        beside.append(f"{label}: DDPO not above base" if got is None else
                      f"{label} {_ratio(got[1], got[2]):.1f}x" if got[2] else f"{label}: {who} never")
    name = f"images to DDPO's final {truth.short}: DDPO / {who}"
    got, sign = reach("truth", truth.sign), truth.sign
    if got is None:
        level, base_level = _mean(dd.points[-1].scores["truth"]), _mean(base["truth"])
        checks = [Check(name, None, "{:.1f}x", None, f"DDPO ended at {level:.3g}, not better than the base "
                                                     f"model's {base_level:.3g}; " + "; ".join(beside))]
    else:
        level, ddpo_n, ak_n = got
        _, ddpo_t, ak_t = reach("truth", sign, "wall")
        checks = [Check(name, _ratio(ddpo_n, ak_n), "{:.1f}x", sample_target(ak.method),
                        f"{_fmt(ddpo_n)} vs {_fmt(ak_n)} images (level {level:.3g}); " + "; ".join(beside)),
                  Check(f"wall time to DDPO's final {truth.short}: DDPO / {who}", _ratio(ddpo_t, ak_t), "{:.1f}x",
                        None, f"{_fmt(ddpo_t, ' s')} vs {_fmt(ak_t, ' s')}")]
    best_dd = sign * max(sign * _mean(p.scores["truth"]) for p in dd.scored)  # DDPO's best scored point
    name = f"DDPO's budget / {who}'s images to hold DDPO's best {truth.short} (lower bound)"
    base_level = _mean(base["truth"])
    if not sign * best_dd > sign * base_level:
        # No gain of DDPO's to hold: holding the base model's level is no sample efficiency.
        checks.append(Check(name, None, "> {:.1f}x", None, f"DDPO never scored above the base model's "
                                                          f"{base_level:.3g} (its best: {best_dd:.3g})"))
        return checks
    held = reach_and_hold(curve(ak, base, "truth"), best_dd, sign)
    budget = dd.points[-1].samples
    checks.append(Check(name, budget / held if held else None, "> {:.1f}x", None,
                        f"{who} held {best_dd:.3g} from {held:.0f} images on; DDPO's budget {budget}" if held
                        else f"{who} did not hold DDPO's best ({best_dd:.3g})"))
    return checks


def levels(chosen: dict[str, Run], base: dict, truth: Truth) -> list[Check]:
    """The base model's and each method's final truth, each with its 95% interval over
    the evaluation images and its paired gain over the base model (same prompts and seeds) with a
    95% t-interval: whether a gain is beyond the noise of the evaluation."""
    from alignkit.evaluation.metrics import Gain

    checks = []
    # The truth only: the proxy's finals are in the runs table, and its intervals in the curves.
    for metric, label in (("truth", truth.short),):
        iv = interval(base[metric], truth.binary)
        checks.append(Check(f"base, {label}", iv.mean, "{:.3f}", None, iv.text()))
        for method, run in chosen.items():
            final = run.points[-1].scores[metric]
            iv = interval(final, truth.binary)
            gain = Gain.paired(base[metric], final)
            checks.append(Check(f"{display(method)} final, {label}", iv.mean, "{:.3f}", None,
                                f"{iv.text()}; gain over base {gain.mean:+.3f} (95% CI {gain.low:+.3f} to "
                                f"{gain.high:+.3f}, paired)"))
    return checks


def curves(runs: list[Run], base: dict, truth: Truth) -> dict:
    """Every scored point's means, with the 95% interval of its truth and proxy: the curves as the JSON keeps them."""
    def row(samples: float, wall_s: float, scores: dict) -> dict:
        out = {"samples": samples, "wall_s": wall_s, "reward": _mean(scores["reward"])}
        for metric in ("truth", "proxy"):
            if metric in scores:
                out[metric] = interval(scores[metric], truth.binary).as_dict()
        return out

    return {"base": row(0, 0.0, base),
            "runs": [{"run": r.label, "method": r.method, "lr": r.lr,
                      "points": [row(p.samples, p.wall_s, p.scores) for p in r.scored]} for r in runs]}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return math.inf if b == 0 else a / b


def _fmt(x: float | None, unit: str = "") -> str:
    return "never" if x is None else f"{x:.0f}{unit}"


def runs_table(runs: list[Run], chosen: dict[str, Run], base: dict, truth: Truth):
    from rich.table import Table

    # Short headers over two lines and a legend: the labels are sentences, which an 80-column
    # terminal would cut to `…`.
    legend = (f"truth: final {truth.label}, 95% interval; "
              + (f"proxy: final {truth.proxy_label}; " if truth.proxy else "")
              + "reward: final soft reward; wall s: training time; *: the best lr, whose curve is scored")
    table = Table(title=f"alignkit vs trl DDPOTrainer (base: reward {_mean(base['reward']):.3f}, "
                        f"{truth.label} {_mean(base['truth']):.3f})", title_justify="left",
                  caption=legend, caption_justify="left")
    columns = ["run", "images", "wall s", "reward", "truth [95% CI]", *(["proxy"] if truth.proxy else [])]
    for column in columns:
        table.add_column(column, justify="right" if column != "run" else "left")
    for run in runs:
        last = run.points[-1]
        iv = interval(last.scores["truth"], truth.binary)
        proxy = [f"{_mean(last.scores['proxy']):.3f}"] if truth.proxy else []
        star = " *" if chosen.get(run.method) is run else ""
        table.add_row(run.label + star, str(last.samples), f"{last.wall_s:.0f}", f"{_mean(last.scores['reward']):.3f}",
                      f"{iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]", *proxy)
    return table


COLOURS = ["tab:blue", "tab:green", "tab:purple", "tab:red", "tab:brown", "tab:pink"]


def plot(runs: list[Run], chosen: dict, base: dict, truth: Truth, path: Path) -> Path:
    """One figure: the judged truth against images and against wall time (95% bands on each
    method's best run), the soft reward and the proxy against images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("truth", "samples", truth.label, "images sampled"),
              ("truth", "wall", truth.label, "training wall time (s)"),
              ("reward", "samples", "soft reward", "images sampled")]
    if truth.proxy:
        panels.append(("proxy", "samples", truth.proxy_label, "images sampled"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4))
    alignkit_methods = [m for m in chosen if m != "ddpo"]
    colours = {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(alignkit_methods)} | {"ddpo": "tab:orange"}
    for ax, (metric, x, ylabel, xlabel) in zip(axes, panels):
        for run in runs:
            top = run is chosen[run.method]
            xs, ys = zip(*curve(run, base, metric, x))
            ax.plot(xs, ys, marker="o", ms=3, color=colours[run.method], alpha=1.0 if top else 0.35,
                    lw=2 if top else 1, ls="-" if top else ":", label=run.label + (" (best)" if top else ""))
            if top and metric != "reward":  # the 95% interval of each point of the best runs
                ivs = [interval(sc[metric], truth.binary) for sc in [base, *(p.scores for p in run.scored)]]
                ax.fill_between(xs, [i.low for i in ivs], [i.high for i in ivs], color=colours[run.method],
                                alpha=0.12, lw=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    names = ", ".join(display(m) for m in alignkit_methods)
    fig.suptitle(f"alignkit ({names}) vs trl 0.23.1 DDPOTrainer: same base model, prompts, T and LoRA rank; "
                 "held-out prompts, bands: 95% intervals (best lr of each; dotted: other lrs, final point only)",
                 fontsize=9)
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
    for method in args.method_list:
        for lr in method.lrs:
            with con.status(f"{method.name} lr={lr:g}: training"):
                runs.append(train_alignkit(world, method, lr, args))
    for lr in args.ddpo_lrs:
        with con.status(f"DDPO lr={lr:g}: training"):
            runs.append(train_ddpo(world, lr, args, python))
    speed = None
    if args.speed_pairs:
        with con.status(f"GRPO vs DDPOTrainer: {args.speed_pairs} timing round(s)"):
            speed = time_speed(world, args, python)
    # Image i of every model: prompts[i] with seed EVAL_SEED + i.
    prompts = eval_prompts(world.held_out, args.eval_prompts)
    # The base model and every run's final LoRA first: they pick each method's learning rate ...
    finals = [None] + [r.points[-1].lora for r in runs]
    with con.status(f"evaluating {len(finals)} models on {args.eval_prompts} images"):
        scores = evaluate(world, finals, prompts, args)
    for r in runs:
        r.points[-1].scores = scores[r.points[-1].lora]
    chosen = choose(runs, world.truth.sign)
    # ... then only the best runs' earlier points: their curves.
    rest = [p.lora for r in chosen.values() for p in r.points[:-1]]
    with con.status(f"evaluating {len(rest)} models on {args.eval_prompts} images"):
        scores.update(evaluate(world, rest, prompts, args))
    for r in chosen.values():
        for p in r.points:
            p.scores = scores[p.lora]
    base = scores[None]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "method_list"}
    settings.update(model=world.model, lora_rank=TRL_LORA_RANK, lora_alpha=TRL_LORA_ALPHA,
                    truth=world.truth.key, truth_from=world.truth_from, judge=world.truth.judge,
                    proxy=world.truth.proxy, train_prompts=len(world.prompts), held_out_prompts=len(world.held_out),
                    ddpo_train_timestep_fraction=(args.ddpo_trained_steps + 0.5) / args.num_inference_steps,
                    # Each method's `alignkit train` flags (at its first learning rate; the runs add
                    # --checkpointing-steps 1 --output-dir DIR).
                    alignkit_train_flags={m.key: [str(f) for f in alignkit_flags(
                        world, m, m.lrs[0], batch_and_steps(m, args)[1], args)] for m in args.method_list})
    # Per image, in this order, for every model: what pairs a gain over the base model.
    samples = {"eval": {"prompts": prompts, "seeds": [EVAL_SEED + i for i in range(len(prompts))]},
               "base": base, "runs": [{"method": r.method, "lr": r.lr, "peak_rss_mb": r.peak_rss_mb,
                                       "points": [p.__dict__ for p in r.points], "train_log": r.train_log}
                                      for r in runs],
               **({"speed": speed} if speed else {})}
    return summarize(args.name, settings, samples, args.results)


def saved_truth(settings: dict, samples: dict) -> Truth:
    """The truth a result was measured with. One line for a result saved before the truth was read
    by an independent judge and kept per image: its means cannot be re-read, only re-measured."""
    truth = TRUTHS.get((settings.get("reward"), settings.get("truth_from")))
    if truth is None or not isinstance(samples.get("base", {}).get("truth"), list):
        raise BenchError(f"no independent per-image truth in it (its truth '{settings.get('truth')}' is kept as means "
                         f"only, read by the reward's own detector); re-run vs_ddpo to measure it")
    return truth


def saved_method(run: dict, settings: dict) -> str:
    """A saved run's method key; results written before alignkit's methods were a list named
    AlignProp "alignkit" and kept its truncation in the settings."""
    if run["method"] == "alignkit":
        return settings.get("truncation") or "last:5"
    return run["method"]


def summarize(name: str, settings: dict, samples: dict, results: Path) -> Result:
    """The figures, table and plot from the raw samples (a fresh run's, or a saved result's)."""
    truth = saved_truth(settings, samples)
    base = samples["base"]
    runs = [Run(saved_method(r, settings), r["lr"], [Point(**p) for p in r["points"]], r["train_log"],
                r["peak_rss_mb"]) for r in samples["runs"]]
    if not any(r.method == "ddpo" for r in runs):
        raise BenchError("no DDPO run in it: every figure is read against DDPO's")
    chosen = choose(runs, truth.sign)
    alignkit = [m for m in chosen if m != "ddpo"]
    checks = [*(Check(f"best lr, {display(m)}", chosen[m].lr, "{:g}") for m in [*alignkit, "ddpo"]),
              *levels({m: chosen[m] for m in [*alignkit, "ddpo"]}, base, truth),
              *(c for m in alignkit for c in headline(chosen[m], chosen["ddpo"], base, truth))]
    speed = speed_checks(samples["speed"]) if samples.get("speed") else []
    figure = plot(runs, chosen, base, truth, results / f"{name}.png")
    return Result(name, settings, samples, checks + speed,
                  extra={"plot": str(figure), "curves": curves(runs, base, truth),
                         "runs_table": (runs, chosen, base, truth, len(checks), samples.get("speed"))})


def speed_title(speed: dict) -> str:
    return (f"GRPO vs trl DDPOTrainer per step: {speed['images_per_step']} images a step "
            f"(micro-batch {speed['micro_batch']}), {speed['trained_steps']} of {speed['num_inference_steps']} "
            f"steps trained, {len({r['pair'] for r in speed['rows']})} round(s) of {speed['steps']} steps")


def report(result: Result, con) -> None:
    runs, chosen, base, truth, n_efficiency, speed = result.extra["runs_table"]
    con.print(runs_table(runs, chosen, base, truth))
    con.print(harness.checks_table("sample efficiency vs DDPO (best learning rate of each)",
                                   result.checks[:n_efficiency],
                                   caption=f"{truth.short}: {truth.label}, read by "
                                           f"{truth.judge or 'a model-free measure'}, which shares no weights with "
                                           f"the reward"
                                           + (f"; {truth.proxy_short}: {truth.proxy_label}, beside, never the "
                                              f"headline" if truth.proxy else "")
                                           + f". curves: {result.extra['plot']}"))
    if speed:
        con.print(harness.checks_table(speed_title(speed), result.checks[n_efficiency:],
                                       caption="s/step: the median of each run's steps after its first; peak RSS: "
                                               "the trainer's own process (RUSAGE_SELF)"))


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
