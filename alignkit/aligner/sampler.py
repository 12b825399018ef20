"""A differentiable DDIM sampler over a diffusers SD / SDXL pipeline.

The pipeline's `__call__` runs under `no_grad`, so sampling is re-written here: prompts are
encoded once with the pipeline's own `encode_prompt`, classifier-free guidance is one UNet
call on the stacked [unconditional; conditional] batch, the DDIM update is written out from
`alphas_cumprod` (a pure function of its inputs, so a checkpointed step recomputes exactly),
and the VAE decode stays in the graph. The reward receives `(x / 2 + 0.5).clamp(0, 1)`.

All randomness (initial latents, DDIM eta noise, DRaFT-LV re-noising) is drawn up front
from one CPU `torch.Generator` into a `Trajectory`, so that a recomputed step sees the same
noise, and a run is reproducible across devices, process counts and resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from alignkit.aligner.pipeline import LoadedPipeline


@dataclass
class Conditioning:
    """Text conditioning of one batch, [unconditional; conditional] stacked when guidance is on."""

    embeds: Tensor
    # SDXL only: {"text_embeds": pooled embeddings, "time_ids": size conditioning}.
    added: dict | None = None


@dataclass
class Trajectory:
    """Everything random about a batch of trajectories, drawn before sampling."""

    # (B, C, h, w) initial latents x_T.
    latents: Tensor
    # (T, B, C, h, w) DDIM eta noise per step; None when eta = 0.
    step_noise: Tensor | None
    # (N, B, C, h, w) DRaFT-LV re-noising draws; None for the other policies.
    renoise: Tensor | None
    # Number of final steps that carry gradients.
    k: int
    # The indices of the steps that carry gradients, when they are not the last `k` (DRTune's
    # evenly spaced subset); None means steps T-k..T-1.
    grad_steps: tuple[int, ...] | None = None
    # DRTune: the denoiser's input is detached at every step, so the gradient reaches each trained
    # step's output through the update's linear path, never through a product of denoiser Jacobians.
    stop_grad: bool = False

    def slice(self, start: int, stop: int) -> "Trajectory":
        """This process's share of a global batch."""
        pick = lambda t, dim: None if t is None else t.narrow(dim, start, stop - start)  # noqa: E731
        return Trajectory(pick(self.latents, 0), pick(self.step_noise, 1), pick(self.renoise, 1), self.k,
                          self.grad_steps, self.stop_grad)

    def trained(self, num_steps: int) -> tuple[int, ...]:
        """The indices of the steps whose denoiser call carries gradients."""
        return self.grad_steps if self.grad_steps is not None else tuple(range(num_steps - self.k, num_steps))


@dataclass
class SampleOutput:
    # (R*B, 3, H, W) images in [0, 1]; R = DRaFT-LV copies (1 otherwise), copy-major.
    images: Tensor
    # How many copies of each prompt the images hold (repeat the prompts this many times).
    repeats: int
    # The final latents (R*B, C, h, w).
    latents: Tensor


class Sampler(Protocol):
    """What the trainer calls: a second sampler (flow matching) is a new class with these
    methods, in its own file, not branches in the training loop."""

    def draw(self, generator: torch.Generator, batch: int, k: int, renoise: int = 0) -> "Trajectory":
        """All the randomness of `batch` trajectories with `k` steps backpropagated, up front."""

    def encode(self, prompts: list[str], device: torch.device) -> "Conditioning":
        """The text conditioning of a batch of prompts."""

    def sample(self, unet, cond: "Conditioning", traj: "Trajectory", nograd_unet=None) -> "SampleOutput":
        """Images in [0,1] (differentiable through the last `k` steps) for a trajectory."""


class ChainSampler:
    """What both samplers share: the chain with its cut (no graph before it, per-step
    checkpointing after it) and the checkpointed decode, and the settings every sampler keeps.

    A step is two pure functions, so that every algorithm uses the same ones: `predict` (the
    denoiser call, guidance applied) and `distribution` (the step's Gaussian: its mean and its
    standard deviation, 0 for a deterministic step). Reward backprop samples `mean + std * noise`
    through them; a policy gradient scores recorded steps by their log-probability under them.
    A subclass gives `predict`, `distribution` and `_decode` (latents -> images in [0,1])."""

    def __init__(self, loaded: LoadedPipeline, resolution: int, num_inference_steps: int, guidance_scale: float,
                 gradient_checkpointing: bool, checkpoint_vae: bool, negative_prompt: str):
        self.pipe = loaded.pipe
        self.resolution = resolution
        # check_resolution keeps the side a multiple of the family's step, so nothing is rounded
        # away here (for FLUX the latent side is even, as its 2x2 packing needs).
        self.latent_size = resolution // loaded.vae_scale_factor
        self.num_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.gradient_checkpointing = gradient_checkpointing
        # The steps that draw noise (GRPO's --stochastic-steps trained); None = every step the
        # sampler's eta / noise level makes random. The others take their deterministic update.
        self.stochastic_steps: frozenset[int] | None = None
        # GRPO's --noise-patch P: each step's noise drawn on a grid P times coarser (`step_noise`),
        # and each step a Gaussian over the latents' P x P patch means (`policy_coords`).
        self.noise_patch = 1
        self.checkpoint_vae = checkpoint_vae
        self.negative_prompt = negative_prompt

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        """The shape of a batch's initial latents x_T as `draw` draws them (unpacked)."""
        return (batch, self.latent_channels, self.latent_size, self.latent_size)

    def draws_noise(self, i: int) -> bool:
        """Whether step i may be random: every step, or only those of `stochastic_steps`."""
        return self.stochastic_steps is None or i in self.stochastic_steps

    def step_noise(self, generator: torch.Generator, shape: tuple[int, ...]) -> Tensor:
        """(T, *shape) per-step noise, one standard normal value per latent pixel; with
        `noise_patch` P > 1, one per P x P patch (drawn on the coarse grid, then repeated), so the
        per-pixel std, and with it the sampler's marginals, are unchanged."""
        return patch_noise((self.num_steps, *shape), self.noise_patch, generator)

    def unpack(self, latents: Tensor) -> Tensor:
        """The chain's latents as (B, C, h, w) (the identity here; FLUX unpacks its tokens)."""
        return latents

    def policy_coords(self, latents: Tensor) -> Tensor:
        """The coordinates in which a step is Gaussian with std `distribution`'s: the latents,
        or with `noise_patch` P > 1 their P x P patch means (the mean of a patch of repeated
        noise is its one coarse value; the finer detail of x_{i+1} is the mean's, deterministic)."""
        if self.noise_patch == 1:
            return latents
        return F.avg_pool2d(self.unpack(latents), self.noise_patch)

    def predict(self, model, latents: Tensor, i: int, cond: Conditioning) -> Tensor:
        """The denoiser's output at step i (float32, guidance applied)."""
        raise NotImplementedError

    def distribution(self, model_out: Tensor, latents: Tensor, i: int) -> tuple[Tensor, float]:
        """Step i's Gaussian p(x_{i+1} | x_i): its mean and its standard deviation (a number)."""
        raise NotImplementedError

    def _decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, model_out: Tensor, latents: Tensor, i: int, noise: Tensor | None) -> Tensor:
        """x_{i+1} = mean + std * noise (the mean alone where there is no noise)."""
        mean, std = self.distribution(model_out, latents, i)
        return mean + std * noise if std > 0 and noise is not None else mean

    def step(self, model, latents: Tensor, i: int, cond: Conditioning, noise: Tensor | None = None) -> Tensor:
        """x_i -> x_{i+1}: one denoiser call and the update, a pure function of its inputs."""
        return self.update(self.predict(model, latents, i, cond), latents, i, noise)

    def _detached_step(self, model, latents, i, cond, noise=None):
        """DRTune's step: the denoiser sees x_i detached; the update keeps x_i's linear path."""
        return self.update(self.predict(model, latents.detach(), i, cond), latents, i, noise)

    def _grad_step(self, model, latents, i, cond, noise=None, stop_grad: bool = False):
        fn = self._detached_step if stop_grad else self.step
        if self.gradient_checkpointing:
            # Non-reentrant: works with inputs that do not require grad (the first step after
            # the cut) and with LoRA weights reached through the closure; recompute is exact
            # because the step is pure and its noise is an input.
            return checkpoint(fn, model, latents, i, cond, noise, use_reentrant=False)
        return fn(model, latents, i, cond, noise)

    def run_chain(self, model, latents: Tensor, cond: Conditioning, trained: tuple[int, ...], noise=lambda i: None,
                  nograd_model=None, stop_grad: bool = False) -> Tensor:
        """Steps 0..T-1 from `latents`; those in `trained` (`Trajectory.trained`) carry gradients.
        `nograd_model` (the same weights, e.g. compiled) runs the denoiser calls that carry no
        gradients, if given.

        With `stop_grad` (DRTune) the denoiser never sees a latent that requires grad: a trained
        step's output reaches the reward through the later updates' linear path alone, and an
        untrained step after the first trained one keeps that path with its denoiser call under
        `no_grad`, so memory grows with the number of trained steps, not with T."""
        fast = model if nograd_model is None else nograd_model  # (a compiled module has no truth value)
        trained = set(trained)
        for i in range(self.num_steps):
            if i in trained:
                latents = self._grad_step(model, latents, i, cond, noise(i), stop_grad)
            elif stop_grad and latents.requires_grad:
                with torch.no_grad():
                    out = self.predict(fast, latents, i, cond)
                latents = self.update(out, latents, i, noise(i))
            else:
                # Before the first trained step no graph is built at all.
                with torch.no_grad():
                    latents = self.step(fast, latents, i, cond, noise(i))
        return latents

    # ---- the chain's ends: what a loop that runs the steps itself (GRPO) starts and ends with ----
    def initial_latents(self, traj: Trajectory, device: torch.device) -> Tensor:
        """x_T as the chain carries it."""
        return traj.latents.to(device)

    def noise_at(self, traj: Trajectory, i: int, device: torch.device) -> Tensor | None:
        """Step i's recorded noise (None for a deterministic sampler)."""
        return None if traj.step_noise is None else traj.step_noise[i].to(device)

    def images(self, latents: Tensor) -> Tensor:
        """The chain's final latents -> images in [0,1]."""
        return self.decode(latents)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [0,1], in the graph (checkpointed if `checkpoint_vae`)."""
        if self.checkpoint_vae and torch.is_grad_enabled():
            return checkpoint(self._decode, latents, use_reentrant=False)
        return self._decode(latents)


class DDIMSampler(ChainSampler):
    """DDIM with eta, CFG in one batch, truncated backprop and per-step checkpointing."""

    def __init__(self, loaded: LoadedPipeline, resolution: int, num_inference_steps: int,
                 guidance_scale: float = 7.5, eta: float = 1.0, gradient_checkpointing: bool = True,
                 checkpoint_vae: bool = True, negative_prompt: str = ""):
        super().__init__(loaded, resolution, num_inference_steps, guidance_scale, gradient_checkpointing,
                         checkpoint_vae, negative_prompt)
        self.is_sdxl = loaded.is_sdxl
        self.eta = eta

        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(num_inference_steps)
        config = scheduler.config
        self.timesteps = [int(t) for t in scheduler.timesteps]
        self.prediction_type = config.prediction_type
        self.clip_range = float(config.clip_sample_range) if config.clip_sample else None
        # The same schedule arithmetic as DDIMScheduler.step: prev = t - train_steps // T, and
        # alpha_cumprod of a negative timestep is `final_alpha_cumprod` (1 or alphas_cumprod[0]).
        alphas = scheduler.alphas_cumprod.double()
        final = float(scheduler.final_alpha_cumprod)
        stride = config.num_train_timesteps // num_inference_steps
        self.alpha = [float(alphas[t]) for t in self.timesteps]
        self.alpha_prev = [float(alphas[t - stride]) if t - stride >= 0 else final for t in self.timesteps]

    # ---- randomness -------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.pipe.unet.config.in_channels

    def draw(self, generator: torch.Generator, batch: int, k: int, renoise: int = 0) -> Trajectory:
        """Draw a batch's initial latents and noises from a CPU generator (device-independent)."""
        shape = self.latent_shape(batch)
        latents = torch.randn(shape, generator=generator)
        step_noise = self.step_noise(generator, shape) if self.eta > 0 else None
        renoise_noise = torch.randn((renoise, *shape), generator=generator) if renoise else None
        return Trajectory(latents, step_noise, renoise_noise, k)

    # ---- conditioning ------------------------------------------------------------------------
    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device) -> Conditioning:
        """Text embeddings through the pipeline's own `encode_prompt` (frozen encoders)."""
        negative = [self.negative_prompt] * len(prompts)
        if not self.is_sdxl:
            cond, uncond = self.pipe.encode_prompt(prompts, device, 1, self.do_cfg, negative_prompt=negative)
            return Conditioning(torch.cat([uncond, cond]) if self.do_cfg else cond)
        cond, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=self.do_cfg,
            negative_prompt=negative)
        # SDXL's micro-conditioning: (original size, crop top-left, target size), no crop.
        size = (self.resolution, self.resolution)
        time_ids = torch.tensor([[*size, 0, 0, *size]], device=device, dtype=cond.dtype).repeat(len(prompts), 1)
        if self.do_cfg:
            cond, pooled = torch.cat([uncond, cond]), torch.cat([uncond_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        return Conditioning(cond, {"text_embeds": pooled, "time_ids": time_ids})

    # ---- one denoising step ------------------------------------------------------------------
    def predict(self, unet, latents: Tensor, i: int, cond: Conditioning) -> Tensor:
        """The UNet's output at t_i: one call on the [uncond; cond] batch, guidance applied."""
        # A tensor, not an int: a compiled UNet would specialise on (and recompile for) each int.
        t = torch.tensor(self.timesteps[i], device=latents.device)
        model_in = torch.cat([latents, latents]) if self.do_cfg else latents
        out = unet(model_in, t, encoder_hidden_states=cond.embeds, added_cond_kwargs=cond.added,
                   return_dict=False)[0].float()
        if self.do_cfg:
            uncond, text = out.chunk(2)
            out = uncond + self.guidance_scale * (text - uncond)
        return out

    def ddim_update(self, model_out: Tensor, latents: Tensor, i: int, noise: Tensor | None) -> Tensor:
        """DDIM (Song et al., eq. 12) as DDIMScheduler.step computes it, without its state."""
        return self.update(model_out, latents, i, noise)

    def distribution(self, model_out: Tensor, latents: Tensor, i: int) -> tuple[Tensor, float]:
        """DDIM's step as a Gaussian (Song et al., eq. 12; DDPO's policy): mean
        sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps and std = eta * sigma_t, as
        DDIMScheduler.step computes them, without its state."""
        a_t, a_prev = self.alpha[i], self.alpha_prev[i]
        b_t = 1.0 - a_t
        if self.prediction_type == "epsilon":
            eps = model_out
            x0 = (latents - b_t ** 0.5 * eps) / a_t ** 0.5
        elif self.prediction_type == "v_prediction":
            x0 = a_t ** 0.5 * latents - b_t ** 0.5 * model_out
            eps = a_t ** 0.5 * model_out + b_t ** 0.5 * latents
        else:  # "sample"
            x0 = model_out
            eps = (latents - a_t ** 0.5 * x0) / b_t ** 0.5
        if self.clip_range is not None:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = (self.eta if self.draws_noise(i) else 0.0) * variance ** 0.5
        return a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * eps, std

    # ---- decode -----------------------------------------------------------------------------
    def _decode(self, latents: Tensor) -> Tensor:
        vae = self.pipe.vae
        config = vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean, device=latents.device).view(1, -1, 1, 1)
            std = torch.tensor(config.latents_std, device=latents.device).view(1, -1, 1, 1)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        return vae_decode(vae, latents)

    # ---- the whole chain --------------------------------------------------------------------
    def sample(self, unet, cond: Conditioning, traj: Trajectory, nograd_unet=None) -> SampleOutput:
        """Run the T steps; only the trajectory's trained steps carry gradients (none before
        DRaFT-LV's step). `nograd_unet` (the same weights, e.g. compiled) runs the denoiser calls
        without gradients, if given."""
        device = cond.embeds.device
        latents = self.initial_latents(traj, device)
        noise = lambda i: self.noise_at(traj, i, device)  # noqa: E731
        draft = traj.renoise is not None
        trained = () if draft else traj.trained(self.num_steps)
        latents = self.run_chain(unet, latents, cond, trained, noise, nograd_unet, traj.stop_grad)
        if not draft:
            return SampleOutput(self.decode(latents), 1, latents)
        return self._draft_lv(unet, cond, latents.detach(), traj, noise(self.num_steps - 1))

    def _draft_lv(self, unet, cond: Conditioning, x0: Tensor, traj: Trajectory, last_noise) -> SampleOutput:
        """DRaFT-LV: re-noise the final sample to the last timestep N times, one step with grad."""
        n, last = traj.renoise.shape[0], self.num_steps - 1
        a_t = self.alpha[last]
        eps = traj.renoise.to(x0.device)
        # All N copies in one batch: (N, B, ...) -> (N*B, ...), copy-major.
        noisy = (a_t ** 0.5 * x0.unsqueeze(0) + (1 - a_t) ** 0.5 * eps).flatten(0, 1)
        conds = Conditioning(_repeat_cfg(cond.embeds, n, self.do_cfg),
                             None if cond.added is None else {k: _repeat_cfg(v, n, self.do_cfg) for k, v in cond.added.items()})
        step_noise = None if last_noise is None else last_noise.repeat(n, 1, 1, 1)
        latents = self._grad_step(unet, noisy, last, conds, step_noise)
        return SampleOutput(self.decode(latents), n, latents)


def patch_noise(shape: tuple[int, ...], patch: int, generator: torch.Generator) -> Tensor:
    """Standard normal noise of `shape`, one value per `patch` x `patch` block of its last two
    dimensions (drawn on the coarse grid, then repeated); patch 1 is plain `torch.randn`."""
    if patch == 1:
        return torch.randn(shape, generator=generator)
    *lead, h, w = shape
    coarse = torch.randn((*lead, h // patch, w // patch), generator=generator)
    return coarse.repeat_interleave(patch, -2).repeat_interleave(patch, -1)


def vae_decode(vae, latents: Tensor) -> Tensor:
    """The VAE's (unscaled) latents -> images in [0,1], for both samplers. The VAE runs in its own
    dtype (bf16/fp16 weights, or fp32 where fp16 needs the upcast), as diffusers' pipelines decode,
    not under the step's autocast: autocast would run its GroupNorms in fp32 and keep those
    activations, which at full resolution are most of a step's peak memory (and an fp16 autocast
    would undo the fp32 upcast)."""
    with torch.autocast(latents.device.type, enabled=False):
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def _repeat_cfg(tensor: Tensor, n: int, cfg: bool) -> Tensor:
    """Repeat a (2B, ...) [uncond; cond] or (B, ...) tensor n times, copy-major within each half."""
    if not cfg:
        return tensor.repeat(n, *[1] * (tensor.ndim - 1))
    uncond, cond = tensor.chunk(2)
    reps = [1] * (tensor.ndim - 1)
    return torch.cat([uncond.repeat(n, *reps), cond.repeat(n, *reps)])
