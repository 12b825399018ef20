"""Loading a diffusers text-to-image pipeline for training, with one-line errors.

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
from pathlib import Path

import torch

from alignkit.families import Family, family_of, flux_guidance_embeds, resolution_error, size_multiple, supported, vae_factor
from alignkit.errors import AlignkitError, MissingWeightsError, first_line
from alignkit import models
from alignkit.hub import dropped_components, hub_reachable, quiet_loading

logger = logging.getLogger(__name__)


class PipelineError(AlignkitError):
    """A model that cannot be loaded or does not fit the sampler."""


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


@dataclass
class ModelInfo:
    """What model_index.json (and the denoiser's config) say, read without loading weights."""

    source: str
    family: Family
    # FLUX.1-dev embeds the guidance scale; FLUX.1-schnell does not (it ignores one).
    guidance_embeds: bool = True
    # A hub id read from the HF cache alone (the hub cannot be reached).
    local_only: bool = False
    # Components model_index.json leaves out ([null, null]), passed as None to from_pretrained.
    dropped: tuple[str, ...] = ()


def _resolve_model_flag(name_or_path: str) -> str:
    """alignkit.models.resolve_model for `--model`: its error names the flag, as a PipelineError."""
    try:
        return models.resolve_model(name_or_path)
    except MissingWeightsError as exc:
        raise PipelineError(f"{exc} (--model)") from None


def inspect_model(name_or_path: str, revision: str | None = None) -> ModelInfo:
    """The model's family from its model_index.json, and its components checked: one line for an
    unsupported pipeline or a component (such as T5) that the folder lacks."""
    from diffusers import DiffusionPipeline

    source = _resolve_model_flag(name_or_path)
    # A hub id whose files are cached loads from the cache alone when the hub cannot be reached,
    # instead of retrying it for every file.
    local_only = not Path(source).exists() and not hub_reachable()
    index = DiffusionPipeline.load_config(source, revision=revision, local_files_only=local_only)
    class_name = index.get("_class_name", "?")
    family = family_of(class_name)
    if family is None:
        raise PipelineError(f"model '{name_or_path}' is a {class_name}; the aligner supports {supported()}")
    t5 = family.t5
    if t5 is not None:
        entry = index.get(t5)
        # SD3 may drop T5 on purpose (model_index lists it as null: diffusers then uses zeros);
        # FLUX's only prompt sequence comes from T5.
        dropped = not entry or entry[0] is None
        if dropped and family.name == "flux":
            raise PipelineError(f"model '{name_or_path}': FLUX needs its T5 text encoder ({t5}), which its "
                                "model_index.json leaves out")
        if not dropped and Path(source).is_dir() and not (Path(source) / t5).is_dir():
            raise PipelineError(f"model '{name_or_path}': its T5 text encoder folder {Path(source) / t5} is missing; "
                                "copy it from the original model (or download the model again)")
        if not dropped and local_only and not _cached(source, f"{t5}/config.json", revision):
            raise PipelineError(f"model '{name_or_path}': its T5 text encoder ({t5}/) is not in the Hugging Face "
                                f"cache and the hub cannot be reached; download the whole model (hf download {source})")
    guidance_embeds = True
    if family.name == "flux":
        guidance_embeds = flux_guidance_embeds(source, revision=revision, local_files_only=local_only)
    return ModelInfo(source, family, guidance_embeds, local_only, tuple(dropped_components(index)))


def _cached(repo_id: str, filename: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)


def load_pipeline(name_or_path: str, revision: str | None = None, dtype: torch.dtype = torch.float32,
                  info: ModelInfo | None = None) -> LoadedPipeline:
    """Load a supported pipeline in `dtype` and prepare it for the sampler (`prepare_pipeline`).
    `info`: `inspect_model`'s reading of the same model, if the caller already has it."""
    from diffusers import DiffusionPipeline

    info = info or inspect_model(name_or_path, revision)
    # The safety checker is a non-differentiable post-filter of the pipeline's __call__, unused here.
    extra = {"safety_checker": None, "requires_safety_checker": False} if info.family.name == "sd" else {}
    extra.update({name: None for name in info.dropped})
    try:
        with quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(info.source, revision=revision, dtype=dtype,
                                                     local_files_only=info.local_only, **extra)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise PipelineError(f"model '{name_or_path}' could not be loaded: {first_line(exc)}") from None
    return prepare_pipeline(pipe, name_or_path)


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
    message = resolution_error(resolution, loaded.size_multiple, loaded.size_reason)
    if message:
        raise PipelineError(message)
