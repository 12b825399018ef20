"""A diffusers text-to-image pipeline prepared for training (loaded by `alignkit.pipelines`).

Supported: the families of `alignkit/families.py` — `StableDiffusionPipeline` (SD 1.x/2.x),
`StableDiffusionXLPipeline`, `StableDiffusion3Pipeline` (SD3, SD3.5) and `FluxPipeline`
(FLUX.1 dev, schnell). The family is read from `model_index.json` before any weight loads.

UNet families: whatever scheduler a checkpoint ships, the sampler runs DDIM on that
scheduler's noise schedule (`DDIMScheduler.from_config`), because its update is written
explicitly and is safe to recompute under gradient checkpointing; multistep solvers
(DPM-Solver, Euler, PNDM) keep a step counter and history that a recompute would corrupt.
Flow families: the sampler runs Euler on the sigmas of `FlowMatchEulerDiscreteScheduler`
(what SD3 and FLUX.1 ship), swapped in from the config the same way if another one is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from alignkit.families import Family, family_of, size_multiple, supported, vae_factor
from alignkit.pipelines import ModelInfo, PipelineError, check_resolution as _check_side, inspect_model
from alignkit.pipelines import load_pipeline as _load

# Re-exported: the aligner's callers read a model and its errors from here.
__all__ = ["LoadedPipeline", "ModelInfo", "PipelineError", "check_resolution", "inspect_model", "load_pipeline",
           "prepare_pipeline"]

logger = logging.getLogger(__name__)


@dataclass
class LoadedPipeline:
    pipe: object
    # True for SDXL (pooled text embeddings and add_time_ids).
    is_sdxl: bool
    # Pixels per latent cell (8 for SD), and the step every image side must be a multiple of.
    vae_scale_factor: int
    size_multiple: int
    # The pipeline's native image side in pixels.
    native_resolution: int
    # The model family (denoiser, sampler, defaults); SD when built by hand without one.
    family: Family = None
    # Why sides must be multiples of size_multiple (for the one-line error).
    size_reason: str = "the VAE downsampling factor of this model"

    @property
    def denoiser(self):
        """The module that denoises and carries the LoRA: the UNet or the transformer."""
        return getattr(self.pipe, self.family.denoiser)

    @property
    def t5(self):
        """The T5 text encoder (SD3, FLUX), or None."""
        return getattr(self.pipe, self.family.t5, None) if self.family.t5 else None

    def to(self, device, keep_t5_on_cpu: bool = False) -> None:
        """Move the pipeline to `device`; T5 stays on the CPU if asked (the sampler moves it
        over for each encode), so it never occupies the accelerator next to the denoiser."""
        for name, module in self.pipe.components.items():
            if isinstance(module, torch.nn.Module):
                module.to("cpu" if keep_t5_on_cpu and module is self.t5 else device)


def load_pipeline(name_or_path: str, revision: str | None = None, dtype: torch.dtype = torch.float32,
                  info: ModelInfo | None = None) -> LoadedPipeline:
    """Load a supported pipeline in `dtype` (`alignkit.pipelines`, the loader evaluation uses
    too) and prepare it for the sampler (`prepare_pipeline`). `info`: `inspect_model`'s reading
    of the same model, if the caller already has it."""
    info = info or inspect_model(name_or_path, revision)
    return prepare_pipeline(_load(info, dtype, name_or_path), name_or_path)


def prepare_pipeline(pipe, name: str = "model") -> LoadedPipeline:
    """Swap in the sampler's scheduler, freeze every weight, and report the sizes the sampler needs."""
    class_name = type(pipe).__name__
    family = family_of(class_name)
    if family is None:
        raise PipelineError(f"model '{name}' is a {class_name}; the aligner supports {supported()}")
    if family.sampler == "flow":
        _flow_scheduler(pipe, name)
    else:
        _ddim_scheduler(pipe, name)
    for attr in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, attr, None)
        if module is not None:
            module.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)

    # The side must divide by the VAE factor, times SD3's patch size or FLUX's 2x2 packing.
    multiple, reason = size_multiple(pipe)
    return LoadedPipeline(pipe=pipe, is_sdxl=family.name == "sdxl", vae_scale_factor=vae_factor(pipe),
                          size_multiple=multiple, native_resolution=int(pipe.vae.config.sample_size),
                          family=family, size_reason=reason)


def _ddim_scheduler(pipe, name: str) -> None:
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        logger.info("sampling with DDIM on the noise schedule of %s (the aligner's sampler is DDIM)",
                    type(pipe.scheduler).__name__)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if pipe.scheduler.config.thresholding:
        raise PipelineError(f"model '{name}': DDIM dynamic thresholding is not supported by the aligner")


def _flow_scheduler(pipe, name: str) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
        logger.info("sampling with flow-matching Euler on the sigmas of %s (the aligner's flow sampler is Euler)",
                    type(pipe.scheduler).__name__)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    config = pipe.scheduler.config
    if config.get("stochastic_sampling") or config.get("invert_sigmas"):
        raise PipelineError(f"model '{name}': its scheduler's stochastic_sampling / invert_sigmas is not supported "
                            "by the aligner's deterministic Euler sampler")


def check_resolution(resolution: int, loaded: LoadedPipeline) -> None:
    """The image side must be a multiple of the model's size step (VAE factor, patches, packing)."""
    _check_side(resolution, multiple=loaded.size_multiple, reason=loaded.size_reason)
