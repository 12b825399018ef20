"""Loading a diffusers text-to-image pipeline for training, with one-line errors.

Supported: `StableDiffusionPipeline` (SD 1.x/2.x) and `StableDiffusionXLPipeline`. Whatever
scheduler a checkpoint ships, the sampler runs DDIM on that scheduler's noise schedule
(`DDIMScheduler.from_config`), because its update is written explicitly and is safe to
recompute under gradient checkpointing; multistep solvers (DPM-Solver, Euler, PNDM) keep a
step counter and history that a recompute would corrupt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.errors import AlignkitError, MissingWeightsError, first_line
from alignkit import models
from alignkit.hub import hub_reachable, quiet_loading

logger = logging.getLogger(__name__)

# Pipeline class name -> whether it is an SDXL-style pipeline (two encoders, pooled embeds, time ids).
SUPPORTED = {"StableDiffusionPipeline": False, "StableDiffusionXLPipeline": True}


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


def resolve_model(name_or_path: str) -> str:
    """A named model's folder (`toy`), or a folder or hub id checked to exist (alignkit.models)."""
    try:
        return models.resolve_model(name_or_path)
    except MissingWeightsError as exc:
        raise PipelineError(f"{exc} (--model)") from None


def load_pipeline(name_or_path: str, revision: str | None = None, dtype: torch.dtype = torch.float32) -> LoadedPipeline:
    """Load a supported pipeline in `dtype` and prepare it for the sampler (`prepare_pipeline`)."""
    from diffusers import DiffusionPipeline

    source = resolve_model(name_or_path)
    # A hub id whose files are cached loads from the cache alone when the hub cannot be reached,
    # instead of retrying it for every file.
    local_only = not Path(source).exists() and not hub_reachable()
    # Read the class from model_index.json first: an unsupported pipeline fails before any weight loads.
    class_name = DiffusionPipeline.load_config(source, revision=revision,
                                               local_files_only=local_only).get("_class_name", "?")
    if class_name not in SUPPORTED:
        raise PipelineError(f"model '{name_or_path}' is a {class_name}; the aligner supports {' and '.join(SUPPORTED)}")
    # The safety checker is a non-differentiable post-filter of the pipeline's __call__, unused here.
    extra = {} if SUPPORTED[class_name] else {"safety_checker": None, "requires_safety_checker": False}
    try:
        with quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(source, revision=revision, dtype=dtype, local_files_only=local_only,
                                                     **extra)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise PipelineError(f"model '{name_or_path}' could not be loaded: {first_line(exc)}") from None
    return prepare_pipeline(pipe, name_or_path)


def prepare_pipeline(pipe, name: str = "model") -> LoadedPipeline:
    """Swap in DDIM, freeze every weight, and report the sizes the sampler needs."""
    from diffusers import DDIMScheduler

    class_name = type(pipe).__name__
    if class_name not in SUPPORTED:
        raise PipelineError(f"model '{name}' is a {class_name}; the aligner supports {' and '.join(SUPPORTED)}")
    if not isinstance(pipe.scheduler, DDIMScheduler):
        logger.info("sampling with DDIM on the noise schedule of %s (the aligner's sampler is DDIM)",
                    type(pipe.scheduler).__name__)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if pipe.scheduler.config.thresholding:
        raise PipelineError(f"model '{name}': DDIM dynamic thresholding is not supported by the aligner")
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)

    # The VAE maps each latent cell to vae_factor pixels, so the side must divide by it (as
    # diffusers' own pipelines check); the UNet takes any latent size (it passes explicit
    # upsample sizes when the latent side is not a multiple of its own downsampling).
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return LoadedPipeline(pipe=pipe, is_sdxl=SUPPORTED[class_name], vae_scale_factor=vae_factor,
                          size_multiple=vae_factor,
                          native_resolution=int(pipe.vae.config.sample_size))


def check_resolution(resolution: int, loaded: LoadedPipeline) -> None:
    """The VAE halves the side per block: the image side must be a multiple of its factor."""
    m = loaded.size_multiple
    if resolution <= 0 or resolution % m:
        below, above = max(m, resolution // m * m), (resolution // m + 1) * m
        raise PipelineError(f"--resolution {resolution} is not a multiple of {m} (the VAE downsampling "
                            f"factor of this model); use {below} or {above}")
