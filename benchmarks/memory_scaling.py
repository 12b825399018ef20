"""Peak memory and time per training step against T (denoising steps) and K (steps with
gradients), with and without per-step gradient checkpointing, against the compute floor.

    python benchmarks/memory_scaling.py          # CPU quick mode: a small SD pipeline, 32 and 64 px
    python benchmarks/memory_scaling.py --gpu    # SD 1.5's architecture (random weights), 512 px, bf16
    python benchmarks/memory_scaling.py --family sd3     # flow matching: tiny SD3 (CPU), 64 and 128 px
    python benchmarks/memory_scaling.py --family flux --gpu   # FLUX.1-dev's architecture, 512 px, bf16

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
the trainer does by default). Step time / floor near 1 means no overhead beyond the work.
Beside it, a measured floor times the backward passes instead of assuming them (T - K
forwards, K forward+backward, K recompute forwards and one decode when checkpointing,
decode+reward forward+backward): step time over it is the aligner's own overhead.

Results: a rich table, and JSON in benchmarks/results/memory_scaling.json (machine,
versions, date). Targets: peak memory at K=T=50 <= 1.25x that at K=1 (checkpointing on);
step time <= 1.15x the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# configs dir, image sides, weight dtype, batch, timed steps, and the grid of (T, K, checkpointing).
CPU_PLAN = dict(configs="small", resolutions=[32, 64], dtype="float32", batch=2, steps=1,
                grid=[(8, 1, True), (8, 8, True), (8, 1, False), (8, 8, False), (4, 4, True)])
GPU_PLAN = dict(configs="sd15", resolutions=[512], dtype="bfloat16", batch=1, steps=2,
                grid=[(50, 1, True), (50, 50, True), (50, 1, False), (50, 8, False)])
if os.environ.get("ALIGNKIT_BENCH_GRID"):  # e.g. "50,1,1;50,50,1": a subset, to fit a short device lease
    GPU_PLAN["grid"] = CPU_PLAN["grid"] = [tuple(int(v) for v in item.split(",")[:2]) + (item.split(",")[2] == "1",)
                                           for item in os.environ["ALIGNKIT_BENCH_GRID"].split(";")]
GUIDANCE = 7.5
# The flow families' plans (family -> CPU, GPU): tiny pipelines on CPU (a 4x4 latent at their
# native 32 px is too small to time, so 64 and 128 px: 16 and 64 tokens); on a GPU the issue's
# sizes, SD3.5-medium at 1024 px and FLUX.1-dev at 512 px, K=1 and K=T at T=28 (both pipelines'
# usual step count), batch 1.
FLOW_PLANS = {
    "sd3": (dict(configs="tiny-sd3", resolutions=[64, 128], dtype="float32", batch=2, steps=1,
                 grid=[(8, 1, True), (8, 8, True), (8, 1, False), (8, 8, False)]),
            dict(configs="sd35m", resolutions=[1024], dtype="bfloat16", batch=1, steps=2,
                 grid=[(28, 1, True), (28, 28, True)])),
    "flux": (dict(configs="tiny-flux", resolutions=[64, 128], dtype="float32", batch=2, steps=1,
                  grid=[(8, 1, True), (8, 8, True), (8, 1, False), (8, 8, False)]),
             dict(configs="flux1", resolutions=[512], dtype="bfloat16", batch=1, steps=2,
                  grid=[(28, 1, True), (28, 28, True)])),
}
FLOW_GUIDANCE = {"sd3": 7.0, "flux": 3.5}


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


def build_pipeline(configs: str, device, dtype):
    """A StableDiffusionPipeline from the JSON configs, random weights, built on `device`."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tiny_pipelines import write_clip_tokenizer

    folder = HERE / "configs" / configs
    read = lambda name: json.loads((folder / f"{name}.json").read_text())  # noqa: E731
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU directly: SD's 860M-parameter UNet is slow on CPU
        unet = UNet2DConditionModel.from_config(read("unet"))
        vae = AutoencoderKL.from_config(read("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**read("text_encoder")))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp), max_length=77))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler.from_config(read("scheduler")), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    for module in (unet, vae, text_encoder):  # cast in place (pipe.to(dtype) warns about fp32 modules)
        module.to(dtype)
    return pipe


def worker(spec: dict) -> dict:
    import torch

    from alignkit.aligner.lora import add_lora
    from alignkit.aligner.pipeline import prepare_pipeline
    from alignkit.aligner.sampler import DDIMSampler

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    T, K, B = spec["T"], spec["K"], spec["batch"]
    family = spec.get("family", "sd")
    if family == "sd":
        loaded = prepare_pipeline(build_pipeline(spec["configs"], device, dtype), spec["configs"])
        params = add_lora(loaded.pipe.unet, rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        sampler = DDIMSampler(loaded, spec["resolution"], T, GUIDANCE, eta=1.0, gradient_checkpointing=spec["ckpt"],
                              checkpoint_vae=spec["ckpt"])
    else:
        from alignkit.aligner.families import family_of
        from alignkit.aligner.flow_sampler import FlowMatchSampler
        from flow_pipelines import build_flow_pipeline

        loaded = prepare_pipeline(build_flow_pipeline(spec["configs"], device, dtype), spec["configs"])
        # The family's LoRA targets (diffusers' SD3 / FLUX LoRA scripts), as `alignkit train` uses.
        params = add_lora(loaded.denoiser, rank=4, alpha=4,
                          target_modules=list(family_of(type(loaded.pipe).__name__).lora_targets))
        offload = spec.get("offload_t5", False)
        if offload:
            loaded.t5.to("cpu")
        sampler = FlowMatchSampler(loaded, spec["resolution"], T, FLOW_GUIDANCE[family],
                                   gradient_checkpointing=spec["ckpt"], checkpoint_vae=spec["ckpt"], offload_t5=offload)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    unet = loaded.denoiser
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    prompts = ["a photo of a cat"] * B
    reward = lambda images: images.mean(dim=(1, 2, 3))  # noqa: E731  model-free: the floor counts it
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)

    def train_step():
        with autocast:
            out = sampler.sample(unet, sampler.encode(prompts, device), sampler.draw(generator, B, K))
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
        fn()
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - start) / n

    def unet_forward_backward():
        with autocast:
            out = denoise()
        out.float().square().mean().backward()

    def decode_reward_backward():
        x = latents.detach().requires_grad_(True)
        with autocast:
            value = reward(sampler.decode(x)).sum()
        value.backward()

    t_unet, t_decode = timed(unet_forward, 4), timed(decode_reward, 2)
    t_unet_fb, t_decode_fb = timed(unet_forward_backward, 3), timed(decode_reward_backward, 2)
    optimizer.zero_grad(set_to_none=True)
    # Forwards the step implies: T sampling forwards (the last K of them with autograd), the
    # backward of those K (~2 forwards each), and one recompute each when checkpointing.
    # With checkpointing the decode is checkpointed too (the trainer's default): one more decode.
    unet_forwards = T + (3 if spec["ckpt"] else 2) * K
    floor = unet_forwards * t_unet + (4 if spec["ckpt"] else 3) * t_decode
    # The same work with backward passes timed rather than assumed to cost two forwards:
    # T - K plain forwards, K forward+backward (+ K forwards recomputed), decode+reward fwd+bwd.
    measured = (T - K) * t_unet + K * t_unet_fb + (K * t_unet + t_decode if spec["ckpt"] else 0.0) + t_decode_fb
    step = sorted(times)[len(times) // 2]
    return {**spec, **memory, "step_s": step, "floor_s": floor, "over_floor": step / floor,
            "floor_measured_s": measured, "over_measured_floor": step / measured,
            "unet_forward_s": t_unet, "unet_forward_backward_s": t_unet_fb, "decode_reward_s": t_decode,
            "decode_reward_backward_s": t_decode_fb, "unet_forwards": unet_forwards}


# ---- the driver ------------------------------------------------------------------------------------

def run_config(spec: dict, timeout: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**spec, "error": tail[:200]}
    return json.loads(lines[-1])


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def machine(gpu: bool) -> dict:
    # The load average says whether CPU timings were taken on a shared, busy machine.
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "loadavg_1_5_15": os.getloadavg()}
    if gpu:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summarize(rows: list[dict]) -> dict:
    """The two targets, per resolution: memory ratio K=T vs K=1 (checkpointed), worst step/floor."""
    out = {}
    for res in sorted({r["resolution"] for r in rows}):
        mine = [r for r in rows if r["resolution"] == res and "error" not in r]
        ck = [r for r in mine if r["ckpt"]]
        k1 = next((r for r in ck if r["K"] == 1), None)
        kt = max((r for r in ck if r["K"] == r["T"]), key=lambda r: r["T"], default=None)
        entry = {}
        if k1 and kt:
            entry["memory_K=T_over_K=1"] = kt["peak_mb"] / k1["peak_mb"]
            entry["memory_delta_K=T_over_K=1"] = kt["peak_delta_mb"] / max(k1["peak_delta_mb"], 1e-9)
        if mine:
            entry["worst_over_floor"] = max(r["over_floor"] for r in mine)
        out[str(res)] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="SD 1.5 architecture at 512 px on CUDA, bf16")
    parser.add_argument("--family", choices=["sd", "sd3", "flux"], default="sd",
                        help="sd: the DDIM sampler (default); sd3, flux: the flow-matching sampler")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results" / "memory_scaling.json"))
    parser.add_argument("--timeout", type=int, default=300, help="seconds per configuration")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    from rich.console import Console
    from rich.table import Table

    plan = GPU_PLAN if args.gpu else CPU_PLAN
    if args.family != "sd":
        plan = dict(FLOW_PLANS[args.family][1 if args.gpu else 0])
        if os.environ.get("ALIGNKIT_BENCH_GRID"):
            plan["grid"] = GPU_PLAN["grid"]  # the subset parsed above
    device = "cuda" if args.gpu else "cpu"
    rows = []
    console = Console()
    for res in plan["resolutions"]:
        for T, K, ckpt in plan["grid"]:
            spec = dict(device=device, configs=plan["configs"], dtype=plan["dtype"], resolution=res, T=T, K=K,
                        ckpt=ckpt, batch=plan["batch"], steps=plan["steps"], family=args.family,
                        offload_t5=args.gpu and args.family != "sd")
            started = time.perf_counter()
            rows.append(run_config(spec, args.timeout))
            console.log(f"{res}px T={T} K={K} ckpt={ckpt}: {time.perf_counter() - started:.0f} s",
                        rows[-1].get("error", ""))

    table = Table(title=f"memory and time per step ({device}, {plan['configs']}, batch {plan['batch']}, CFG)")
    for column in ("px", "T", "K", "ckpt", "peak MB", "Δ peak MB", "s/step", "floor s", "step/floor",
                   "step/measured floor"):
        table.add_column(column, justify="right")
    for r in rows:
        if "error" in r:
            table.add_row(str(r["resolution"]), str(r["T"]), str(r["K"]), "yes" if r["ckpt"] else "no",
                          f"[red]{r['error'][:40]}[/]", "", "", "", "", "")
            continue
        table.add_row(str(r["resolution"]), str(r["T"]), str(r["K"]), "yes" if r["ckpt"] else "no",
                      f"{r['peak_mb']:.0f}", f"{r['peak_delta_mb']:.0f}", f"{r['step_s']:.3f}",
                      f"{r['floor_s']:.3f}", f"{r['over_floor']:.2f}", f"{r['over_measured_floor']:.2f}")
    console.print(table)
    summary = summarize(rows)
    console.print_json(data=summary)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mode": device,
              "machine": machine(args.gpu), "versions": versions(), "plan": plan, "rows": rows, "summary": summary}
    existing = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    # CPU and GPU results (and each family's) live side by side in one file.
    existing[device if args.family == "sd" else f"{device}-{args.family}"] = result
    Path(args.out).write_text(json.dumps(existing, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
