"""Group-relative policy optimisation: `alignkit train --algorithm grpo`, for any reward.

AlignProp (trainer.py) needs the reward's gradient at the pixels. A policy gradient needs only
its value, so it trains on rewards that have none (an exact detector count, the true JPEG size,
a human label). It treats each denoising step as a Gaussian policy p(x_{i+1} | x_i) with a
known mean and standard deviation (the samplers' `distribution`): DDIM with eta > 0 for SD and
SDXL (DDPO, Black et al. 2023), Flow-GRPO's SDE for SD3 and FLUX (Liu et al. 2025,
`--noise-level`). One step of `max_train_steps`:

1. draw, from the run's one generator: N / G prompts, each repeated for a group of G images
   (N = train_batch_size x processes x accumulation), then each micro-batch's noise for all its
   processes, so that the data do not depend on the number of processes and a resumed run
   redraws exactly what an uninterrupted one draws (with `--same-initial-noise`, first one x_T
   per group, which its images share);
2. sample this process's share under `torch.inference_mode`, one micro-batch at a time, with
   classifier-free guidance as the pipelines apply it, recording for every trained step i its
   latents x_i and x_{i+1} and log p_old(x_{i+1} | x_i); with beta > 0 also the base model's
   mean there (the LoRA switched off: no second model in memory). With `--stochastic-steps
   trained` only the trained steps draw noise; the others take the deterministic step;
3. score the images; gather every process's rewards; advantage = (r - group mean) /
   (group std + 1e-4), each group whole even where its images sit on several processes;
4. `inner_epochs` optimizer updates over the samples: per micro-batch and trained step, the
   step's mean recomputed with gradients from the recorded x_i, its exact log-probability of the
   recorded x_{i+1}, PPO's clipped ratio (1 at the first update) and beta x the closed-form KL to
   the base model, backpropagated at once (memory of one step, whatever the number of trained
   steps; only the last backward of a micro-batch synchronises the processes).

Everything around the loop (checks, run folder, loading, LoRA, resume, metrics, checkpoints)
is the trainer's: its `Session`, `count_update` and `finish_step`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from alignkit.aligner.config import TrainConfig
from alignkit.aligner.lora import lora_disabled
from alignkit.aligner.trainer import (Algorithm, Plan, ProgressBar, Session, count_update, finish_step,
                                      finite_update, metrics_record, peak_memory_mb)
from alignkit.errors import AlignkitError
from alignkit.runfolder import RunFolder

# Flow-GRPO's noise level a of the flow SDE (its SD3.5 setting): GRPO's default on SD3 and FLUX,
# whose every step must be a Gaussian.
FLOW_GRPO_NOISE_LEVEL = 0.7
# Added to the group's std: a group whose rewards are all equal gets advantage 0, not 0/0
# (Flow-GRPO's value).
ADVANTAGE_EPS = 1e-4


# ---- the maths (pure functions, tested against torch.distributions) -----------------------------

def gaussian_log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """log N(x; mean, std^2 I) of each sample, summed over all but the batch dimension, in float64:
    the sum over a latent is ~-D/2 (thousands), and the ratio exp(new - old) needs its last digits."""
    d = (x.double() - mean.double()).flatten(1)
    return -(d * d).sum(1) / (2 * std * std) - d.shape[1] * (math.log(std) + 0.5 * math.log(2 * math.pi))


def gaussian_kl(mean: Tensor, ref_mean: Tensor, std: float) -> Tensor:
    """KL(N(mean, std^2 I) || N(ref_mean, std^2 I)) = ||mean - ref_mean||^2 / (2 std^2) per sample,
    summed over the latent (two Gaussians with the same variance)."""
    d = (mean.double() - ref_mean.double()).flatten(1)
    return (d * d).sum(1) / (2 * std * std)


def group_advantages(rewards: Tensor, group_size: int, eps: float = ADVANTAGE_EPS) -> Tensor:
    """(r - mean) / (std + eps) within consecutive groups of `group_size` (population std)."""
    groups = rewards.double().view(-1, group_size)
    mean, std = groups.mean(1, keepdim=True), groups.std(1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + eps)).flatten()


def clipped_surrogate(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor,
                      clip_range: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped objective as a loss per sample, and the probability ratio."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


def parse_grpo_steps(spec: str, num_steps: int) -> tuple[int, ...]:
    """'first:K' | 'first:FRACTION' | 'all' | '0,2,4' -> the trained step indices (0 = highest noise)."""
    text = str(spec).strip().lower()
    where = f"--grpo-steps '{spec}'"
    if text == "all":
        return tuple(range(num_steps))
    if text.startswith("first:"):
        try:
            value = float(text.removeprefix("first:"))
        except ValueError:
            value = math.nan
        if 0 < value < 1:
            return tuple(range(math.ceil(value * num_steps)))
        if value.is_integer() and 1 <= value <= num_steps:
            return tuple(range(int(value)))
        raise AlignkitError(f"{where}: first:K takes K from 1 to the {num_steps} steps of --num-inference-steps, "
                            "or a fraction between 0 and 1 of them")
    try:
        steps = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise AlignkitError(f"{where} is not first:K, first:FRACTION, all or a list of step indices "
                            "like 0,2,4") from None
    if steps[0] < 0 or steps[-1] >= num_steps:
        raise AlignkitError(f"{where}: step indices run from 0 to {num_steps - 1} (--num-inference-steps {num_steps})")
    return tuple(steps)


# ---- checks -------------------------------------------------------------------------------------

def _check(config: TrainConfig, model) -> tuple[int, ...]:
    """Before anything loads (the family's defaults filled in): the trained steps, and a
    sampler whose steps are Gaussians."""
    steps = parse_grpo_steps(config.grpo_steps, config.num_inference_steps)
    if model.family.sampler == "flow":
        if not config.noise_level:
            raise AlignkitError("--noise-level 0 is the deterministic ODE, whose steps have no log-probability; "
                                "GRPO needs the SDE sampler: pass a noise level above 0 (default 0.7)")
    elif not config.eta:
        raise AlignkitError("--eta 0 makes DDIM deterministic, so its steps have no log-probability; GRPO needs "
                            "a stochastic sampler: pass --eta above 0 (default 1)")
    return steps


def _ready(plan: Plan, accelerator, session: Session) -> None:
    """With the processes known and the sampler built: whole groups in every step's samples,
    and every trained step random (std > 0; DDIM's last is not when its schedule ends at alpha 1)."""
    config, num_processes = plan.config, accelerator.num_processes
    per_step = config.train_batch_size * num_processes * config.gradient_accumulation_steps
    if per_step % config.group_size:
        need = config.group_size // math.gcd(config.train_batch_size * num_processes, config.group_size)
        raise AlignkitError(
            f"--train-batch-size {config.train_batch_size} x {num_processes} process(es) x "
            f"--gradient-accumulation-steps {config.gradient_accumulation_steps} = {per_step} samples per step is not "
            f"a multiple of --group-size {config.group_size}; e.g. --gradient-accumulation-steps {need}")
    side, patch = session.sampler.latent_size, config.noise_patch
    if side % patch:
        raise AlignkitError(f"--noise-patch {patch} does not divide the {side}-pixel latent side of this model at "
                            f"--resolution {session.sampler.resolution}; pick a divisor of {side}")
    for i in plan.extra:
        _, std = session.sampler.distribution(torch.zeros(1), torch.zeros(1), i)
        if not std > 0:
            raise AlignkitError(f"--grpo-steps: step {i} of the {session.sampler.num_steps}-step sampler is deterministic "
                                "(its std is 0), so it has no log-probability; train earlier steps")


# ---- sampling with recorded steps ---------------------------------------------------------------

@dataclass
class Rollout:
    """One micro-batch sampled with its trained steps recorded (normal tensors, not inference ones)."""

    # The text conditioning, reused by the updates.
    cond: object
    # (K, B, ...) the latents entering and leaving each trained step, and the step's std.
    latents: list[Tensor]
    next_latents: list[Tensor]
    stds: list[float]
    # (K, B) log p(x_{i+1} | x_i) under the sampling weights, float64.
    log_probs: list[Tensor]
    # (K, B, ...) the base model's mean at each trained step; None without the KL penalty.
    ref_means: list[Tensor] | None
    # (B, 3, H, W) in [0, 1]; dropped once scored.
    images: Tensor | None


def sample_rollout(sampler, model, cond, traj, steps: tuple[int, ...], base_model=None,
                   autocast=contextlib.nullcontext) -> Rollout:
    """Run the chain mean + std * recorded noise with `model`, under inference mode, recording the
    trained `steps`; with `base_model` (the same denoiser) also its mean there with the LoRA off."""
    device = cond.embeds.device
    trained = set(steps)
    latents_in, latents_out, stds, log_probs, ref_means = [], [], [], [], []
    with torch.inference_mode():
        x = sampler.initial_latents(traj, device)
        for i in range(sampler.num_steps):
            with autocast():
                out = sampler.predict(model, x, i, cond)
            mean, std = sampler.distribution(out, x, i)
            noise = sampler.noise_at(traj, i, device)
            x_next = mean + std * noise if std > 0 and noise is not None else mean
            if i in trained:
                latents_in.append(x)
                latents_out.append(x_next)
                stds.append(std)
                log_probs.append(gaussian_log_prob(sampler.policy_coords(x_next), sampler.policy_coords(mean), std))
                if base_model is not None:
                    with lora_disabled(base_model), autocast():
                        ref_out = sampler.predict(base_model, x, i, cond)
                    ref_means.append(sampler.distribution(ref_out, x, i)[0])
            x = x_next
        images = sampler.images(x)
    # Inference tensors cannot enter autograd: clone them out of inference mode.
    normal = lambda ts: [t.clone() for t in ts]  # noqa: E731
    return Rollout(cond, normal(latents_in), normal(latents_out), stds, normal(log_probs),
                   normal(ref_means) if base_model is not None else None, images)


# ---- the loop -----------------------------------------------------------------------------------

def _loop(plan: Plan, run: RunFolder, accelerator, session: Session) -> None:
    config, state = plan.config, session.state
    unet, params, sampler, reward = session.unet, session.params, session.sampler, session.reward
    optimizer, lr_scheduler = session.optimizer, session.lr_scheduler
    steps: tuple[int, ...] = plan.extra
    device = accelerator.device
    G, B, A = config.group_size, config.train_batch_size, config.gradient_accumulation_steps
    P, rank = accelerator.num_processes, accelerator.process_index
    N, beta = B * P * A, config.kl_beta
    base = accelerator.unwrap_model(unet)
    fast = session.nograd_unet if session.nograd_unet is not None else base  # (a compiled module has no truth value)
    if config.stochastic_steps == "trained":
        sampler.stochastic_steps = frozenset(steps)
    sampler.noise_patch = config.noise_patch
    progress = ProgressBar(config.max_train_steps, state.step, enabled=accelerator.is_main_process)
    unet.train()
    with progress:
        while state.step < config.max_train_steps:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            # --- 1. the step's prompts, whole groups, the same on every process
            picks = torch.randint(len(plan.prompts), (N // G,), generator=state.generator)
            picks = picks.repeat_interleave(G).tolist()
            # One x_T per group (--same-initial-noise), drawn for all N // G groups of the step.
            starts = (torch.randn(sampler.latent_shape(N // G), generator=state.generator)
                      if config.same_initial_noise else None)

            # --- 2. sample this process's share, micro-batch a holding samples [a*B*P + rank*B, +B)
            rollouts, rewards, parts = [], [], {}
            for a in range(A):
                lo = a * B * P + rank * B
                prompts = [plan.prompts[i] for i in picks[lo:lo + B]]
                # Each micro-batch's noise is drawn for the global micro-batch (B x P, as AlignProp's
                # loop draws), so its memory is that of one micro-batch, not of the step's N samples.
                traj = sampler.draw(state.generator, B * P, len(steps)).slice(rank * B, rank * B + B)
                if starts is not None:
                    traj = replace(traj, latents=starts[torch.arange(lo, lo + B) // G])
                cond = sampler.encode(prompts, device)
                rollout = sample_rollout(sampler, fast, cond, traj, steps, base if beta > 0 else None,
                                         accelerator.autocast)
                with torch.inference_mode():
                    total, part = reward.with_parts(rollout.images, prompts)
                rollout.images = None  # scored: free them
                rollouts.append(rollout)
                # Gathered in process order, so the global batch comes back in its drawn order.
                rewards.append(accelerator.gather(total.float().clone()))
                for name, value in part.items():
                    parts.setdefault(name, []).append(accelerator.gather(value.float().clone()))
            all_rewards = torch.cat(rewards).cpu()
            _check_finite(plan, run, accelerator, all_rewards, picks, step=state.step + 1)

            # --- 3. advantages within each whole group; this process keeps its samples'
            advantages = group_advantages(all_rewards, G)
            zero_std = (all_rewards.view(-1, G).std(1, unbiased=False) == 0).float().mean().item()

            # --- 4. inner_epochs updates over the samples
            stats: dict[str, list[Tensor]] = {"loss": [], "kl": [], "clipped": [], "ratio_dev": []}
            skipped = False
            for epoch in range(config.inner_epochs):
                losses_finite = torch.ones((), dtype=torch.bool, device=device)
                for a, rollout in enumerate(rollouts):
                    lo = a * B * P + rank * B
                    adv = advantages[lo:lo + B].to(device)
                    with accelerator.accumulate(unet):
                        for n, i in enumerate(steps):
                            # Only the micro-batch's last backward may synchronise the processes.
                            sync = contextlib.nullcontext() if n == len(steps) - 1 else accelerator.no_sync(unet)
                            with sync:
                                loss, kl, ratio = _step_loss(config, accelerator, unet, sampler, rollout, n, i, adv)
                                accelerator.backward(loss)
                            losses_finite &= torch.isfinite(loss.detach())
                            stats["loss"].append(loss.detach().reshape(1) * len(steps))
                            stats["kl"].append(kl.detach())
                            stats["clipped"].append(((ratio.detach() - 1).abs() > config.clip_range).float())
                            if epoch == 0:
                                stats["ratio_dev"].append((ratio.detach() - 1).abs())
                        if accelerator.sync_gradients:
                            # As AlignProp's loop: a non-finite update is skipped on every process.
                            skipped_now = not finite_update(accelerator, params, losses_finite)
                            skipped = skipped or skipped_now
                            if not skipped_now and config.max_grad_norm > 0:
                                accelerator.clip_grad_norm_(params, config.max_grad_norm)
                        else:
                            skipped_now = False
                        if not skipped_now:
                            optimizer.step()
                        lr_scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
            count_update(session, run, skipped)

            # --- the step's line: AlignProp's fields, then GRPO's own
            record = metrics_record(state, [all_rewards], {k: [torch.cat(v).cpu()] for k, v in parts.items()},
                                    lr_scheduler.get_last_lr()[0], len(steps), time.perf_counter() - start,
                                    peak_memory_mb(device), skipped)
            gathered = {k: accelerator.gather(torch.cat(v).float()) for k, v in stats.items()}
            record.update({"loss": gathered["loss"].mean().item(), "kl": gathered["kl"].mean().item(),
                           "clip_fraction": gathered["clipped"].mean().item(),
                           "ratio_max_dev_first_epoch": gathered["ratio_dev"].max().item(),
                           "zero_std_groups": zero_std})
            finish_step(plan, run, accelerator, session, record, progress)


def _step_loss(config, accelerator, unet, sampler, rollout: Rollout, n: int, i: int,
               adv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Trained step i (the n-th recorded): its mean recomputed with gradients through the
    prepared module `unet`, the clipped surrogate + beta KL, averaged over samples and trained steps."""
    x, std = rollout.latents[n], rollout.stds[n]
    with accelerator.autocast():
        out = sampler.predict(unet, x, i, rollout.cond)
    mean, _ = sampler.distribution(out, x, i)
    coords = sampler.policy_coords
    log_prob = gaussian_log_prob(coords(rollout.next_latents[n]), coords(mean), std)
    surrogate, ratio = clipped_surrogate(log_prob, rollout.log_probs[n], adv.double(), config.clip_range)
    if rollout.ref_means is not None:
        # Over the whole latent, as with white noise, also with --noise-patch: the penalty keeps
        # the finer detail of the mean near the base model's too, where the policy gradient does
        # not reach (with the patch means alone the toy's colour fell 12 points at P = 4).
        kl = gaussian_kl(mean, rollout.ref_means[n], std)
    else:
        kl = torch.zeros_like(surrogate)
    loss = (surrogate + config.kl_beta * kl).mean() / len(rollout.latents)
    return loss.float(), kl, ratio


def _check_finite(plan: Plan, run: RunFolder, accelerator, rewards: Tensor, picks: list[int], step: int) -> None:
    """A non-finite reward would make its whole group's advantages NaN: stop with one line. At
    the first step of a new run, the config.yaml it wrote is taken back (nothing is left)."""
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if not bad:
        return
    if step == 1 and accelerator.is_main_process:
        run.config_file.unlink(missing_ok=True)
    prompt = plan.prompts[picks[bad[0]]]
    raise AlignkitError(f"reward '{plan.config.reward}' returned a non-finite score for {len(bad)} of {len(rewards)} "
                        f"samples at step {step} (e.g. prompt {prompt!r}); GRPO's group advantages need finite "
                        "rewards: fix the reward")


ALGORITHM = Algorithm(needs_gradient=False, check=_check, ready=_ready, loop=_loop,
                      flow_noise_level=FLOW_GRPO_NOISE_LEVEL)
