"""SD3 and FLUX.1 pipelines with random weights, built from configs, for the benchmarks.

    tiny-sd3, tiny-flux   the test suite's tiny pipelines (tests/tiny_flow_pipelines.py)
    sd35m                 Stable Diffusion 3.5 medium's architecture (configs/sd35m: MMDiT-X, 24 layers,
                          dual attention in 0-12, CLIP-L + CLIP-G + T5-XXL, 16-channel VAE)
    flux1                 FLUX.1-dev's architecture (configs/flux1: 19 double + 38 single blocks,
                          guidance embedding, CLIP-L + T5-XXL, 16-channel VAE)

The configs are the published config.json values of stabilityai/stable-diffusion-3.5-medium
and black-forest-labs/FLUX.1-dev, written down here (nothing is downloaded); the tokenizers
are the tests' offline character-level ones, padded to the pipelines' sequence lengths, so
the text encoders do the real amount of work. Weights are random: the figures are memory
and time, never image quality.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _read(arch: str, name: str) -> dict:
    return json.loads((HERE / "configs" / arch / f"{name}.json").read_text())


def build_flow_pipeline(arch: str, device, dtype):
    """A StableDiffusion3Pipeline or FluxPipeline of `arch`, its weights made on `device` in `dtype`."""
    import torch
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                           SD3Transformer2DModel, StableDiffusion3Pipeline)
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                              T5EncoderModel, T5TokenizerFast)

    from tiny_flow_pipelines import BUILDERS, write_t5_tokenizer
    from tiny_pipelines import write_clip_tokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        # The tiny CLIPs hold 32 positions, the real ones 77.
        clip_length = 32 if arch.startswith("tiny-") else 77
        clip = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp) / "clip", max_length=clip_length))
        t5 = T5TokenizerFast.from_pretrained(write_t5_tokenizer(Path(tmp) / "t5"))
    if arch.startswith("tiny-"):
        parts = BUILDERS[arch.removeprefix("tiny-")]()
        cls = parts.pop("cls")
    else:
        # Made on the device, in the target dtype: FLUX's 12B parameters in fp32 on a CPU would
        # take 48 GB and minutes.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                vae = AutoencoderKL.from_config(_read(arch, "vae"))
                clip_l = CLIPTextModelWithProjection if arch == "sd35m" else CLIPTextModel
                parts = dict(vae=vae, text_encoder=clip_l(CLIPTextConfig(**_read(arch, "text_encoder"))),
                             scheduler=FlowMatchEulerDiscreteScheduler.from_config(_read(arch, "scheduler")))
                if arch == "sd35m":
                    cls = StableDiffusion3Pipeline
                    parts.update(transformer=SD3Transformer2DModel.from_config(_read(arch, "transformer")),
                                 text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_read(arch, "text_encoder_2"))),
                                 text_encoder_3=T5EncoderModel(T5Config(**_read(arch, "text_encoder_3"))))
                else:
                    cls = FluxPipeline
                    parts.update(transformer=FluxTransformer2DModel.from_config(_read(arch, "transformer")),
                                 text_encoder_2=T5EncoderModel(T5Config(**_read(arch, "text_encoder_2"))))
        finally:
            torch.set_default_dtype(previous)
    if cls is StableDiffusion3Pipeline:
        parts.update(tokenizer=clip, tokenizer_2=clip, tokenizer_3=t5)
    else:
        parts.update(tokenizer=clip, tokenizer_2=t5)
    pipe = cls(**parts)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):  # (an fp32 cast would only warn: they are fp32 already)
            module.to(device=device, **({} if dtype == torch.float32 else {"dtype": dtype}))
    return pipe
