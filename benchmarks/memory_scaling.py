"""Peak memory and time per training step against T (denoising steps) and K (steps with
gradients), with and without per-step gradient checkpointing, against the compute floor.

    python benchmarks/memory_scaling.py          # CPU quick mode: a small SD pipeline, 32 and 64 px
    python benchmarks/memory_scaling.py --gpu    # SD 1.5's architecture (random weights), 512 px, bf16
    python benchmarks/memory_scaling.py --family sd3     # flow matching: tiny SD3 (CPU), 64 and 128 px
    python benchmarks/memory_scaling.py --family flux --gpu   # FLUX.1-dev's architecture, 512 px, bf16
    python benchmarks/memory_scaling.py --drtune # DRTune (drtune:2): K = 2 at T = 10, 20, 50, 32 px

A grid entry is (T, K, checkpointing) for the last K steps with gradients (`last:K`), or
(T, K, checkpointing, "drtune") for DRTune's deep supervision (`drtune:K`: K steps spread
evenly over the chain from a random offset, the denoiser's input detached at every step;
alignkit/aligner/truncation.py). The worker draws each step's cut with the policy's
`draw_cut` and sets the trajectory's `grad_steps`/`stop_grad` from it, as the trainer does.
`--drtune` runs only DRTune at K = 2 for T = 10, 20, 50 with checkpointing (on CPU at the
plan's first resolution, 3 timed steps) and writes `memory_scaling_drtune.json`; its target
is memory flat in T: peak memory at the largest T <= 1.10x that at the smallest (same K).

For the flow families (SD3, FLUX: aligner/flow_sampler.py) the denoiser is the transformer and
a "UNet forward" below is one transformer call (SD3 at the CFG batch; FLUX one batch with its
guidance embedding); on a GPU they run with --offload-t5 (T5 off the card between encodes,
as 24 GB cards need), and their peak includes T5's visit to the card for each encode.

Each configuration runs in a fresh subprocess, so one configuration's allocations never
count towards another's. Memory: on CPU the peak RSS above the RSS just before the timed
steps (sampled every 5 ms by a thread); on GPU `torch.cuda.max_memory_allocated` (absolute,
weights included, and above the pre-step allocation). The compute floor is what the step
implies at the same batch, timed in the same process with eager forwards: T UNet forwards
at the CFG batch without gradients, plus K forwards with gradients (~3x a forward: forward
and backward; +1 forward for the recompute when checkpointing), plus decode + reward three
times (forward, backward ~2x; four with checkpointing, which also checkpoints the decode, as
the trainer does by default), plus one encode of the step's prompts (the text encoders run
once per step, without gradients). Step time / floor near 1 means no overhead beyond the work.
For DRTune the same count holds: all T steps run one denoiser forward (the K trained ones with
autograd, the others without), the K trained steps a backward and a recompute each; what the
floor leaves out is the DRTune-only graph of the untrained steps after the first trained one
(their DDIM/Euler update stays in the graph, elementwise on the latents, no denoiser call),
which the step time therefore counts as overhead.
Beside it, a measured floor times the backward passes instead of assuming them (T - K
forwards, K forward+backward, K recompute forwards and one decode when checkpointing,
decode+reward forward+backward): step time over it is the aligner's own overhead.

Each configuration is a fresh child of `harness.run_child`; the report is the harness's table
(figure, value, target, pass/miss) beside a table of every configuration, and the result is
`benchmarks/results/memory_scaling.json` (`memory_scaling_gpu.json` with --gpu;
`memory_scaling_sd3.json`, `memory_scaling_flux_gpu.json`, ... with --family) in the harness's format: machine, versions, date, settings, figures, and every configuration's row.
Targets: peak memory at K=T <= 1.25x that at K=1 (checkpointing on); step time <= 1.15x the
floor; DRTune: peak memory at the largest T <= 1.10x that at the smallest T, same K.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness
from harness import BenchError, Check, Result

NAME = "memory_scaling"
# Measures alignkit alone: no peer environment to record (run_all reads this).
USES_PEER = False
# The targets of the module docstring.
TARGET_MEMORY = "<= 1.25"
TARGET_FLOOR = "<= 1.15"
TARGET_DRTUNE = "<= 1.10"
# alignkit.testing's architecture, image sides, weight dtype, batch, timed steps, and the grid of (T, K, checkpointing).
CPU_PLAN = dict(arch="small", resolutions=[32, 64], dtype="float32", batch=2, steps=5,
                grid=[(8, 1, True), (8, 8, True), (8, 1, False), (8, 8, False), (4, 4, True)])
GPU_PLAN = dict(arch="sd15", resolutions=[512], dtype="bfloat16", batch=1, steps=2,
                grid=[(50, 1, True), (50, 50, True), (50, 1, False), (50, 8, False)])
GUIDANCE = 7.5
# --drtune: DRTune at a fixed K over growing T, checkpointing on (the issue's "memory grows with K,
# not with T"); on CPU at the plan's first resolution with fewer timed steps (T = 50 is slow there).
DRTUNE_GRID = [(10, 2, True, "drtune"), (20, 2, True, "drtune"), (50, 2, True, "drtune")]
DRTUNE_CPU_STEPS = 3
MODES = ("last", "drtune")
# The flow families' plans (family -> CPU, GPU): the tests' tiny pipelines on CPU (a 4x4 latent at
# their native 32 px is too small to time, so 64 and 128 px: 16 and 64 tokens); on a GPU the
# issue's sizes, SD3.5-medium at 1024 px and FLUX.1-dev at 512 px, K=1 and K=T at T=28 (both
# pipelines' usual step count), batch 1. Their guidance is the family's default (alignkit/families.py).
FLOW_PLANS = {
    "sd3": (dict(arch="sd3", resolutions=[64, 128], dtype="float32", batch=2, steps=5,
                 grid=[(8, 1, True), (8, 8, True), (8, 1, False), (8, 8, False)]),
            dict(arch="sd35m", resolutions=[1024], dtype="bfloat16", batch=1, steps=2,
                 grid=[(28, 1, True), (28, 28, True)])),
    "flux": (dict(arch="flux", resolutions=[64, 128], dtype="float32", batch=2, steps=5,
                  grid=[(8, 1, True), (8, 8, True), (8, 1, False), (8, 8, False)]),
             dict(arch="flux1", resolutions=[512], dtype="bfloat16", batch=1, steps=2,
                  grid=[(28, 1, True), (28, 28, True)])),
}


# ---- the worker: one configuration in a fresh process --------------------------------------------

class RSSPeak:
    """Peak resident set size (MiB) sampled by a thread, relative to a baseline."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak, self._stop = every, 0.0, threading.Event()

    @staticmethod
    def now() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def __enter__(self):
        self.base = self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def build_pipeline(arch: str, resolution: int, device, dtype, family: str = "sd"):
    """The benchmark pipeline `arch` of `alignkit.testing`, random weights, built on `device`
    (the flow families' made directly in `dtype`: FLUX.1 in fp32 would take 48 GB)."""
    import torch

    from alignkit.testing import random_pipeline

    pipe = random_pipeline(arch, resolution, seed=0, device=device, dtype=None if family == "sd" else dtype)
    for module in pipe.components.values():  # cast in place (pipe.to(dtype) warns about fp32 modules)
        if isinstance(module, torch.nn.Module):
            module.to(dtype)
    return pipe


def worker(spec: dict) -> dict:
    import torch

    from alignkit.aligner.lora import add_lora
    from alignkit.aligner.pipeline import prepare_pipeline
    from alignkit.aligner.sampler import DDIMSampler
    from alignkit.aligner.truncation import parse_truncation

    torch.set_num_threads(spec.get("threads") or max(1, min(4, os.cpu_count() or 1)))
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    T, K, B = spec["T"], spec["K"], spec["batch"]
    family = spec.get("family", "sd")
    loaded = prepare_pipeline(build_pipeline(spec["arch"], spec["resolution"], device, dtype, family), spec["arch"])
    if family == "sd":
        params = add_lora(loaded.pipe.unet, rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        sampler = DDIMSampler(loaded, spec["resolution"], T, GUIDANCE, eta=1.0, gradient_checkpointing=spec["ckpt"],
                              checkpoint_vae=spec["ckpt"])
    else:
        from alignkit.aligner.flow_sampler import FlowMatchSampler

        # The family's LoRA targets (diffusers' SD3 / FLUX LoRA scripts) and guidance, as `alignkit train` uses.
        params = add_lora(loaded.denoiser, rank=4, alpha=4, target_modules=list(loaded.family.lora_targets))
        offload = spec.get("offload_t5", False)
        if offload:
            loaded.t5.to("cpu")
        sampler = FlowMatchSampler(loaded, spec["resolution"], T, loaded.family.guidance_scale,
                                   gradient_checkpointing=spec["ckpt"], checkpoint_vae=spec["ckpt"], offload_t5=offload)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    unet = loaded.denoiser
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    prompts = ["a photo of a cat"] * B
    reward = lambda images: images.mean(dim=(1, 2, 3))  # noqa: E731  model-free: the floor counts it
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    # last:K or drtune:K; the cut of each step drawn the way the trainer's _draw_batch does.
    policy = parse_truncation(spec.get("truncation") or f"last:{K}", T)
    trained = []

    def train_step():
        cut = policy.draw_cut(generator, T)
        traj = sampler.draw(generator, B, cut.k)
        traj.grad_steps, traj.stop_grad = cut.steps, cut.stop_grad
        trained.append(list(traj.trained(T)))
        with autocast:
            out = sampler.sample(unet, sampler.encode(prompts, device), traj)
            loss = -reward(out.images).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step()  # warm-up: allocator, kernels, lazy inits
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2 ** 20
    times = []
    with RSSPeak() as rss:
        for _ in range(spec["steps"]):
            start = time.perf_counter()
            train_step()
            sync()
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
        # Reserved: what the caching allocator holds (closer to what the card must have free).
        memory = {"peak_mb": peak, "peak_delta_mb": peak - base,
                  "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2 ** 20}
    else:
        memory = {"peak_mb": rss.peak, "peak_delta_mb": rss.peak - rss.base}

    # The compute floor, timed here with the same modules and batch.
    cond = sampler.encode(prompts, device)
    latents = torch.randn(B, sampler.latent_channels, sampler.latent_size, sampler.latent_size, device=device)
    model_in = torch.cat([latents, latents]) if sampler.do_cfg else latents

    def denoise():
        if family != "sd":  # one transformer call (CFG batch for SD3) and an elementwise Euler update
            return sampler.step(unet, sampler.pack(latents), 0, cond)
        return unet(model_in, sampler.timesteps[0], encoder_hidden_states=cond.embeds, return_dict=False)[0]

    def unet_forward():
        with torch.no_grad(), autocast:
            denoise()

    def decode_reward():
        with torch.no_grad(), autocast:
            reward(sampler.decode(latents))

    def timed(fn, n):
        # The median of n single calls: on a shared CPU one stall in a mean of a few calls moved
        # a floor by 2x between two runs of the same configuration.
        fn()
        sync()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def unet_forward_backward():
        with autocast:
            out = denoise()
        out.float().square().mean().backward()

    def decode_reward_backward():
        x = latents.detach().requires_grad_(True)
        with autocast:
            value = reward(sampler.decode(x)).sum()
        value.backward()

    def encode():
        with torch.no_grad(), autocast:
            sampler.encode(prompts, device)

    t_unet, t_decode, t_encode = timed(unet_forward, 9), timed(decode_reward, 5), timed(encode, 5)
    t_unet_fb, t_decode_fb = timed(unet_forward_backward, 5), timed(decode_reward_backward, 5)
    optimizer.zero_grad(set_to_none=True)
    # Forwards the step implies: T sampling forwards (K of them with autograd: the last K, or
    # DRTune's spread K), the backward of those K (~2 forwards each), and one recompute each when
    # checkpointing. DRTune's linear path through the later updates (elementwise) is not counted.
    # With checkpointing the decode is checkpointed too (the trainer's default): one more decode.
    unet_forwards = T + (3 if spec["ckpt"] else 2) * K
    # Every step also encodes its prompts once (frozen text encoders, no graph): on the tiny
    # CPU configs the text encoders cost as much as a few denoiser calls, so the floor counts them.
    floor = unet_forwards * t_unet + (4 if spec["ckpt"] else 3) * t_decode + t_encode
    # The same work with backward passes timed rather than assumed to cost two forwards:
    # T - K plain forwards, K forward+backward (+ K forwards recomputed), decode+reward fwd+bwd.
    measured = ((T - K) * t_unet + K * t_unet_fb + (K * t_unet + t_decode if spec["ckpt"] else 0.0) + t_decode_fb
                + t_encode)
    step = sorted(times)[len(times) // 2]
    return {**spec, **memory, "step_s": step, "floor_s": floor, "over_floor": step / floor,
            "floor_measured_s": measured, "over_measured_floor": step / measured,
            "unet_forward_s": t_unet, "unet_forward_backward_s": t_unet_fb, "decode_reward_s": t_decode,
            "decode_reward_backward_s": t_decode_fb, "encode_s": t_encode, "unet_forwards": unet_forwards,
            "trained_steps": trained[1:]}


# ---- the driver ------------------------------------------------------------------------------------

def parse_grid(text: str) -> list[tuple]:
    """"50,1,1;50,50,1" -> [(T, K, checkpointing), ...]: a subset, to fit a short device lease.
    A fourth field names the mode: "10,2,1,drtune" -> (10, 2, True, "drtune"); "last" (the
    default) gives the three-element entry."""
    grid = []
    for item in text.split(";"):
        fields = [f.strip() for f in item.split(",")]
        mode = fields.pop() if len(fields) == 4 else "last"
        try:
            t, k, c = fields
            entry = (int(t), int(k), c == "1")
        except ValueError:
            raise BenchError(f"--grid {text!r}: expected T,K,CKPT[,MODE] items separated by ';', "
                             f"e.g. 50,1,1;50,50,1 or 50,2,1,drtune") from None
        if mode not in MODES:
            raise BenchError(f"--grid {text!r}: MODE {mode!r} is not one of {', '.join(MODES)}")
        grid.append(entry if mode == "last" else (*entry, mode))
    if any(not 1 <= k <= t for t, k, *_ in grid):
        raise BenchError(f"--grid {text!r}: every K must be between 1 and its T")
    return grid


def grid_entry(entry) -> tuple[int, int, bool, str]:
    """(T, K, ckpt) or (T, K, ckpt, mode) -> (T, K, ckpt, mode); JSON gives lists."""
    T, K, ckpt, *rest = entry
    return int(T), int(K), bool(ckpt), rest[0] if rest else "last"


def build_parser() -> argparse.ArgumentParser:
    # --quick and --full run the same CPU grid (minutes): its figures need no larger size.
    p = harness.preset_parser(__doc__)
    p.add_argument("--gpu", action="store_true", help="SD 1.5 architecture at 512 px on CUDA, bf16 (with --family: "
                   "SD3.5-medium's at 1024 px, FLUX.1-dev's at 512 px)")
    p.add_argument("--family", choices=["sd", *FLOW_PLANS], default="sd",
                   help="sd: the DDIM sampler (default); sd3, flux: the flow-matching sampler")
    p.add_argument("--grid", type=parse_grid, help="configurations to run, e.g. '50,1,1;50,50,1' (T,K,checkpointing"
                   "[,drtune])")
    p.add_argument("--drtune", action="store_true", help="DRTune (drtune:2) at T = 10, 20, 50 with checkpointing: "
                   "peak memory flat in T (result memory_scaling_drtune[_gpu].json)")
    p.add_argument("--threads", type=int, help="OMP/MKL and torch threads of each configuration's process")
    p.add_argument("--timeout", type=int, default=300, help="seconds per configuration")
    p.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "alignkit-bench" / NAME)
    p.add_argument("--results", type=Path, default=harness.RESULTS, help="folder of the JSON result")
    p.add_argument("--name", help=f"result file name (default: {NAME}, {NAME}_gpu with --gpu, "
                   f"{NAME}_sd3[_gpu] with --family sd3)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    family = "" if args.family == "sd" else f"_{args.family}"
    args.name = args.name or f"{NAME}{family}{'_drtune' if args.drtune else ''}{'_gpu' if args.gpu else ''}"
    return args


def run_config(spec: dict, args) -> dict:
    """One configuration in a fresh process; its figures, or its error in one line."""
    label = (f"{spec['arch']}-{spec['resolution']}px-T{spec['T']}-K{spec['K']}-{'ckpt' if spec['ckpt'] else 'nockpt'}"
             f"{'-drtune' if spec.get('mode') == 'drtune' else ''}")
    child = harness.run_child([sys.executable, __file__, "--worker", json.dumps(spec)], args.logs / f"{label}.log",
                              harness.child_env(args.threads), args.timeout)
    lines = [line for line in child.log.read_text(errors="replace").splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        return {**spec, "error": ("timed out" if child.timed_out else child.tail(1) or "no output")[:200]}
    # The child's whole-process peak (model building included), beside the worker's own per-step peak.
    return {**json.loads(lines[-1]), "process_peak_rss_mb": child.peak_rss_mb}


def run(args) -> Result:
    if args.family == "sd":
        plan = dict(GPU_PLAN if args.gpu else CPU_PLAN)
    else:
        plan = dict(FLOW_PLANS[args.family][1 if args.gpu else 0])
    if args.drtune:
        plan["grid"] = DRTUNE_GRID
        if not args.gpu:
            plan.update(resolutions=plan["resolutions"][:1], steps=DRTUNE_CPU_STEPS)
    if args.grid:
        plan["grid"] = args.grid
    device = "cuda" if args.gpu else "cpu"
    con = harness.console(stderr=True)
    rows = []
    for res in plan["resolutions"]:
        for T, K, ckpt, mode in map(grid_entry, plan["grid"]):
            spec = dict(device=device, arch=plan["arch"], dtype=plan["dtype"], resolution=res, T=T, K=K,
                        ckpt=ckpt, batch=plan["batch"], steps=plan["steps"], threads=args.threads,
                        family=args.family, offload_t5=args.gpu and args.family != "sd", mode=mode,
                        truncation=f"{mode}:{K}")
            started = time.perf_counter()
            rows.append(run_config(spec, args))
            con.print(f"{res}px T={T} K={K} ckpt={ckpt} {mode}: {time.perf_counter() - started:.0f} s",
                      rows[-1].get("error", ""))
    checks = []
    for res, entry in summarize(rows).items():
        if "memory_K=T_over_K=1" in entry:
            checks.append(Check(f"{res} px: peak memory K=T / K=1 (checkpointing)", entry["memory_K=T_over_K=1"],
                                "{:.2f}x", TARGET_MEMORY))
        if "worst_over_floor" in entry:
            checks.append(Check(f"{res} px: slowest step time / compute floor", entry["worst_over_floor"], "{:.2f}x",
                                TARGET_FLOOR))
        for K, dr in entry.get("drtune", {}).items():
            lo, hi = dr["T"]
            checks.append(Check(f"{res} px: drtune:{K} peak T={hi} / T={lo} (ckpt)", dr["memory_ratio"], "{:.2f}x",
                                TARGET_DRTUNE))
            checks.append(Check(f"{res} px: drtune:{K} s/step T={hi} / T={lo}", dr["step_ratio"], "{:.2f}x"))
    settings = {"mode": device, "family": args.family, "plan": plan, "timeout_s": args.timeout, "threads": args.threads,
                "memory_measure": "device max allocated (torch.cuda)" if args.gpu else
                "peak RSS above the RSS before the timed steps, sampled every 5 ms in the child"}
    return Result(args.name, settings, rows, checks, extra={"summary": summarize(rows)})


def summarize(rows: list[dict]) -> dict:
    """The targets, per resolution: memory ratio K=T vs K=1 (checkpointed, last-K rows), worst
    step/floor (every row), and per DRTune K the memory ratio of its largest T to its smallest."""
    out = {}
    for res in sorted({r["resolution"] for r in rows}):
        mine = [r for r in rows if r["resolution"] == res and "error" not in r]
        ck = [r for r in mine if r["ckpt"] and r.get("mode", "last") == "last"]
        k1 = next((r for r in ck if r["K"] == 1), None)
        kt = max((r for r in ck if r["K"] == r["T"]), key=lambda r: r["T"], default=None)
        entry = {}
        if k1 and kt:
            entry["memory_K=T_over_K=1"] = kt["peak_mb"] / k1["peak_mb"]
            entry["memory_delta_K=T_over_K=1"] = kt["peak_delta_mb"] / max(k1["peak_delta_mb"], 1e-9)
        if mine:
            entry["worst_over_floor"] = max(r["over_floor"] for r in mine)
        dr = [r for r in mine if r["ckpt"] and r.get("mode") == "drtune"]
        for K in sorted({r["K"] for r in dr}):
            lo = min((r for r in dr if r["K"] == K), key=lambda r: r["T"])
            hi = max((r for r in dr if r["K"] == K), key=lambda r: r["T"])
            if hi["T"] > lo["T"]:
                entry.setdefault("drtune", {})[str(K)] = {
                    "T": [lo["T"], hi["T"]], "memory_ratio": hi["peak_mb"] / lo["peak_mb"],
                    "memory_delta_ratio": hi["peak_delta_mb"] / max(lo["peak_delta_mb"], 1e-9),
                    "step_ratio": hi["step_s"] / lo["step_s"]}
        out[str(res)] = entry
    return out


def configs_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="memory and time per step, per configuration (batch with CFG)", title_justify="left")
    # Headers over two or three lines, so that the table fits 80 columns without cutting one.
    for column in ("px", "T", "K", "ckpt", "peak\nMB", "Δ peak\nMB", "s/step", "floor\ns", "step/\nfloor",
                   "step/\nmeasured\nfloor"):
        table.add_column(column, justify="right")
    for r in rows:
        # DRTune's K: "dr:K" (its K steps spread over T), so the table keeps its ten columns.
        k = f"dr:{r['K']}" if r.get("mode") == "drtune" else str(r["K"])
        head = [str(r["resolution"]), str(r["T"]), k, "yes" if r["ckpt"] else "no"]
        if "error" in r:
            table.add_row(*head, f"[red]{r['error'][:40]}[/]", "", "", "", "", "")
            continue
        table.add_row(*head, f"{r['peak_mb']:.0f}", f"{r['peak_delta_mb']:.0f}", f"{r['step_s']:.3f}",
                      f"{r['floor_s']:.3f}", f"{r['over_floor']:.2f}", f"{r['over_measured_floor']:.2f}")
    return table


def report(result: Result, con) -> None:
    con.print(configs_table(result.samples))
    plan = result.settings["plan"]
    con.print(harness.checks_table(f"memory and time vs T and K ({result.settings['mode']}, {plan['arch']}, "
                                   f"batch {plan['batch']})", result.checks))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    result = run(args)
    con = harness.console()
    report(result, con)
    con.print(f"wrote {harness.write_result(result, out_dir=args.results)}")
    return 0


if __name__ == "__main__":
    harness.entry_point(main)
