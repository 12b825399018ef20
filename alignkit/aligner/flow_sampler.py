"""A differentiable flow-matching (Euler) sampler over a diffusers SD3 / FLUX.1 pipeline.

The pipelines' `__call__` runs under `no_grad`, so sampling is re-written here, with the
structure of the DDIM sampler (aligner/sampler.py): prompts are encoded once per batch with
the pipeline's own `encode_prompt` (frozen encoders; T5 optionally kept on the CPU between
encodes), the sigmas are the scheduler's own (`retrieve_timesteps`, with FLUX's
resolution-dependent shift `mu = calculate_shift(image_seq_len)`), and each step is one
transformer call and the Euler update of a rectified flow,

    x_{sigma_next} = x_sigma + (sigma_next - sigma) * v(x_sigma, sigma)      (FlowMatchEulerDiscreteScheduler.step)

a pure function of its inputs, so a checkpointed step recomputes exactly. SD3 runs
classifier-free guidance as one batch [negative; prompt]; FLUX.1-dev takes the guidance
scale as an embedding instead (no second batch), schnell takes none. FLUX's latents are
packed 2x2 into tokens for the transformer and unpacked for the VAE, which decodes
`latents / scaling_factor + shift_factor`. The reward receives `(x / 2 + 0.5).clamp(0, 1)`.

By default the sampler is deterministic: its only randomness is the initial latents (and
DRaFT-LV's re-noising draws), drawn up front from one CPU generator into a `Trajectory`.
DRaFT-LV re-noises the final sample x0 to the last step's sigma, x = (1 - sigma) x0 + sigma eps.

With a noise level a > 0 each step is instead Flow-GRPO's SDE (Liu et al. 2025, eq. 9), which
has the ODE's marginals and makes every step a Gaussian with a known mean and variance (what a
policy gradient needs):

    std_t = a * sqrt(sigma / (1 - sigma))
    x_next = x + [v + std_t^2 / (2 sigma) * (x + (1 - sigma) v)] * dt + std_t * sqrt(|dt|) * eps

with dt = sigma_next - sigma < 0; at sigma = 1 (the first step) the denominator uses the next
sigma, as Flow-GRPO guards it. The per-step noise eps is drawn up front like DDIM's eta noise.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from alignkit.aligner.pipeline import LoadedPipeline
from alignkit.aligner.sampler import ChainSampler, Conditioning, SampleOutput, Trajectory, _repeat_cfg, vae_decode


def flow_schedule(loaded: LoadedPipeline, num_steps: int, latent_size: int) -> tuple[list[float], list[float]]:
    """(timesteps, sigmas) for `num_steps` Euler steps, computed exactly as the family's
    pipeline computes them (sigmas has T + 1 entries, ending at 0)."""
    scheduler = copy.deepcopy(loaded.pipe.scheduler)  # set_timesteps mutates; keep the pipeline's intact
    config = scheduler.config
    if loaded.family.name == "flux":
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        # FluxPipeline: linear sigmas 1 -> 1/T, shifted by mu, which grows with the token count.
        sigmas = None if config.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_steps, num_steps)
        tokens = (latent_size // 2) ** 2
        mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        retrieve_timesteps(scheduler, num_steps, "cpu", sigmas=sigmas, mu=mu)
    else:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (calculate_shift,
                                                                                        retrieve_timesteps)

        # StableDiffusion3Pipeline: the scheduler's own shift; mu only for dynamic shifting.
        kwargs = {}
        if config.get("use_dynamic_shifting"):
            patch = loaded.pipe.transformer.config.patch_size
            kwargs["mu"] = calculate_shift((latent_size // patch) ** 2, config.get("base_image_seq_len", 256),
                                           config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                           config.get("max_shift", 1.16))
        retrieve_timesteps(scheduler, num_steps, "cpu", **kwargs)
    return [float(t) for t in scheduler.timesteps], [float(s) for s in scheduler.sigmas]


class FlowMatchSampler(ChainSampler):
    """Euler on a flow-matching schedule, batched CFG (SD3) or a guidance embedding (FLUX),
    truncated backprop and per-step checkpointing; the trainer's `Sampler` interface."""

    def __init__(self, loaded: LoadedPipeline, resolution: int, num_inference_steps: int,
                 guidance_scale: float = 7.0, gradient_checkpointing: bool = True, checkpoint_vae: bool = True,
                 negative_prompt: str = "", offload_t5: bool = False, max_sequence_length: int | None = None,
                 noise_level: float = 0.0):
        super().__init__(loaded, resolution, num_inference_steps, guidance_scale, gradient_checkpointing,
                         checkpoint_vae, negative_prompt)
        # Flow-GRPO's noise level a: 0 is the ODE users sample with; > 0 the SDE (module docstring).
        self.noise_level = noise_level
        self.loaded = loaded
        self.is_flux = loaded.family.name == "flux"
        self.offload_t5 = offload_t5
        # The pipelines' defaults: SD3 256 T5 tokens, FLUX 512.
        self.max_sequence_length = max_sequence_length or (512 if self.is_flux else 256)
        self.timesteps, self.sigmas = flow_schedule(loaded, num_inference_steps, self.latent_size)
        # Each step's sigma_{i+1} - sigma_i in float32, as the scheduler subtracts its float32 sigmas.
        sig = torch.tensor(self.sigmas, dtype=torch.float32)
        self.dts = [float(d) for d in sig[1:] - sig[:-1]]
        # The SDE's std_t per step; sigma = 1 would divide by 0, so there 1 - sigma_1 is used.
        self.std_ts = [noise_level * (s / (1 - (self.sigmas[1] if s == 1 else s))) ** 0.5 if noise_level > 0 else 0.0
                       for s in self.sigmas[:-1]]
        # FLUX.1-dev embeds the guidance scale; schnell has no guidance embedding.
        self.guidance_embeds = self.is_flux and bool(self.pipe.transformer.config.guidance_embeds)

    # ---- randomness -------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        # The VAE's channels: noise is drawn unpacked, as both pipelines draw it (FLUX's
        # transformer then sees 2x2-packed tokens of 4x these channels).
        return self.pipe.vae.config.latent_channels

    def draw(self, generator: torch.Generator, batch: int, k: int, renoise: int = 0) -> Trajectory:
        """A batch's initial latents (unpacked, as the pipelines draw them), the SDE's per-step
        noise when the noise level is above 0 (none for the ODE), and DRaFT-LV draws."""
        shape = self.latent_shape(batch)
        latents = torch.randn(shape, generator=generator)
        step_noise = self.step_noise(generator, shape) if self.noise_level > 0 else None
        renoise_noise = torch.randn((renoise, *shape), generator=generator) if renoise else None
        return Trajectory(latents, step_noise, renoise_noise, k)

    # ---- conditioning ------------------------------------------------------------------------
    @property
    def do_cfg(self) -> bool:
        # FLUX's guidance is an embedding, never a second batch.
        return not self.is_flux and self.guidance_scale > 1.0

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device) -> Conditioning:
        """Text embeddings through the pipeline's own `encode_prompt` (frozen encoders), once per batch."""
        t5 = self.loaded.t5
        if self.offload_t5 and t5 is not None:
            t5.to(device)
        try:
            if self.is_flux:
                embeds, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                                            max_sequence_length=self.max_sequence_length)
                return Conditioning(embeds, {"pooled_projections": pooled})
            negative = [self.negative_prompt] * len(prompts)
            embeds, neg_embeds, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=self.do_cfg,
                negative_prompt=negative, max_sequence_length=self.max_sequence_length)
        finally:
            if self.offload_t5 and t5 is not None:
                t5.to("cpu")
        if self.do_cfg:
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
        return Conditioning(embeds, {"pooled_projections": pooled})

    # ---- one denoising step ------------------------------------------------------------------
    def pack(self, latents: Tensor) -> Tensor:
        """(B, C, h, w) -> FLUX's (B, h/2 * w/2, 4C) tokens; the identity for SD3."""
        if not self.is_flux:
            return latents
        b, c, h, w = latents.shape
        return self.pipe._pack_latents(latents, b, c, h, w)

    def unpack(self, latents: Tensor) -> Tensor:
        if not self.is_flux:
            return latents
        return self.pipe._unpack_latents(latents, self.resolution, self.resolution, self.loaded.vae_scale_factor)

    def predict(self, model, latents: Tensor, i: int, cond: Conditioning) -> Tensor:
        """The velocity at sigma_i: one transformer call (guidance batched for SD3, embedded for
        FLUX). `latents` are packed for FLUX."""
        batch = latents.shape[0]
        if self.is_flux:
            # FluxPipeline: timestep t / 1000 in the latents' dtype; the guidance as a float32 vector.
            t = torch.full((batch,), self.timesteps[i], device=latents.device, dtype=latents.dtype) / 1000
            guidance = (torch.full((batch,), self.guidance_scale, device=latents.device, dtype=torch.float32)
                        if self.guidance_embeds else None)
            h = self.latent_size // 2
            img_ids = self.pipe._prepare_latent_image_ids(batch, h, h, latents.device, cond.embeds.dtype)
            txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=latents.device, dtype=cond.embeds.dtype)
            v = model(hidden_states=latents, timestep=t, guidance=guidance, encoder_hidden_states=cond.embeds,
                      pooled_projections=cond.added["pooled_projections"], txt_ids=txt_ids, img_ids=img_ids,
                      return_dict=False)[0].float()
        else:
            model_in = torch.cat([latents, latents]) if self.do_cfg else latents
            t = torch.full((model_in.shape[0],), self.timesteps[i], device=latents.device, dtype=torch.float32)
            v = model(hidden_states=model_in, timestep=t, encoder_hidden_states=cond.embeds,
                      pooled_projections=cond.added["pooled_projections"], return_dict=False)[0].float()
            if self.do_cfg:
                uncond, text = v.chunk(2)
                v = uncond + self.guidance_scale * (text - uncond)
        return v

    def euler_update(self, velocity: Tensor, latents: Tensor, i: int) -> Tensor:
        """FlowMatchEulerDiscreteScheduler.step without its state: x + (sigma_{i+1} - sigma_i) v, in
        float32 (the sigmas are float32, so dt is the scheduler's own float32 value)."""
        return self.update(velocity, latents, i, None)

    def distribution(self, velocity: Tensor, latents: Tensor, i: int) -> tuple[Tensor, float]:
        """The Euler step of the probability-flow ODE (std 0), or with a noise level the Gaussian
        step of Flow-GRPO's SDE (module docstring): its mean and its std std_t * sqrt(|dt|)."""
        x, dt = latents.float(), self.dts[i]
        if self.noise_level <= 0 or not self.draws_noise(i):
            return x + dt * velocity, 0.0
        sigma, std_t = self.sigmas[i], self.std_ts[i]
        mean = x + (velocity + std_t ** 2 / (2 * sigma) * (x + (1 - sigma) * velocity)) * dt
        return mean, std_t * abs(dt) ** 0.5

    # ---- the chain's ends (shared with GRPO's recorded sampling) -----------------------------
    def initial_latents(self, traj: Trajectory, device: torch.device) -> Tensor:
        """x_T as the chain carries it (packed for FLUX)."""
        return self.pack(traj.latents.to(device))

    def noise_at(self, traj: Trajectory, i: int, device: torch.device) -> Tensor | None:
        """Step i's SDE noise as the chain carries it (packed for FLUX); None for the ODE."""
        return None if traj.step_noise is None else self.pack(traj.step_noise[i].to(device))

    def images(self, latents: Tensor) -> Tensor:
        """The chain's final latents -> images in [0,1]."""
        return self.decode(self.unpack(latents))

    # ---- decode (checkpointed by ChainSampler.decode) ----------------------------------------
    def _decode(self, latents: Tensor) -> Tensor:
        vae = self.pipe.vae
        # SD3's and FLUX's VAEs centre their latents: undo the scale, then the shift (as the pipelines).
        return vae_decode(vae, latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0))

    # ---- the whole chain --------------------------------------------------------------------
    def sample(self, unet, cond: Conditioning, traj: Trajectory, nograd_unet=None) -> SampleOutput:
        """Run the T Euler steps; only the trajectory's trained steps carry gradients (none before
        DRaFT-LV's step). `unet` is the denoiser (here the transformer); `nograd_unet` runs the
        denoiser calls without gradients."""
        device = cond.embeds.device
        latents = self.initial_latents(traj, device)
        draft = traj.renoise is not None
        trained = () if draft else traj.trained(self.num_steps)
        latents = self.run_chain(unet, latents, cond, trained, lambda i: self.noise_at(traj, i, device),
                                 nograd_model=nograd_unet, stop_grad=traj.stop_grad)
        if draft:
            return self._draft_lv(unet, cond, latents.detach(), traj)
        latents = self.unpack(latents)
        return SampleOutput(self.decode(latents), 1, latents)

    def _draft_lv(self, unet, cond: Conditioning, x0: Tensor, traj: Trajectory) -> SampleOutput:
        """DRaFT-LV: re-noise the final sample to the last step's sigma N times, x = (1 - s) x0 + s eps,
        and take that one Euler step with gradients, all N copies in one batch."""
        n, last = traj.renoise.shape[0], self.num_steps - 1
        sigma = self.sigmas[last]
        eps = self.pack(traj.renoise.to(x0.device).flatten(0, 1))  # (N*B, ...) copy-major
        noisy = (1 - sigma) * x0.repeat(n, *[1] * (x0.ndim - 1)) + sigma * eps
        conds = Conditioning(_repeat_cfg(cond.embeds, n, self.do_cfg),
                             {k: _repeat_cfg(v, n, self.do_cfg) for k, v in cond.added.items()})
        noise = self.noise_at(traj, last, x0.device)  # the SDE's last-step noise, shared by the copies
        noise = None if noise is None else noise.repeat(n, *[1] * (noise.ndim - 1))
        latents = self.unpack(self._grad_step(unet, noisy, last, conds, noise))
        return SampleOutput(self.decode(latents), n, latents)
