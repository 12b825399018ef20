"""alignkit vs trl 0.23.1's AlignPropTrainer: step time and peak memory on the same job.

Both sides train LoRA (rank 4, alpha 4, to_q/to_k/to_v/to_out.0: trl hard-codes these) on the
same saved pipeline, with the same reward (alignkit's, imported on both sides), resolution, T
DDIM steps (eta 1), classifier-free guidance, fixed truncation K, batch, learning rate and
AdamW settings, fp32 on CPU. Each run is a fresh process; runs alternate alignkit, trl,
alignkit, trl... over N pairs after one warm-up pair, and each run's first steps are left out
of its median step time. Peak memory is the peak RSS each process reached by the end of its
last training step (`getrusage` inside the child, the same call on both sides) on CPU, and the
device's max allocated bytes on GPU.

trl's fixed truncation: `truncated_backprop_timestep = T - K` (its sampler detaches the UNet
output of steps i < that index, so the last K steps carry gradients).

    python benchmarks/vs_trl_alignprop.py --full           # tiny at 64 and 256 px (+ toy), 5 pairs
    python benchmarks/vs_trl_alignprop.py --quick
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Run as `python benchmarks/NAME.py`: Python puts benchmarks/ first on sys.path, so the
# harness imports as a sibling; alignkit is the installed package (`make venv`).
import harness
from harness import BenchError, Check, Result

NAME = "vs_trl_alignprop"
# The targets for alignkit against trl on the same job.
TARGET_THROUGHPUT = ">= 1.5"
TARGET_MEMORY = "<= 1.0"
# trl's DefaultDDPOStableDiffusionPipeline.get_trainable_layers hard-codes this LoRA.
TRL_LORA_RANK = 4
TRL_LORA_ALPHA = 4.0

PRESETS = {
    # Minutes on a 2-core CPU: one resolution, two pairs, no warm-up pair.
    "quick": dict(pipelines=["tiny"], resolutions=[64], pairs=2, steps=5, skip_steps=2, warmup_pairs=0),
    # The toy model (64 px native, its weights ship with alignkit) joins.
    "full": dict(pipelines=["tiny", "toy"], resolutions=[64, 256], pairs=5, steps=10, skip_steps=3, warmup_pairs=1),
}


@dataclass
class Job:
    """Everything both sides are told; the same values go to each."""

    model: str
    resolution: int
    num_inference_steps: int
    k: int
    batch_size: int
    learning_rate: float
    guidance_scale: float
    eta: float
    reward: str
    prompt: str
    steps: int
    seed: int
    mixed_precision: str


def build_parser() -> argparse.ArgumentParser:
    p = harness.preset_parser(__doc__, quick="minutes: 64 px, 2 pairs", full="64 and 256 px, 5 pairs")
    p.add_argument("--pipeline", dest="pipelines", nargs="+", help="tiny (random ~1.2M UNet), sd15 (SD 1.5 "
                   "architecture, random weights), toy (alignkit's embedded model), or diffusers folders")
    p.add_argument("--resolutions", type=int, nargs="+", help="image sides in pixels for tiny/sd15 (a folder or "
                   "toy runs at its native size)")
    p.add_argument("--pairs", type=int, help="alternated alignkit/trl run pairs measured (default: the preset's)")
    p.add_argument("--warmup-pairs", type=int, help="pairs run first and discarded")
    p.add_argument("--steps", type=int, help="optimizer steps per run")
    p.add_argument("--skip-steps", type=int, help="first steps of each run left out of its median")
    p.add_argument("--num-inference-steps", type=int, default=20, help="DDIM steps T")
    p.add_argument("--k", type=int, default=2, help="fixed truncation: the last K steps carry gradients")
    p.add_argument("--batch-size", type=int, default=2, help="samples per optimizer step (x2 UNet rows with CFG)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--reward", default="compress", help="an alignkit reward spec both sides import")
    p.add_argument("--prompt", default="a photo of a cat")
    p.add_argument("--toy-prompt", default="three red circles on a white background",
                   help="the prompt on the toy model (its tokenizer knows only the toy world's words)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--alignkit-args", default="", help="extra `alignkit train` flags for alignkit's side only, "
                   "e.g. '--compile-unet' (recorded in the settings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="OMP/MKL threads for both sides (default: torch's choice)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a run is killed")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "alignkit-bench" / "pipelines",
                   help="where built pipelines are kept between runs")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "alignkit-bench" / NAME)
    p.add_argument("--results", type=Path, default=harness.RESULTS, help="folder of the JSON result")
    p.add_argument("--name", help=f"result file name (default: {NAME}, {NAME}_quick with --quick)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset or "full"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # A quick run never overwrites the full run's result.
    args.name = args.name or (f"{NAME}_quick" if args.preset == "quick" else NAME)
    if not 1 <= args.k <= args.num_inference_steps:
        raise BenchError(f"--k {args.k} must be between 1 and --num-inference-steps {args.num_inference_steps}")
    if args.skip_steps >= args.steps:
        raise BenchError(f"--skip-steps {args.skip_steps} leaves no measured step of --steps {args.steps}")
    if args.pairs < 1:
        raise BenchError("--pairs must be at least 1")
    return args


def targets(args) -> list[tuple[str, str, int]]:
    """(label, folder, resolution) to measure: built pipelines at each resolution, folders at their own."""
    from alignkit.testing import ARCHITECTURES, PipelineSpec, pipeline_folder

    out = []
    for kind in args.pipelines:
        if "family" in ARCHITECTURES.get(kind, {}):
            raise BenchError(f"--pipeline {kind}: a flow-matching architecture; trl's AlignPropTrainer runs "
                             "Stable Diffusion UNet pipelines only")
        if kind in ARCHITECTURES:
            out += [(kind, str(pipeline_folder(PipelineSpec(kind, r), args.cache)), r) for r in args.resolutions]
        else:
            folder, native = resolve_pipeline(kind)
            out.append((kind if kind == "toy" else Path(folder).name, folder, native))
    return out


def resolve_pipeline(kind: str) -> tuple[str, int]:
    """A saved pipeline folder and the resolution it draws (trl reads it from the UNet config)."""
    from alignkit.families import vae_factor_of

    if kind == "toy":
        from alignkit.models import resolve_model

        kind = resolve_model("toy")
    folder = Path(kind)
    config = folder / "unet" / "config.json"
    if not config.is_file():
        raise BenchError(f"--pipeline {kind}: no diffusers pipeline there (no unet/config.json)")
    unet = json.loads(config.read_text())
    vae_factor = vae_factor_of(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"])
    return str(folder), unet["sample_size"] * vae_factor


# ---- the two sides -------------------------------------------------------------------------------

def run_alignkit(job: Job, out: Path, args) -> dict:
    """`alignkit train` in its own process; step times from its metrics.jsonl."""
    train_args = ["--model", job.model, "--reward", job.reward, "--prompt", job.prompt, "--resolution", job.resolution,
                  "--num-inference-steps", job.num_inference_steps, "--truncation", f"last:{job.k}",
                  "--train-batch-size", job.batch_size, "--learning-rate", job.learning_rate,
                  "--rank", TRL_LORA_RANK, "--lora-alpha", TRL_LORA_ALPHA, "--max-train-steps", job.steps,
                  "--guidance-scale", job.guidance_scale, "--eta", job.eta, "--mixed-precision", job.mixed_precision,
                  "--checkpointing-steps", 0, "--report-to", "none", "--seed", job.seed,
                  *shlex.split(args.alignkit_args)]
    child, records = harness.run_alignkit_train(train_args, out, args.threads, args.timeout)
    if any(r["k"] != job.k for r in records):
        raise BenchError(f"alignkit logged K={sorted({r['k'] for r in records})}, not {job.k}")
    peaks = [r["peak_mem_mb"] for r in records]
    return {"side": "alignkit", "step_times": [r["step_time"] for r in records],
            "peak_rss_mb": child.peak_rss_mb, "wall_s": child.wall_s,
            # alignkit's own figure: the device's max allocated on GPU, its RSS so far on CPU.
            "self_peak_mb": max(peaks) if peaks else None, "rewards": [r["reward"] for r in records]}


def run_trl(job: Job, out: Path, args, python: Path) -> dict:
    """trl's AlignPropTrainer in the peer environment, in its own process."""
    out.mkdir(parents=True, exist_ok=True)
    child, result = harness.run_peer(python, "trl_alignprop_child.py", {**job.__dict__, "output_dir": str(out)}, out,
                                     args.threads, args.timeout, "trl AlignPropTrainer")
    if any(k != job.k for k in result["k_effective"]):
        raise BenchError(f"trl backpropagated through K={result['k_effective']} steps, not {job.k}: the "
                         "truncated_backprop_timestep mapping is wrong for this trl version")
    return {**result, "peak_rss_mb": child.peak_rss_mb, "wall_s": child.wall_s}


# ---- figures -----------------------------------------------------------------------------------------

def summarize_run(run: dict, skip: int, gpu: bool) -> dict:
    """Median step time after the first `skip` steps, and the training loop's peak memory.

    The peak is what each side's process reached by the end of its last training step: on GPU
    the device's max allocated bytes, on CPU `getrusage(RUSAGE_SELF).ru_maxrss` read inside the
    child right after the step (both sides measure it the same way). The whole-process peak from
    wait4, which also covers saving after training, is kept in the samples as `peak_rss_mb`.
    """
    measured = run["step_times"][skip:]
    if run["side"] == "trl":
        peak = run["device_peak_mb"] if gpu else run["self_peak_rss_mb"]
    else:
        peak = run["self_peak_mb"]
    return {"median_step_s": harness.median(measured), "peak_mb": peak}


def pair_figures(a: dict, t: dict) -> dict:
    return {"throughput_ratio": t["median_step_s"] / a["median_step_s"],
            "memory_ratio": a["peak_mb"] / t["peak_mb"]}


def run(args: argparse.Namespace) -> Result:
    harness.require_alignkit(args.reward)
    python = harness.trl_python()
    gpu = _cuda_available()
    con = harness.console(stderr=True)  # progress; the report itself goes to stdout
    if warning := harness.busy_warning():
        con.print(f"[yellow]warning:[/] {warning}")
    samples, checks, per_res = {}, [], {}
    for name, model, resolution in targets(args):
        job = Job(model, resolution, args.num_inference_steps, args.k, args.batch_size, args.learning_rate,
                  args.guidance_scale, args.eta, args.reward, args.toy_prompt if name == "toy" else args.prompt,
                  args.steps, args.seed, args.mixed_precision)
        key = f"{name} {resolution} px"
        work = args.work_dir / f"{name}-{resolution}px"
        runs = []
        for pair in range(args.warmup_pairs + args.pairs):
            warm = pair < args.warmup_pairs
            label = f"{key}, {'warm-up' if warm else 'pair'} {pair + 1 if warm else pair - args.warmup_pairs + 1}"
            with con.status(f"{label}: alignkit"):
                a = run_alignkit(job, _fresh(work / f"p{pair}-alignkit"), args)
            with con.status(f"{label}: trl"):
                t = run_trl(job, _fresh(work / f"p{pair}-trl"), args, python)
            if warm:
                continue
            sa, st = summarize_run(a, args.skip_steps, gpu), summarize_run(t, args.skip_steps, gpu)
            runs.append({"alignkit": {**a, **sa}, "trl": {**t, **st}, **pair_figures(sa, st)})
            # Raw pairs so far, so that a run killed by an outer time limit still leaves its data.
            _write_partial(args, {**samples, key: runs})
            con.print(f"{label}: alignkit {sa['median_step_s']:.3f} s/step {sa['peak_mb']:.0f} MB | "
                      f"trl {st['median_step_s']:.3f} s/step {st['peak_mb']:.0f} MB")
        samples[key] = runs
        per_res[key] = runs
        thr = harness.median([r["throughput_ratio"] for r in runs])
        mem = harness.median([r["memory_ratio"] for r in runs])
        a_step = harness.median([r["alignkit"]["median_step_s"] for r in runs])
        t_step = harness.median([r["trl"]["median_step_s"] for r in runs])
        lo, hi = harness.iqr([r["throughput_ratio"] for r in runs])
        checks += [
            Check(f"{key}: alignkit s/step", a_step, "{:.3f}", note=f"median of {len(runs)} runs"),
            Check(f"{key}: trl s/step", t_step, "{:.3f}"),
            Check(f"{key}: throughput alignkit/trl", thr, "{:.2f}x", TARGET_THROUGHPUT,
                  note=f"median of pairs, IQR {lo:.2f}-{hi:.2f}"),
            Check(f"{key}: peak {'device memory' if gpu else 'RSS'} alignkit/trl", mem, "{:.2f}x",
                  TARGET_MEMORY, note=f"{harness.median([r['alignkit']['peak_mb'] for r in runs]):.0f} vs "
                                      f"{harness.median([r['trl']['peak_mb'] for r in runs]):.0f} MB"),
        ]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(lora_rank=TRL_LORA_RANK, lora_alpha=TRL_LORA_ALPHA, trl_truncated_backprop_timestep=
                    args.num_inference_steps - args.k,
                    memory_measure="device max allocated (torch.cuda)" if gpu else
                    "peak RSS by the end of the last training step (getrusage in the child); whole-process "
                    "peak incl. saving in samples as peak_rss_mb (wait4)")
    return Result(args.name, settings, samples, checks, extra={"pairs_table": _pairs_rows(per_res)})


def _pairs_rows(per_res: dict) -> list[dict]:
    return [{"target": res, "pair": i + 1, "alignkit_s": r["alignkit"]["median_step_s"],
             "trl_s": r["trl"]["median_step_s"], "throughput_ratio": r["throughput_ratio"],
             "alignkit_mb": r["alignkit"]["peak_mb"], "trl_mb": r["trl"]["peak_mb"], "memory_ratio": r["memory_ratio"]}
            for res, runs in per_res.items() for i, r in enumerate(runs)]


def pairs_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="alignkit vs trl AlignPropTrainer, pair by pair (s = median seconds per step)",
                  title_justify="left")
    for column in ("pipeline", "pair", "alignkit s", "trl s", "speed-up", "alignkit MB", "trl MB", "memory"):
        table.add_column(column, justify="right", no_wrap=column == "pipeline")
    for r in rows:
        table.add_row(r["target"], str(r["pair"]), f"{r['alignkit_s']:.3f}", f"{r['trl_s']:.3f}",
                      f"{r['throughput_ratio']:.2f}x", f"{r['alignkit_mb']:.0f}", f"{r['trl_mb']:.0f}",
                      f"{r['memory_ratio']:.2f}x")
    return table


def report(result: Result, con) -> None:
    con.print(pairs_table(result.extra["pairs_table"]))
    con.print(harness.checks_table("alignkit vs trl 0.23.1 AlignPropTrainer (same pipeline, reward, T, K, batch)",
                                   result.checks))


def _write_partial(args, samples: dict) -> None:
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.partial.json").write_text(json.dumps(samples, default=str))


def _fresh(path: Path) -> Path:
    import shutil

    if path.exists():
        shutil.rmtree(path)
    return path


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    con = harness.console()
    report(result, con)
    path = harness.write_result(result, harness.trl_python(), args.results)
    (args.results / f"{args.name}.partial.json").unlink(missing_ok=True)
    con.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    harness.entry_point(main)
