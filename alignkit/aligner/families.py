"""Model families: what differs between SD 1.x/2.x, SDXL, SD3 and FLUX.1 for the aligner.

A family is found from the pipeline class named in the folder's `model_index.json` (read
before any weight loads). It says which module denoises (and carries the LoRA), which sampler
runs the chain, and the settings a run takes when the user leaves them unset: the guidance
scale of the family's pipeline, eta (DDIM's 1.0; 0 for the deterministic flow sampler), and
the LoRA target modules of diffusers' own LoRA training scripts for that family. Those
defaults are written into the run's config.yaml, so a resume and `alignkit eval` see the values
that trained.
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
    # FluxPipeline's default for dev's guidance embedding; schnell has none (see flux_guidance).
    Family("flux", "FluxPipeline", "transformer", "flow", 3.5, 0.0, FLUX_TARGETS, t5="text_encoder_2"),
)}


def family_of(pipeline_class: str) -> Family | None:
    return FAMILIES.get(pipeline_class)


def supported() -> str:
    return ", ".join(FAMILIES)


def apply_defaults(config, family: Family, guidance_embeds: bool = True) -> None:
    """Fill the config's unset (None) family-dependent fields with the family's defaults.
    `guidance_embeds`: False for FLUX.1-schnell, which takes no guidance at all (0)."""
    if config.guidance_scale is None:
        config.guidance_scale = family.guidance_scale if guidance_embeds else 0.0
    if config.eta is None:
        config.eta = family.eta
    if config.lora_target_modules is None:
        config.lora_target_modules = list(family.lora_targets)

