"""Pieces shared by the toy trainers (`train.py`'s VAE, CLIP, UNet and detector; `train_flow.py`):
the run's settings and budget, the optimiser step and loss log, the latent cache, EMA, and
the fp16-on-disk convention of the text encoders."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alignkit.toy import WEIGHTS_DIR, world


@dataclass
class RunConfig:
    # Which part to train: vae, clip, unet or detector.
    part: str
    # Wall-clock training budget in minutes (with `steps`: a cap; None: no cap).
    minutes: float | None
    # Seed of the model initialisation and of the scene stream.
    seed: int
    # Where the weights and the log go.
    output_dir: Path = WEIGHTS_DIR
    # Exact number of optimisation steps (epochs for the detector).
    steps: int | None = None
    # CPU threads for torch (the machines this runs on are shared).
    threads: int = 2
    # Where to train: "cpu" or "cuda". Scenes are rendered on the CPU either way.
    device: str = "cpu"
    # DataLoader processes rendering scenes (0: in the training process).
    workers: int = 0
    # Training batch size (default per part).
    batch_size: int | None = None
    # UNet only: also save and measure the EMA pipeline at these steps (a constant learning
    # rate makes the run up to step N identical to a run with `--steps N`).
    snapshots: tuple[int, ...] = ()
    # Fresh scenes drawn for the final quality figures.
    eval_samples: int = 512
    # Detector only: LoRA folders of aligned toy models whose samples it also learns from.
    loras: tuple[str, ...] = ()
    # Detector only: scale of the pipeline samples it learns from, and their sampling batch.
    sample_scale: float = 1.0
    sample_batch: int = 64
    # UNet only: scenes pre-encoded to latents and reused across steps.
    cache_size: int = 65536


class Budget:
    """Stop after `steps` steps or once `minutes` have passed, whichever comes first (either may
    be None); `fraction` of the budget spent drives the LR schedule."""

    def __init__(self, minutes: float | None, steps: int | None):
        if minutes is None and steps is None:
            raise ValueError("give a time budget, a number of steps, or both")
        self.seconds = minutes * 60 if minutes is not None else math.inf
        self.steps, self.start, self.step = steps, time.monotonic(), 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def fraction(self) -> float:
        if self.steps is not None:
            return self.step / self.steps
        return min(1.0, self.elapsed / self.seconds)

    def running(self) -> bool:
        return (self.steps is None or self.step < self.steps) and self.elapsed < self.seconds


def cosine_lr(optimizer, base: float, fraction: float, warmup: float = 0.03) -> None:
    """Linear warm-up, then cosine decay to 5% over the run's budget."""
    scale = fraction / warmup if fraction < warmup else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * fraction))
    for group in optimizer.param_groups:
        group["lr"] = base * scale


def warmup_lr(optimizer, base: float, step: int, warmup: int) -> None:
    """Linear warm-up over `warmup` steps, then constant: a run's state at step N does not depend
    on how long it will go on (snapshots equal shorter runs)."""
    for group in optimizer.param_groups:
        group["lr"] = base * min(1.0, (step + 1) / warmup)


def to_model_range(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 scenes (B,3,H,W) as the float [-1, 1] tensors the VAE reads, on `device`."""
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
    """One optimiser step of a toy trainer, the gradient norm clipped at 1 (all three models)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def record_step(budget: Budget, last: list[float], losses: list[float], value: float) -> None:
    """Record a step's loss and count it against the budget; a progress line every 30 s."""
    losses.append(value)
    budget.step += 1
    _log_every(budget, last, losses)


def _log_every(budget: Budget, last: list[float], losses: list[float], every_s: float = 30.0) -> None:
    if budget.elapsed - last[0] >= every_s:
        last[0] = budget.elapsed
        recent = float(np.mean(losses[-50:]))
        print(f"  step {budget.step:6d}  {budget.elapsed / 60:5.1f} min  loss {recent:.5f}", flush=True)


def loss_curve(losses: list[float], points: int = 8) -> list[list[float]]:
    """A few (step, mean loss) points for the log, smoothed over windows."""
    if not losses:
        return []
    edges = np.linspace(0, len(losses), points + 1).astype(int)
    return [[int(b), round(float(np.mean(losses[a:b])), 6)] for a, b in zip(edges, edges[1:]) if b > a]


@torch.no_grad()
def encode_latent_cache(vae, n: int, seed: int, workers: int, device, batch_size: int = 256):
    """Pre-encode n scenes: the posterior's mean and std (fp16), and their prompts.

    Encoding fresh batches through the VAE cost a quarter of each UNet step; the cache is
    made once and a fresh posterior sample is drawn from it at every step.
    """
    scenes = world.scene_stream(batch_size, seed, workers)
    means, stds, prompts = [], [], []
    for _ in range(math.ceil(n / batch_size)):
        images, batch_prompts = next(scenes)
        dist = vae.encode(to_model_range(images, device)).latent_dist
        means.append(dist.mean.half())
        stds.append(dist.std.half())
        prompts += batch_prompts
    return torch.cat(means)[:n], torch.cat(stds)[:n], prompts[:n]


class CaptionedLatents:
    """A latent cache (`encode_latent_cache`) and its prompts, tokenised once, drawn in batches."""

    def __init__(self, vae, tokenizer, cfg: RunConfig):
        device = cfg.device
        start = time.monotonic()
        self.means, self.stds, prompts = encode_latent_cache(vae, cfg.cache_size, cfg.seed + 1, cfg.workers, device)
        self.seconds = time.monotonic() - start
        print(f"  encoded {cfg.cache_size} scenes in {self.seconds:.0f} s", flush=True)
        ids_of = lambda texts: tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,  # noqa: E731
                                         truncation=True, return_tensors="pt").input_ids.to(device)
        self.empty = ids_of([""])
        distinct = sorted(set(prompts))
        self.table = ids_of(distinct)
        index = {p: i for i, p in enumerate(distinct)}
        self.prompt_ids = torch.tensor([index[p] for p in prompts], device=device)

    def batch(self, gen: torch.Generator, size: int, drop: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh posterior samples of `size` cached scenes (unscaled latents) and their token ids,
        a `drop` share of them the empty prompt (for classifier-free guidance). Randomness from `gen`."""
        device = self.means.device
        idx = torch.randint(0, len(self.means), (size,), generator=gen).to(device)
        eps = torch.randn(size, *self.means.shape[1:], generator=gen).to(device)
        latents = self.means[idx].float() + self.stds[idx].float() * eps
        dropped = (torch.rand(size, generator=gen) < drop).to(device)
        return latents, torch.where(dropped[:, None], self.empty, self.table[self.prompt_ids[idx]])


class EMA:
    """Exponential moving average of a module's weights, with the usual warm-up of the decay."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay = copy.deepcopy(module).eval().requires_grad_(False), decay

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        # One fused call over all tensors: on a GPU a per-tensor loop costs more than the step.
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in module.parameters()], 1 - decay)


def declare_float32(config_json: Path) -> None:
    """Mark a transformers config as float32 while its weights stay fp16 on disk.

    transformers ≥ 5 loads a model in the dtype its config names, diffusers loads in float32:
    an fp16 text encoder then meets a float32 UNet, and a plain `from_pretrained(path)` fails.
    """
    import json

    config = json.loads(config_json.read_text())
    config["dtype"] = "float32"
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def measure_pipeline(folder: Path, detector_dir: Path, device, n: int, seed: int) -> dict:
    """Reload a saved toy pipeline (SD or SD3 format) as a user would, and measure what it draws,
    read by the world's rules; with the toy detector, when one has been trained, its proxy count
    and agreement with the rules beside them (the `count` reward reads the model through it)."""
    from diffusers import DiffusionPipeline

    from alignkit.families import model_index
    from alignkit.hub import dropped_components
    from toy_build import detector
    from toy_build.quality import pipeline_quality

    # The flow toy has no T5: from_pretrained must be told so, as users load it.
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32,
                                             **dropped_components(model_index(str(folder)))).to(device)
    pipe.set_progress_bar_config(disable=True)
    net = detector.load_detector(detector_dir, device=device) if (detector_dir / "model.yaml").is_file() else None
    return pipeline_quality(pipe, n=n, seed=seed, net=net)
