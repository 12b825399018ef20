"""Tiny Stable Diffusion and SDXL pipelines built from configs, saved with `save_pretrained`.

They have the real pipelines' classes, folder layouts and file names (model_index.json,
unet/, vae/, text_encoder/, tokenizer/, scheduler/), so the loading code that reads them is
the code that reads the real checkpoints; only the sizes are tiny (seconds on a CPU).
The tokenizer is a character-level CLIP BPE written offline: no merges, so every word
splits into characters, which keeps transformers' vocabulary checks satisfied.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

# Native resolution of both tiny pipelines (vae sample_size).
RESOLUTION = 32


def write_clip_tokenizer(folder: Path, max_length: int = 32) -> Path:
    """A CLIP tokenizer whose vocabulary is every printable character (with and without the
    end-of-word mark), saved in the vocab.json + merges.txt layout of the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=max_length, pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return folder


def _text_config(projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, vocab_size=200, max_position_embeddings=32,
                          projection_dim=projection_dim or 32)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=2, sample_size=RESOLUTION)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_sd(seed: int = 0):
    """A tiny `StableDiffusionPipeline` (UNet blocks (4,8), 2-layer text encoder, hidden 32)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=RESOLUTION // 2,
                                in_channels=4, out_channels=4, norm_num_groups=2, cross_attention_dim=32,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2)
    return dict(cls=StableDiffusionPipeline, unet=unet, vae=_vae(), scheduler=_scheduler(),
                text_encoder=CLIPTextModel(_text_config()))


def build_sdxl(seed: int = 0):
    """A tiny `StableDiffusionXLPipeline`: two text encoders, pooled embeddings, time ids."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=RESOLUTION // 2,
                                in_channels=4, out_channels=4, norm_num_groups=2, attention_head_dim=(2, 4),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                # 6 time ids x 8 + the second encoder's 32-dim pooled projection.
                                projection_class_embeddings_input_dim=6 * 8 + 32,
                                # The two encoders' hidden states are concatenated: 32 + 32.
                                cross_attention_dim=64)
    return dict(cls=StableDiffusionXLPipeline, unet=unet, vae=_vae(), scheduler=_scheduler(),
                text_encoder=CLIPTextModel(_text_config()),
                text_encoder_2=CLIPTextModelWithProjection(_text_config(projection_dim=32)))


BUILDERS = {"sd": build_sd, "sdxl": build_sdxl}


def save_tiny_pipeline(kind: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline `kind` ("sd" or "sdxl") and `save_pretrained` it into `folder`."""
    from transformers import CLIPTokenizer

    parts = BUILDERS[kind](seed)
    cls = parts.pop("cls")
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(scratch)))
    parts["tokenizer"] = tokenizer
    if kind == "sdxl":
        parts["tokenizer_2"] = tokenizer
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cls(**parts).save_pretrained(folder)
    return folder


# ---- shared test helpers: fixtures, test rewards, an in-process CLI ------------------------------

import pytest  # noqa: E402

from alignkit.rewards import Reward  # noqa: E402
from alignkit.rewards.registry import REGISTRY, register  # noqa: E402


class Brightness(Reward):
    """Mean pixel value: a simple differentiable reward a tiny model can learn to raise."""

    def score(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))


class Thresholded(Brightness):
    differentiable = False


def register_test_rewards() -> None:
    """`brightness` (differentiable) and `nondiff` (declared non-differentiable), for tests only."""
    register("brightness", "mean pixel value (tests)")(lambda device=None, dtype=None: Brightness().to(device))
    register("nondiff", "a non-differentiable reward (tests)", differentiable=False)(
        lambda device=None, dtype=None: Thresholded().to(device))


@pytest.fixture(scope="session")
def test_rewards():
    register_test_rewards()
    yield
    for name in ("brightness", "nondiff"):
        REGISTRY.pop(name, None)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return save_tiny_pipeline("sd", tmp_path_factory.mktemp("tiny") / "sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return save_tiny_pipeline("sdxl", tmp_path_factory.mktemp("tiny") / "sdxl")


def run_cli(args: list[str]) -> int:
    """`alignkit ARGS` in this process (so test rewards are registered); the exit code."""
    from alignkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # build both into a folder, for the benchmark and by hand
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-pipelines")
    for name in BUILDERS:
        print(save_tiny_pipeline(name, out / name))
