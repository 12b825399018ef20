"""Model families: what differs between SD 1.x/2.x, SDXL, SD3 and FLUX.1, for the aligner and
for evaluation alike.

A family is found from the pipeline class named in the folder's `model_index.json` (read
before any weight loads). It says which module denoises (and carries the LoRA), which sampler
runs the chain, and the settings a run takes when the user leaves them unset: the guidance
scale of the family's pipeline, eta (DDIM's 1.0; 0 for the deterministic flow sampler), and
the LoRA target modules of diffusers' own LoRA training scripts for that family. Those
defaults are written into the run's config.yaml, so a resume and `alignkit eval` see the values
that trained; `alignkit eval` of a bare LoRA folder (no config.yaml) takes the same guidance
default from the base model's family (`default_guidance`).

`size_multiple` says which image sides a loaded pipeline can generate (the VAE factor, times
SD3's patch size or FLUX's 2x2 packing); train and eval both check `--resolution` against it.
"""

from __future__ import annotations

from dataclasses import dataclass

# diffusers' examples/text_to_image/train_text_to_image_lora.py (UNet attention).
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# examples/dreambooth/train_dreambooth_lora_sd3.py: both streams of the joint attention.
SD3_TARGETS = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
               "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")
# examples/dreambooth/train_dreambooth_lora_flux.py: attention and both feed-forwards.
FLUX_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
                "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")


@dataclass(frozen=True)
class Family:
    name: str
    # The diffusers pipeline class name in model_index.json.
    pipeline: str
    # The pipeline attribute of the denoiser (the module LoRA wraps and the trainer prepares).
    denoiser: str
    # "ddim" (aligner/sampler.py) or "flow" (aligner/flow_sampler.py).
    sampler: str
    # Defaults for unset TrainConfig fields.
    guidance_scale: float
    eta: float
    lora_targets: tuple[str, ...]
    # The pipeline attribute of the T5 text encoder, if the family has one.
    t5: str | None = None


FAMILIES = {f.pipeline: f for f in (
    Family("sd", "StableDiffusionPipeline", "unet", "ddim", 7.5, 1.0, UNET_TARGETS),
    Family("sdxl", "StableDiffusionXLPipeline", "unet", "ddim", 7.5, 1.0, UNET_TARGETS),
    # StableDiffusion3Pipeline's default guidance (SD3.5-large's card suggests 3.5-4.5).
    Family("sd3", "StableDiffusion3Pipeline", "transformer", "flow", 7.0, 0.0, SD3_TARGETS, t5="text_encoder_3"),
    # FluxPipeline's default for dev's guidance embedding; schnell has none (see flux_guidance_embeds).
    Family("flux", "FluxPipeline", "transformer", "flow", 3.5, 0.0, FLUX_TARGETS, t5="text_encoder_2"),
)}


def family_of(pipeline_class: str) -> Family | None:
    return FAMILIES.get(pipeline_class)


def supported() -> str:
    return ", ".join(FAMILIES)


def default_guidance(family: Family, guidance_embeds: bool = True) -> float:
    """The family's guidance scale; 0 for FLUX.1-schnell (`guidance_embeds` False), which takes none."""
    return family.guidance_scale if guidance_embeds else 0.0


def family_defaults(family: Family, guidance_embeds: bool = True) -> dict:
    """The family's values for the TrainConfig fields a run leaves unset (None).
    `guidance_embeds`: False for FLUX.1-schnell, which takes no guidance at all (0)."""
    return {"guidance_scale": default_guidance(family, guidance_embeds), "eta": family.eta,
            "lora_target_modules": list(family.lora_targets)}


def takes_eta(pipe) -> bool:
    """Whether a pipeline's __call__ takes DDIM's eta (SD, SDXL); flow-matching pipelines (SD3,
    FLUX) sample deterministically and take none."""
    import inspect

    return "eta" in inspect.signature(pipe.__call__).parameters


def model_index(source: str, **kwargs) -> dict:
    """A pipeline folder's (or hub id's) model_index.json, without loading weights; {} if it
    cannot be read (whatever loads the pipeline then says why). `kwargs`: `load_config`'s
    (revision, local_files_only)."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(source, **kwargs))
    except (OSError, ValueError):
        return {}


def flux_guidance_embeds(source: str, **kwargs) -> bool:
    """Whether a FLUX.1 model embeds the guidance scale (dev) or not (schnell), from its
    transformer/config.json. Errors are the caller's (`load_config`'s OSError, ValueError)."""
    from diffusers import FluxTransformer2DModel

    config = FluxTransformer2DModel.load_config(source, subfolder="transformer", **kwargs)
    return bool(config.get("guidance_embeds", False))


def family_guidance(source: str) -> float | None:
    """The default guidance scale of the model at `source` (a from_pretrained source), from its
    model_index.json (and FLUX's transformer config); None for an unknown pipeline class or a
    folder that cannot be read."""
    family = family_of(str(model_index(source).get("_class_name")))
    if family is None:
        return None
    embeds = True
    if family.name == "flux":
        try:
            embeds = flux_guidance_embeds(source)
        except (OSError, ValueError):
            return None
    return default_guidance(family, embeds)


def vae_factor(pipe) -> int:
    """Pixels per latent cell of a loaded pipeline's VAE (8 for every released model)."""
    vae = getattr(pipe, "vae", None)
    channels = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return vae_factor_of(channels) if channels else 8


def vae_factor_of(block_out_channels) -> int:
    """Pixels per latent cell of an AutoencoderKL config: each block after the first halves
    the side (what diffusers' pipelines compute as vae_scale_factor)."""
    return 2 ** (len(block_out_channels) - 1)


def size_multiple(pipe) -> tuple[int, str]:
    """(multiple, reason): every image side a loaded pipeline generates must be a multiple of
    `multiple`, because of `reason` (for the one-line error)."""
    # The VAE maps each latent cell to vae_factor pixels, so the side must divide by it (as
    # diffusers' own pipelines check); the UNet takes any latent size (it passes explicit
    # upsample sizes when the latent side is not a multiple of its own downsampling).
    factor = vae_factor(pipe)
    family = family_of(type(pipe).__name__)
    name = family.name if family is not None else None
    if name == "sd3":  # the transformer cuts the latent into patch x patch tokens
        patch = pipe.transformer.config.patch_size
        return factor * patch, f"the VAE factor {factor} x the transformer's patch size {patch}"
    if name == "flux":  # FLUX packs 2x2 latent cells into one token
        return factor * 2, f"the VAE factor {factor} x FLUX's 2x2 latent packing"
    return factor, "the VAE downsampling factor of this model"


def resolution_error(resolution: int, multiple: int, reason: str) -> str | None:
    """The one line for a `--resolution` that is not a positive multiple of `multiple`, or None."""
    if resolution > 0 and resolution % multiple == 0:
        return None
    below, above = max(multiple, resolution // multiple * multiple), (resolution // multiple + 1) * multiple
    return f"--resolution {resolution} is not a multiple of {multiple} ({reason}); use {below} or {above}"
