"""Tiny Stable Diffusion 3 and FLUX.1 pipelines built from configs, saved with `save_pretrained`.

The flow-matching counterparts of `tiny_pipelines.py`: the real pipeline classes
(`StableDiffusion3Pipeline`, `FluxPipeline`), folder layouts and file names, with tiny sizes
(2 transformer layers, hidden 32, a 32 px VAE) so that a sample takes well under
a second on a CPU. The configs follow diffusers' own pipeline tests
(tests/pipelines/stable_diffusion_3, tests/pipelines/flux), with the real models' scheduler
settings and VAE shift/scaling factors, so that the sigma shifts and the decode are the
real ones. The T5 tokenizer is a character-level Unigram written offline (like the CLIP one).
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import pytest
import torch

from tiny_pipelines import _text_config, write_clip_tokenizer

# Native resolution of every tiny flow pipeline (vae sample_size): a 4x4 latent (VAE factor 8, as
# the real models), so 2x2 = 4 transformer tokens (patch 2 for SD3, 2x2 packing for FLUX).
RESOLUTION = 32
# T5's hidden size; SD3 pads the two CLIPs' concatenated hidden states (32 + 32) up to it.
T5_DIM = 64


def write_t5_tokenizer(folder: Path) -> Path:
    """A T5 tokenizer (transformers' Unigram backend) whose pieces are single characters."""
    from transformers import T5TokenizerFast

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    # T5's layout: <pad>=0, </s>=1, <unk>=2, then the pieces ("▁" marks a word start).
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0),
             *((c, -2.0) for c in chars), *(("\u2581" + c, -2.5) for c in chars)]
    T5TokenizerFast(vocab=vocab, extra_ids=0).save_pretrained(folder)
    return folder


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=160, d_model=T5_DIM, d_kv=16, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1))


def _vae(shift_factor: float, scaling_factor: float):
    """Four blocks (factor 8, so the family's size step is the real 16) and 4 latent channels;
    the real models' shift and scale."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(4, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         norm_num_groups=2, sample_size=RESOLUTION, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=shift_factor, scaling_factor=scaling_factor)


def build_sd3(seed: int = 0):
    """A tiny `StableDiffusion3Pipeline`: MMDiT (patch 2), CLIP-L + CLIP-G + T5, shift 3.0."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        # The joint context is T5's width; the pooled projection is the two CLIPs' 32 + 32.
        joint_attention_dim=T5_DIM, pooled_projection_dim=64, pos_embed_max_size=8)
    return dict(cls=StableDiffusion3Pipeline, transformer=transformer,
                # SD3(.5)'s scheduler: a fixed shift of 3.0, no resolution-dependent shift.
                scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
                vae=_vae(shift_factor=0.0609, scaling_factor=1.5305),
                text_encoder=CLIPTextModelWithProjection(_text_config(projection_dim=32)),
                text_encoder_2=CLIPTextModelWithProjection(_text_config(projection_dim=32)),
                text_encoder_3=_t5())


def _build_flux(seed: int, dev: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    # 4 latent channels packed 2x2 -> 16 channels per token; rope axes sum to the head dim.
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM,
                                         pooled_projection_dim=32, guidance_embeds=dev, axes_dims_rope=(4, 4, 8))
    if dev:  # FLUX.1-dev's scheduler: the shift grows with the image's token count
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
    else:  # FLUX.1-schnell's: no shift
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    return dict(cls=FluxPipeline, transformer=transformer, scheduler=scheduler,
                vae=_vae(shift_factor=0.1159, scaling_factor=0.3611),
                text_encoder=CLIPTextModel(_text_config(projection_dim=32)), text_encoder_2=_t5())


def build_flux(seed: int = 0):
    """A tiny FLUX.1-dev-like `FluxPipeline` (guidance embedding, dynamic shift)."""
    return _build_flux(seed, dev=True)


def build_flux_schnell(seed: int = 0):
    """A tiny FLUX.1-schnell-like `FluxPipeline` (no guidance embedding, no shift)."""
    return _build_flux(seed, dev=False)


BUILDERS = {"sd3": build_sd3, "flux": build_flux, "flux-schnell": build_flux_schnell}


def save_tiny_flow_pipeline(kind: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline `kind` and `save_pretrained` it into `folder`."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    parts = BUILDERS[kind](seed)
    cls = parts.pop("cls")
    with tempfile.TemporaryDirectory() as scratch:
        clip = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(scratch) / "clip"))
        t5 = T5TokenizerFast.from_pretrained(write_t5_tokenizer(Path(scratch) / "t5"))
    if kind == "sd3":
        parts.update(tokenizer=clip, tokenizer_2=clip, tokenizer_3=t5)
    else:
        parts.update(tokenizer=clip, tokenizer_2=t5)
    cls(**parts).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    return save_tiny_flow_pipeline("sd3", tmp_path_factory.mktemp("tiny") / "sd3")


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    return save_tiny_flow_pipeline("flux", tmp_path_factory.mktemp("tiny") / "flux")


@pytest.fixture(scope="session")
def tiny_flux_schnell(tmp_path_factory) -> Path:
    return save_tiny_flow_pipeline("flux-schnell", tmp_path_factory.mktemp("tiny") / "flux-schnell")


if __name__ == "__main__":  # build all three into a folder, for the benchmark and by hand
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-flow-pipelines")
    for name in BUILDERS:
        print(save_tiny_flow_pipeline(name, out / name))
