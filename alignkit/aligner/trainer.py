"""The training loop: sample with gradients, score, step the LoRA; through HF accelerate.

Per optimizer step: draw one K (the truncation) and, for each accumulated micro-batch, the
global batch's prompts and noises from one checkpointed CPU generator (every process draws
the same numbers and keeps its own slice, so a run's data do not depend on the process count);
sample through the module `accelerator.prepare` returned (so DDP synchronises gradients);
score with the frozen reward (kept out of `prepare`); loss = -mean reward; AdamW on LoRA.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.aligner import checkpoints
from alignkit.aligner.config import TrainConfig, changed_fields, save_config
from alignkit.aligner.lora import LORA_FILE, add_lora, load_lora, save_lora
from alignkit.aligner.pipeline import check_resolution, load_pipeline, resolve_model
from alignkit.aligner.sampler import DDIMSampler
from alignkit.aligner.truncation import TruncationPolicy, parse_truncation
from alignkit.errors import AlignkitError

logger = logging.getLogger(__name__)

MIXED_PRECISION = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "all": "all", "none": None}
# What marks a folder as holding a run (and so protects it from being written over).
RUN_MARKERS = ("config.yaml", "metrics.jsonl", LORA_FILE)


@dataclass
class Plan:
    """Everything checked before anything loads or touches the disk."""

    policy: TruncationPolicy
    prompts: list[str]
    model_source: str
    resume: Path | None


class TrainState:
    """The loop's own counters, checkpointed with accelerate's `register_for_checkpointing`."""

    def __init__(self, seed: int):
        # Optimizer steps done.
        self.step = 0
        # Draws the truncation K, the prompts and every noise; the same on every process.
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


# ---- checks before any work ------------------------------------------------------------------

def holds_run(output_dir: Path) -> bool:
    return any((output_dir / m).exists() for m in RUN_MARKERS) or bool(checkpoints.checkpoint_dirs(output_dir))


def plan_run(config: TrainConfig) -> Plan:
    """Validate the config cheaply, in the order a user would fix things; raise one line each."""
    from alignkit.prompts import load_prompt_set, single_prompt
    from alignkit.rewards import get_entry, parse_spec

    for name, value, low in (("num_inference_steps", config.num_inference_steps, 1),
                             ("train_batch_size", config.train_batch_size, 1),
                             ("gradient_accumulation_steps", config.gradient_accumulation_steps, 1),
                             ("max_train_steps", config.max_train_steps, 1), ("rank", config.rank, 1)):
        if value < low:
            raise AlignkitError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if config.mixed_precision not in MIXED_PRECISION:
        raise AlignkitError(f"--mixed-precision '{config.mixed_precision}' is not one of {', '.join(MIXED_PRECISION)}")
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise AlignkitError("--mixed-precision fp16 needs a CUDA device; use bf16 or no on CPU")
    if config.report_to not in TRACKERS:
        raise AlignkitError(f"--report-to '{config.report_to}' is not one of {', '.join(TRACKERS)}")
    if config.report_to in ("wandb", "all"):
        from alignkit.errors import require

        require("wandb", extra="wandb", purpose="--report-to wandb")
    policy = parse_truncation(config.truncation, config.num_inference_steps)
    for name, _ in parse_spec(config.reward):
        if not get_entry(name).differentiable:
            raise AlignkitError(f"reward '{name}' is not differentiable, so it cannot be backpropagated through; "
                                "pick a differentiable reward (see `alignkit rewards`)")
    prompts = (single_prompt(config.prompt) if config.prompt is not None else load_prompt_set(config.prompts)).train
    if not prompts:
        raise AlignkitError(f"prompts: '{config.prompts}' has no training prompts")

    output_dir = Path(config.output_dir)
    resume = None
    if config.resume_from_checkpoint:
        resume = checkpoints.resolve_resume(config.resume_from_checkpoint, output_dir)
        saved = output_dir / "config.yaml"
        if saved.is_file():
            import yaml

            changed = changed_fields(yaml.safe_load(saved.read_text()) or {}, config)
            if changed:
                raise AlignkitError(f"cannot resume {output_dir}: {', '.join(changed)} differ from its config.yaml; "
                                    "resume with the same settings or start a new --output-dir")
    elif holds_run(output_dir) and not config.overwrite:
        raise AlignkitError(f"--output-dir {output_dir} already holds a run; pass --resume-from-checkpoint latest "
                            "to continue it, --overwrite to replace it, or another --output-dir")
    return Plan(policy, prompts, resolve_model(config.pretrained_model_name_or_path), resume)


def clear_run(output_dir: Path) -> None:
    """--overwrite: remove the previous run's files, and only those."""
    for name in (*RUN_MARKERS, "logs", "samples"):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for path in [*checkpoints.checkpoint_dirs(output_dir), *output_dir.glob("checkpoint-*.tmp")]:
        shutil.rmtree(path)


# ---- measuring --------------------------------------------------------------------------------

def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def tracker_config(config: TrainConfig) -> dict:
    """Trackers (tensorboard hparams) take scalars and strings only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.to_dict().items()}


# ---- the loop ----------------------------------------------------------------------------------

def train(config: TrainConfig) -> Path:
    """Run `config`; return the output directory (see docs/training.md for its contract)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    from alignkit.rewards import load_reward

    plan = plan_run(config)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=TRACKERS[config.report_to],
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    device = accelerator.device
    weight_dtype = MIXED_PRECISION[config.mixed_precision]
    # Seeds the LoRA init (rank 0's is broadcast by DDP); the data come from TrainState.generator.
    set_seed(config.seed, device_specific=True)

    loaded = load_pipeline(plan.model_source, config.revision, dtype=weight_dtype)
    resolution = config.resolution or loaded.native_resolution
    check_resolution(resolution, loaded)
    pipe = loaded.pipe
    reward = load_reward(config.reward, device=device, dtype=weight_dtype, **config.reward_options)
    if not reward.differentiable:
        raise AlignkitError(f"reward '{config.reward}' is not differentiable; pick one that is (see `alignkit rewards`)")

    # Everything validated and loaded: only now is the output folder written to.
    if accelerator.is_main_process:
        if config.overwrite and plan.resume is None:
            clear_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
    accelerator.wait_for_everyone()

    pipe.to(device)
    unet = pipe.unet
    params = add_lora(unet, config.rank, config.lora_alpha, config.lora_target_modules)
    if config.mixed_precision == "fp16" and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(torch.float32)  # SD/SDXL VAEs overflow in fp16 (diffusers' force_upcast)
    sampler = DDIMSampler(loaded, resolution, config.num_inference_steps, config.guidance_scale, config.eta,
                          config.gradient_checkpointing, config.checkpoint_vae, config.negative_prompt)

    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    # A prepared scheduler steps once per process per optimizer step: scale its horizon to match.
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer,
                                 num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=config.max_train_steps * accelerator.num_processes)
    # The UNet goes through prepare (DDP), the reward never does: it is frozen and never synchronised.
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    # Compiled once for the no-grad steps only; it shares the module's weights, so each LoRA
    # update is seen without a recompile, and the graph-building steps stay eager.
    nograd_unet = torch.compile(accelerator.unwrap_model(unet)) if config.compile_unet else None
    state = TrainState(config.seed)
    accelerator.register_for_checkpointing(state)
    _register_lora_hooks(accelerator, type(pipe))

    if plan.resume is not None:
        accelerator.load_state(str(plan.resume))
        logger.info("resumed from %s at step %d", plan.resume, state.step)
    if accelerator.is_main_process:
        _truncate_metrics(output_dir / "metrics.jsonl", state.step)
    if TRACKERS[config.report_to]:
        accelerator.init_trackers("alignkit", config=tracker_config(config))

    B, world = config.train_batch_size, accelerator.num_processes
    lo, hi = accelerator.process_index * B, (accelerator.process_index + 1) * B
    progress = _Progress(config.max_train_steps, state.step, enabled=accelerator.is_main_process)
    unet.train()
    with progress:
        while state.step < config.max_train_steps:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            # One K per trajectory (optimizer step), the same on every process.
            k = plan.policy.draw(state.generator, config.num_inference_steps)
            rewards, parts = [], defaultdict(list)
            for _ in range(config.gradient_accumulation_steps):
                picks = torch.randint(len(plan.prompts), (B * world,), generator=state.generator).tolist()
                traj = sampler.draw(state.generator, B * world, k, plan.policy.renoise).slice(lo, hi)
                prompts = [plan.prompts[i] for i in picks[lo:hi]]
                with accelerator.accumulate(unet):
                    with accelerator.autocast():
                        out = sampler.sample(unet, sampler.encode(prompts, device), traj, nograd_unet)
                        total, part = reward.with_parts(out.images, prompts * out.repeats)
                    loss = -total.float().mean()
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                rewards.append(accelerator.gather(total.detach().float()))
                for name, value in part.items():
                    parts[name].append(accelerator.gather(value.detach().float()))
            state.step += 1
            all_rewards = torch.cat(rewards)
            record = {"step": state.step, "reward": all_rewards.mean().item(),
                      "reward_std": all_rewards.std().item() if all_rewards.numel() > 1 else 0.0,
                      **{f"reward/{n}": torch.cat(v).mean().item() for n, v in parts.items()},
                      "loss": -all_rewards.mean().item(), "lr": lr_scheduler.get_last_lr()[0], "k": k,
                      "step_time": time.perf_counter() - start, "peak_mem_mb": peak_memory_mb(device)}
            if accelerator.is_main_process:
                with open(output_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            accelerator.log(record, step=state.step)
            progress.update(record)
            if config.sample_every and state.step % config.sample_every == 0 and TRACKERS[config.report_to]:
                _log_samples(accelerator, accelerator.unwrap_model(unet), sampler, plan.prompts, config, state.step)
            if config.checkpointing_steps and state.step % config.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, state.step, config.checkpoints_total_limit)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_lora(type(pipe), accelerator.unwrap_model(unet), output_dir)
    accelerator.end_training()
    return output_dir


def save_checkpoint(accelerator, output_dir: Path, step: int, limit: int | None) -> Path:
    """accelerate state + LoRA into checkpoint-<step>.tmp, then renamed into place (atomic)."""
    tmp = checkpoints.temporary_path(output_dir, step)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by a run killed mid-write
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its RNG state
    if accelerator.is_main_process:
        checkpoints.publish(tmp, limit)
    accelerator.wait_for_everyone()
    return output_dir / f"checkpoint-{step}"


def _register_lora_hooks(accelerator, pipeline_cls) -> None:
    """Checkpoints hold the LoRA file instead of accelerate's copy of the whole UNet."""

    def save_hook(models, weights, directory):
        if accelerator.is_main_process:
            for model in models:
                save_lora(pipeline_cls, accelerator.unwrap_model(model), directory)
        # Emptying `weights` stops accelerate from writing the full UNet state dict.
        while weights:
            weights.pop()

    def load_hook(models, directory):
        while models:
            load_lora(accelerator.unwrap_model(models.pop()), directory)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop the lines of steps after the checkpoint (they will be redone)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


@torch.no_grad()
def _log_samples(accelerator, unet, sampler: DDIMSampler, prompts: list[str], config: TrainConfig, step: int) -> None:
    """Fixed prompts and seeds, every `sample_every` steps: a PNG grid and the trackers."""
    if not accelerator.is_main_process:
        return
    from alignkit.images import save_image

    chosen = [prompts[i % len(prompts)] for i in range(config.num_samples)]
    generator = torch.Generator().manual_seed(config.seed + 1_000_003)  # the same images every time
    traj = sampler.draw(generator, len(chosen), k=sampler.num_steps)
    with accelerator.autocast():
        images = sampler.sample(unet, sampler.encode(chosen, accelerator.device), traj).images.float().cpu()
    folder = Path(config.output_dir) / "samples"
    folder.mkdir(exist_ok=True)
    save_image(torch.cat(list(images), dim=2), folder / f"step-{step:06d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": images.numpy()}, step, dataformats="NCHW")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": list(images.permute(0, 2, 3, 1).numpy())}, step)


class _Progress:
    """A rich progress bar on the main process: step, reward, loss, s/step, memory."""

    def __init__(self, total: int, done: int, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled = enabled
        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), disable=not enabled)
        self.task = self.bar.add_task("train", total=total, completed=done, stats="")

    def update(self, r: dict) -> None:
        stats = (f"reward {r['reward']:.4g}  loss {r['loss']:.4g}  K {r['k']}  "
                 f"{r['step_time']:.2f} s/step  {r['peak_mem_mb']:.0f} MB")
        self.bar.update(self.task, completed=r["step"], stats=stats)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
