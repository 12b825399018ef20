"""The training loop: sample with gradients, score, step the LoRA; through HF accelerate.

Per optimizer step: draw one cut (the truncation) and, for each accumulated micro-batch, the
global batch's prompts and noises from one checkpointed CPU generator (every process draws
the same numbers and keeps its own slice, so a run's data do not depend on the process count);
sample through the module `accelerator.prepare` returned (so DDP synchronises gradients);
score with the frozen reward (kept out of `prepare`); loss = -mean reward; AdamW on LoRA.

`train` reads as plan (`plan_inputs`, then `plan_output` under the run folder's lock) ->
`load` (a `Session`) -> the algorithm's loop -> save the final LoRA; the run folder is written
only through `RunFolder` (alignkit/runfolder), and only once everything is loaded.

That loop is AlignProp's (`_loop`) unless `--algorithm` picks another from `ALGORITHMS`
(GRPO's lives in aligner/grpo.py): everything around the loop is shared.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from alignkit.aligner.config import RESUMABLE_CHANGES, TrainConfig, with_family
from alignkit.aligner.lora import add_lora, load_lora, save_lora
from alignkit.aligner.pipeline import ModelInfo, check_resolution, inspect_model, load_pipeline
from alignkit.aligner.sampler import DDIMSampler, Sampler
from alignkit.aligner.truncation import TruncationPolicy, parse_truncation
from alignkit.errors import AlignkitError, CheckpointError
from alignkit.rewards.base import check_prompts
from alignkit.runfolder import RunFolder, SavedState, checkpoint_name, checkpoints

logger = logging.getLogger(__name__)

MIXED_PRECISION = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "all": "all", "none": None}


@dataclass
class Plan:
    """Everything checked before anything loads or touches the disk."""

    # The run's config, resolved to the end (the model family's defaults filled in).
    config: TrainConfig
    # AlignProp's truncation; None for an algorithm that does not backpropagate through the chain.
    policy: TruncationPolicy | None
    prompts: list[str]
    # The model's family and where it loads from, read without loading weights.
    model: ModelInfo
    # The checkpoint to resume from, read and checked in full; None for a new run.
    resume: SavedState | None = None
    # metrics.jsonl lines to keep when resuming (those up to the checkpoint's step).
    metrics: list[str] | None = None
    # What the algorithm's own check read from the config (GRPO: the trained steps).
    extra: Any = None


class TrainState:
    """The loop's own counters; saved in each checkpoint as JSON and safetensors."""

    def __init__(self, seed: int):
        # Optimizer steps done (skipped non-finite ones included: they used their data).
        self.step = 0
        # Draws the truncation K, the prompts and every noise; the same on every process.
        self.generator = torch.Generator().manual_seed(seed)
        # Steps skipped because their loss or gradients were not finite: in a row, and in all.
        self.nonfinite = {"in_a_row": 0, "total": 0}

    def restore(self, saved: SavedState) -> None:
        self.step = saved.step
        self.generator.set_state(saved.generator)
        self.nonfinite = {"in_a_row": int(saved.nonfinite.get("in_a_row", 0)),
                          "total": int(saved.nonfinite.get("total", 0))}


@dataclass
class Session:
    """What `load` builds for a loop: the pipeline, its prepared denoiser (and the compiled copy
    for the steps without gradients), the LoRA parameters, optimizer and schedule, the sampler,
    the reward, and the loop's state (restored when resuming)."""

    pipe: object
    unet: torch.nn.Module
    nograd_unet: torch.nn.Module | None
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    sampler: Sampler
    reward: torch.nn.Module
    state: TrainState


class DivergenceError(AlignkitError):
    """Training stopped: too many optimizer steps in a row had a non-finite loss or gradients."""


@dataclass(frozen=True)
class Algorithm:
    """One `--algorithm`: its checks and its loop; the rest of a run is shared (`train`)."""

    # Whether the reward's gradient must reach the pixels (reward backprop) or only its value.
    needs_gradient: bool
    # Checks of its own settings before anything loads, the family's defaults filled in:
    # (config, ModelInfo) -> Plan.extra.
    check: Callable[[TrainConfig, ModelInfo], Any]
    # Checks that need the loaded session or the processes, before anything is written:
    # (plan, accelerator, session) -> None.
    ready: Callable[["Plan", Any, "Session"], None]
    # The loop, one `state.step` per iteration until max_train_steps: (plan, run, accelerator, session).
    loop: Callable[["Plan", RunFolder, Any, "Session"], None]
    # The flow sampler's noise level when --noise-level is unset: 0 is the ODE users sample with.
    flow_noise_level: float = 0.0


# `--algorithm` -> the module whose ALGORITHM runs it, imported when chosen.
ALGORITHMS = {"alignprop": "alignkit.aligner.trainer", "grpo": "alignkit.aligner.grpo"}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise AlignkitError(f"--algorithm '{name}' is not one of {', '.join(ALGORITHMS)}")
    return importlib.import_module(ALGORITHMS[name]).ALGORITHM


# ---- checks before any work ------------------------------------------------------------------

def plan_inputs(config: TrainConfig) -> Plan:
    """Validate the config and what it names, cheaply, in the order a user would fix things;
    one line each. Nothing here reads the output folder (that happens under its lock)."""
    from alignkit.prompts import load_prompt_set, single_prompt
    from alignkit.rewards import get_entry, parse_spec

    config.validate()  # `load_config` validated it; a config built in Python has not been
    algorithm = get_algorithm(config.algorithm)
    if config.mixed_precision not in MIXED_PRECISION:
        raise AlignkitError(f"--mixed-precision '{config.mixed_precision}' is not one of {', '.join(MIXED_PRECISION)}")
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise AlignkitError("--mixed-precision fp16 needs a CUDA device; use bf16 or no on CPU")
    if config.report_to not in TRACKERS:
        raise AlignkitError(f"--report-to '{config.report_to}' is not one of {', '.join(TRACKERS)}")
    if config.report_to in ("wandb", "all"):
        from alignkit.errors import require

        require("wandb", extra="wandb", purpose="--report-to wandb")
    policy = parse_truncation(config.truncation, config.num_inference_steps) if algorithm.needs_gradient else None
    for name, _ in parse_spec(config.reward):
        options = config.reward_options.get(name, {})
        if algorithm.needs_gradient and not get_entry(name).has_gradient(options):
            raise AlignkitError(not_differentiable(name, options if get_entry(name).has_gradient({}) else None))
    prompts = (single_prompt(config.prompt) if config.prompt is not None else load_prompt_set(config.prompts)).train
    if not prompts:
        raise AlignkitError(f"prompts: '{config.prompts}' has no training prompts")
    model = inspect_model(config.pretrained_model_name_or_path, config.revision)
    config = with_family(config, model, algorithm.flow_noise_level)
    return Plan(config, policy, prompts, model, extra=algorithm.check(config, model))


def not_differentiable(reward: str, options: dict | None = None) -> str:
    """The refusal of a reward without gradient; `options`: the reward options that removed a
    gradient its defaults have (the toy's default `count.objective=exact`), named in the line."""
    which = f"reward '{reward}'" if not options else \
        f"reward '{reward}' with {', '.join(f'{reward}.{k}={v}' for k, v in options.items())}"
    undo = "" if not options else f", set them back to {reward}'s defaults with --reward-option (they have one)"
    return (f"{which} is not differentiable, so it cannot be backpropagated through (--algorithm "
            f"alignprop); train on it with --algorithm grpo (a policy gradient: any reward){undo}, or pick a "
            "differentiable reward (see `alignkit rewards`)")


def plan_output(plan: Plan, run: RunFolder, process_index: int, with_scaler: bool) -> None:
    """Under the run folder's lock: may this run write there, and what does it resume from?

    The folder's files are the main process's to judge (it holds the lock and it alone
    writes them; another process could read them mid-write); every process reads its own
    RNG state from the checkpoint.
    """
    config, main = plan.config, process_index == 0
    if not config.resume_from_checkpoint:
        if main and run.holds_run() and not config.overwrite:
            raise AlignkitError(f"--output-dir {run.root} already holds a run; pass --resume-from-checkpoint latest "
                                "to continue it, --overwrite to replace it, or another --output-dir")
        return
    saved = run.read_checkpoint(run.resolve_resume(config.resume_from_checkpoint), process_index, with_scaler)
    run.check_resume(saved, config.to_dict(), RESUMABLE_CHANGES)
    plan.resume = saved
    plan.metrics = run.metrics_up_to(saved.step) if main else None


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
    """Run `config`; return the output directory (see docs/training.md for its contract).

    Order: validate the config and what it names; take the run folder's lock (main process);
    check the folder and read the checkpoint to resume from; load the model and the reward
    and check every prompt against it; only then write to the folder.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    plan = plan_inputs(config)
    config = plan.config
    run = RunFolder(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=TRACKERS[config.report_to],
        project_config=ProjectConfiguration(project_dir=str(run.root), logging_dir=str(run.logs_dir)),
    )
    # One writer per run folder: the main process holds the lock for the whole run.
    lock = run.lock() if accelerator.is_main_process else None
    try:
        if lock is not None:
            lock.acquire()
        plan_output(plan, run, accelerator.process_index, accelerator.scaler is not None)
        return _train(plan, run, accelerator)
    finally:
        # Removes the lock file, and the folder too if this run created it and wrote nothing.
        if lock is not None:
            lock.discard()


def _train(plan: Plan, run: RunFolder, accelerator) -> Path:
    """Under the lock, the folder checked: load, then write the folder, loop, save the LoRA."""
    config, algorithm = plan.config, get_algorithm(plan.config.algorithm)
    session = load(plan, accelerator)
    algorithm.ready(plan, accelerator, session)

    # Everything validated, loaded and restored: only now is the output folder written to.
    if accelerator.is_main_process:
        run.begin(config.to_dict(), clear=config.overwrite and plan.resume is None, metrics=plan.metrics)
    accelerator.wait_for_everyone()
    if TRACKERS[config.report_to]:
        accelerator.init_trackers("alignkit", config=tracker_config(config))
    try:
        algorithm.loop(plan, run, accelerator, session)
        # --- save: the final LoRA, in diffusers' format
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with run.writing("the final LoRA"):
                save_lora(type(session.pipe), accelerator.unwrap_model(session.unet), run.root)
    finally:
        accelerator.end_training()
    return run.root


def load(plan: Plan, accelerator) -> Session:
    """Load the pipeline and the reward, add the LoRA, build the optimizer and the sampler,
    prepare them with accelerate, and restore the checkpoint to resume from. Writes nothing."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    from alignkit.rewards import load_reward

    config, device = plan.config, accelerator.device
    weight_dtype = MIXED_PRECISION[config.mixed_precision]
    # Seeds the LoRA init (rank 0's is broadcast by DDP); the data come from TrainState.generator.
    set_seed(config.seed, device_specific=True)

    # --- load: the pipeline and the reward (plan_inputs validated the config and what it names)
    loaded = load_pipeline(config.pretrained_model_name_or_path, config.revision, dtype=weight_dtype, info=plan.model)
    resolution = config.resolution or loaded.native_resolution
    check_resolution(resolution, loaded)
    pipe = loaded.pipe
    reward = load_reward(config.reward, device=device, dtype=weight_dtype, **config.reward_options)
    if get_algorithm(config.algorithm).needs_gradient and not reward.differentiable:
        raise AlignkitError(not_differentiable(config.reward))
    # Every training prompt must be readable by the reward: found now, not at the step that draws it.
    check_prompts(reward, plan.prompts)

    # --- LoRA: only its matrices train (on the UNet or the transformer: the family's denoiser)
    loaded.to(device, keep_t5_on_cpu=config.offload_t5)
    unet = loaded.denoiser
    params = add_lora(unet, config.rank, config.lora_alpha, config.lora_target_modules)
    if config.mixed_precision == "fp16" and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(torch.float32)  # SD/SDXL VAEs overflow in fp16 (diffusers' force_upcast)
    sampler: Sampler = build_sampler(loaded, resolution, config)

    # --- optimizer and lr schedule
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    # A prepared scheduler steps once per process per optimizer step: scale its horizon to match.
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer,
                                 num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=config.max_train_steps * accelerator.num_processes)
    # --- prepare: the UNet goes through prepare (DDP), the reward never does: it is frozen and never synchronised.
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    # Compiled once for the no-grad steps only; it shares the module's weights, so each LoRA
    # update is seen without a recompile, and the graph-building steps stay eager.
    nograd_unet = torch.compile(accelerator.unwrap_model(unet)) if config.compile_unet else None
    # --- resume
    state = TrainState(config.seed)
    _register_lora_hooks(accelerator, type(pipe))
    if plan.resume is not None:
        _restore(accelerator, unet, optimizer, lr_scheduler, state, plan.resume)
        logger.info("resumed from %s at step %d", plan.resume.folder, state.step)
    return Session(pipe, unet, nograd_unet, params, optimizer, lr_scheduler, sampler, reward, state)


def _loop(plan: Plan, run: RunFolder, accelerator, session: Session) -> None:
    """One optimizer step per iteration until max_train_steps: sample, score, step; log the
    metrics, and save samples and checkpoints at their intervals."""
    config, device = plan.config, accelerator.device
    unet, nograd_unet, params, sampler, reward, state = (session.unet, session.nograd_unet, session.params,
                                                          session.sampler, session.reward, session.state)
    optimizer, lr_scheduler = session.optimizer, session.lr_scheduler
    B, num_processes = config.train_batch_size, accelerator.num_processes
    # This process's slice of the global batch (every process draws the same global batch).
    lo, hi = accelerator.process_index * B, (accelerator.process_index + 1) * B
    progress = ProgressBar(config.max_train_steps, state.step, enabled=accelerator.is_main_process)
    unet.train()
    with progress:
        while state.step < config.max_train_steps:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            # One cut (K, and DRTune's steps) per trajectory (optimizer step), the same on every process.
            cut = plan.policy.draw_cut(state.generator, config.num_inference_steps)
            k = cut.k
            rewards, parts = [], defaultdict(list)
            losses_finite = torch.ones((), dtype=torch.bool, device=device)
            skipped = False
            for _ in range(config.gradient_accumulation_steps):
                prompts, traj = _draw_batch(plan, sampler, state.generator, cut, B * num_processes, lo, hi)
                with accelerator.accumulate(unet):
                    with accelerator.autocast():
                        out = sampler.sample(unet, sampler.encode(prompts, device), traj, nograd_unet)
                        total, part = reward.with_parts(out.images, prompts * out.repeats)
                    loss = -total.float().mean()
                    accelerator.backward(loss)
                    losses_finite &= torch.isfinite(loss.detach())
                    if accelerator.sync_gradients:
                        # A non-finite loss or gradient would poison AdamW's moments and the
                        # LoRA for good: skip the update (every process agrees), count it.
                        skipped = not finite_update(accelerator, params, losses_finite)
                        if not skipped and config.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    if not skipped:
                        optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                rewards.append(accelerator.gather(total.detach().float()))
                for name, value in part.items():
                    parts[name].append(accelerator.gather(value.detach().float()))
            count_update(session, run, skipped)
            record = metrics_record(state, rewards, parts, lr_scheduler.get_last_lr()[0], k,
                                    time.perf_counter() - start, peak_memory_mb(device), skipped)
            if cut.steps is not None:  # DRTune: which of the evenly spaced steps trained
                record["first_trained_step"] = cut.steps[0]
            finish_step(plan, run, accelerator, session, record, progress)


def count_update(session: Session, run: RunFolder, skipped: bool) -> None:
    """After a step's update(s): count the step (and whether an update was skipped as
    non-finite); stop if a finite update left the LoRA non-finite."""
    state = session.state
    state.step += 1
    state.nonfinite["in_a_row"] = state.nonfinite["in_a_row"] + 1 if skipped else 0
    state.nonfinite["total"] += int(skipped)
    if not skipped and not all(torch.isfinite(p).all() for p in session.params):
        raise DivergenceError(f"training stopped at step {state.step}: the LoRA weights became non-finite "
                              f"after a finite update; {_kept(run)}; "
                              "lower --learning-rate")


def finish_step(plan: Plan, run: RunFolder, accelerator, session: Session, record: dict,
                progress: "ProgressBar") -> None:
    """The end of every step of every algorithm: its metrics.jsonl line, the trackers and the
    bar; the stop after too many non-finite steps in a row; sample images; the checkpoint."""
    config, state = plan.config, session.state
    if accelerator.is_main_process:
        run.append_metrics(record)
    accelerator.log(record, step=state.step)
    progress.update(record)
    if state.nonfinite["in_a_row"] >= config.max_nonfinite_steps:
        raise DivergenceError(
            f"training stopped at step {state.step}: {state.nonfinite['in_a_row']} steps in a row had a "
            f"non-finite loss or gradients (skipped, no update); {_kept(run)}; "
            "lower --learning-rate or check the reward")
    if config.sample_every and state.step % config.sample_every == 0 and TRACKERS[config.report_to]:
        with run.writing("sample images"):
            _log_samples(accelerator, accelerator.unwrap_model(session.unet), session.sampler, plan.prompts, config,
                         state.step, run.samples_dir)
    if config.checkpointing_steps and state.step % config.checkpointing_steps == 0:
        save_checkpoint(accelerator, run, state, config)


ALGORITHM = Algorithm(needs_gradient=True, check=lambda config, model: None,
                      ready=lambda plan, accelerator, session: None, loop=_loop)


def build_sampler(loaded, resolution: int, config: TrainConfig) -> Sampler:
    """The family's differentiable sampler: DDIM (SD, SDXL) or flow-matching Euler (SD3, FLUX)."""
    if loaded.family.sampler == "flow":
        from alignkit.aligner.flow_sampler import FlowMatchSampler

        return FlowMatchSampler(loaded, resolution, config.num_inference_steps, config.guidance_scale,
                                config.gradient_checkpointing, config.checkpoint_vae, config.negative_prompt,
                                offload_t5=config.offload_t5, noise_level=config.noise_level or 0.0)
    return DDIMSampler(loaded, resolution, config.num_inference_steps, config.guidance_scale, config.eta,
                       config.gradient_checkpointing, config.checkpoint_vae, config.negative_prompt)


def _draw_batch(plan: Plan, sampler: Sampler, generator: torch.Generator, cut, global_batch: int,
                lo: int, hi: int):
    """This process's prompts and trajectory slice of the global batch. Every process draws the
    whole global batch from the shared generator (prompts first, then noise), so the data do
    not depend on the number of processes."""
    picks = torch.randint(len(plan.prompts), (global_batch,), generator=generator).tolist()
    traj = sampler.draw(generator, global_batch, cut.k, plan.policy.renoise).slice(lo, hi)
    traj.grad_steps, traj.stop_grad = cut.steps, cut.stop_grad
    return [plan.prompts[i] for i in picks[lo:hi]], traj


def metrics_record(state: TrainState, rewards: list[torch.Tensor], parts: dict, lr: float, k: int,
                   step_time: float, peak_mem_mb: float, skipped: bool) -> dict:
    """One metrics.jsonl line: the step's gathered rewards (and each part), loss, lr, K, time, memory."""
    all_rewards = torch.cat(rewards)
    return {"step": state.step, "reward": all_rewards.mean().item(),
            "reward_std": all_rewards.std().item() if all_rewards.numel() > 1 else 0.0,
            **{f"reward/{n}": torch.cat(v).mean().item() for n, v in parts.items()},
            "loss": -all_rewards.mean().item(), "lr": lr, "k": k,
            "step_time": step_time, "peak_mem_mb": peak_mem_mb,
            "skipped": skipped, "nonfinite_steps": state.nonfinite["total"]}


def finite_update(accelerator, params: list[torch.nn.Parameter], losses_finite: torch.Tensor) -> bool:
    """Whether this step's losses and (synchronised) gradients are finite on every process."""
    ok = losses_finite.clone()
    for p in params:
        if p.grad is not None:
            ok &= torch.isfinite(p.grad).all()
    return bool(accelerator.gather(ok.float().reshape(1)).min() > 0)


def _kept(run: RunFolder) -> str:
    """What a stopped run leaves to the user: its last checkpoint, and no final LoRA."""
    last = run.latest_checkpoint()
    if last is None:
        return "no checkpoint was saved and no LoRA written"
    return f"the last checkpoint, {last}, holds finite weights and no final LoRA was written"


def _restore(accelerator, unet, optimizer, lr_scheduler, state: TrainState, saved: SavedState) -> None:
    """Apply a checkpoint read by `RunFolder.read_checkpoint`: LoRA, AdamW, schedule, RNGs, counters."""
    load_lora(accelerator.unwrap_model(unet), saved.folder)
    try:
        optimizer.load_state_dict(saved.optimizer)
        lr_scheduler.load_state_dict(saved.scheduler)
        if saved.scaler is not None:
            accelerator.scaler.load_state_dict(saved.scaler)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {saved.folder}: its optimizer state does not fit this run ({first})") from None
    checkpoints.restore_rng(saved.rng)
    # accelerate counts micro-batches to know when gradients sync; it saved that count here.
    if isinstance(saved.rng.get("step"), int):
        accelerator.step = saved.rng["step"]
    state.restore(saved)


def save_checkpoint(accelerator, run: RunFolder, state: TrainState, config: TrainConfig) -> Path:
    """accelerate state + LoRA + our train state into a checkpoint of `run` (written aside,
    then renamed into place: a disk that fails mid-write leaves the previous ones as they were)."""
    with run.new_checkpoint(state.step, accelerator.is_main_process) as tmp:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every process has written its RNG state
        if accelerator.is_main_process:
            run.publish_checkpoint(tmp, state.step, state.generator.get_state(), dict(state.nonfinite),
                                   config.to_dict(), config.checkpoints_total_limit)
    accelerator.wait_for_everyone()
    return run.root / checkpoint_name(state.step)


def _register_lora_hooks(accelerator, pipeline_cls) -> None:
    """Checkpoints hold the LoRA file instead of accelerate's copy of the whole UNet."""

    def save_hook(models, weights, directory):
        if accelerator.is_main_process:
            for model in models:
                save_lora(pipeline_cls, accelerator.unwrap_model(model), directory)
        # Emptying `weights` stops accelerate from writing the full UNet state dict.
        while weights:
            weights.pop()

    accelerator.register_save_state_pre_hook(save_hook)


@torch.no_grad()
def _log_samples(accelerator, unet, sampler: Sampler, prompts: list[str], config: TrainConfig, step: int,
                 folder: Path) -> None:
    """Fixed prompts and seeds, every `sample_every` steps: a PNG grid and the trackers."""
    if not accelerator.is_main_process:
        return
    from alignkit.images import save_image

    chosen = [prompts[i % len(prompts)] for i in range(config.num_samples)]
    generator = torch.Generator().manual_seed(config.seed + 1_000_003)  # the same images every time
    traj = sampler.draw(generator, len(chosen), k=sampler.num_steps)
    with accelerator.autocast():
        images = sampler.sample(unet, sampler.encode(chosen, accelerator.device), traj).images.float().cpu()
    folder.mkdir(exist_ok=True)
    save_image(torch.cat(list(images), dim=2), folder / f"step-{step:06d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": images.numpy()}, step, dataformats="NCHW")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": list(images.permute(0, 2, 3, 1).numpy())}, step)


class ProgressBar:
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
        if r["nonfinite_steps"]:  # skipped steps are in metrics.jsonl; the bar shows how many
            stats += f"  [yellow]{r['nonfinite_steps']} non-finite skipped[/]"
        self.bar.update(self.task, completed=r["step"], stats=stats)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
