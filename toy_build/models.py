"""Architectures of the toy world's models: small versions of the real ones, built from configs.

Sizes are chosen for a 2-core CPU: each part trains in minutes, and the whole pipeline is a
few MB in fp16. The shapes mirror Stable Diffusion 1.x (a factor-4 KL autoencoder with 4
latent channels, a cross-attention UNet, a CLIP text encoder), so that every code path the
aligner uses on a real model runs unchanged on this one.
"""

from __future__ import annotations

from alignkit.toy.world import IMAGE_SIZE
from toy_build.tokenizer import MAX_LENGTH

LATENT_CHANNELS = 4
# Three encoder blocks halve the resolution twice: 64×64 pixels → 16×16 latents.
VAE_FACTOR = 4
LATENT_SIZE = IMAGE_SIZE // VAE_FACTOR
TEXT_HIDDEN = 64
CLIP_PROJECTION = 64


def vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def unet_config() -> dict:
    return dict(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
        cross_attention_dim=TEXT_HIDDEN,
        # diffusers' legacy name: this is the number of heads (2 heads of 16-32 channels).
        attention_head_dim=2,
    )


# The flow-matching toy (SD3 format): an MMDiT over 2x2 patches of the same 16x16 latents (64
# image tokens). Its context is SD3's: the two CLIP slots (both the toy CLIP's text tower,
# 64 + 64 channels side by side) and no T5 (the pipeline then feeds 256 zero tokens).
FLOW_HIDDEN = 128


def flow_transformer_config() -> dict:
    return dict(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=6, attention_head_dim=32, num_attention_heads=FLOW_HIDDEN // 32,
        joint_attention_dim=2 * TEXT_HIDDEN, caption_projection_dim=FLOW_HIDDEN,
        # The pooled input is the two CLIP slots' projections side by side (64 + 64).
        pooled_projection_dim=2 * CLIP_PROJECTION, pos_embed_max_size=LATENT_SIZE // 2,
    )


def text_config(vocab_size: int, bos: int, eos: int) -> dict:
    """A 2-layer CLIP text transformer over the world's vocabulary."""
    return dict(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_LENGTH,
        # Pooling takes the first EOS token (the id-based rule of transformers ≥ 4.35).
        bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    )


def vision_config() -> dict:
    """A small ViT over 8×8 patches of the 64×64 image (64 patches and a class token)."""
    return dict(
        image_size=IMAGE_SIZE, patch_size=8, hidden_size=96, intermediate_size=384,
        num_hidden_layers=4, num_attention_heads=4,
    )


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_config())


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config())


def build_flow_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**flow_transformer_config())


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer), tokenizer.bos_token_id,
                                                      tokenizer.eos_token_id)))


def build_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id),
        vision_config=vision_config(), projection_dim=CLIP_PROJECTION,
    )
    return CLIPModel(config)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())
