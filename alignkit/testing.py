"""Pipelines with random weights and rewards for tests: what the test suite, the benchmarks and
a plugin's own tests build on (as `diffusers.utils.testing_utils` is for diffusers).

The pipelines are built from configs and saved with `save_pretrained`, so they have the real
pipelines' classes, folder layouts and file names (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/): the loading code that reads them is the code that reads
the real checkpoints. The tokenizer is a character-level CLIP BPE written offline: no merges,
so every word splits into characters, which keeps transformers' vocabulary checks satisfied,
and nothing is downloaded.

Two tables of architectures:

    BUILDERS       for tests, seconds on a CPU, at RESOLUTION:
                   sd     StableDiffusionPipeline: UNet blocks (4,8), 2-layer text encoder
                   sdxl   StableDiffusionXLPipeline: two text encoders, pooled embeddings, time ids
    ARCHITECTURES  for benchmarks, at any resolution that is a multiple of the VAE's factor:
                   tiny   a ~1.2M-parameter UNet, a factor-8 VAE (the CPU peer comparisons)
                   small  a ~1.5M-parameter UNet, a factor-4 VAE (memory_scaling's CPU grid)
                   sd15   Stable Diffusion 1.5's published configs (860M UNet), for GPU timings

    python -m alignkit.testing sd OUT_DIR
    python -m alignkit.testing tiny OUT_DIR --resolution 64
"""

from __future__ import annotations

import argparse
import inspect
import json
import string
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from alignkit.rewards import Reward
from alignkit.rewards.registry import REGISTRY, register

# Native resolution of the test pipelines (vae sample_size).
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


def _text_config(projection_dim: int | None = None, hidden_size: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden_size, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, vocab_size=200, max_position_embeddings=32,
                          projection_dim=projection_dim or 32)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=2, sample_size=RESOLUTION)


def _scheduler():
    from diffusers import DDIMScheduler

    # SD 1.5's scheduler config (the trainers swap in DDIM from it).
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


# ---- test pipelines ------------------------------------------------------------------------------

def build_sd(seed: int = 0, cross_attention_dim: int = 32):
    """A tiny `StableDiffusionPipeline` (UNet blocks (4,8), 2-layer text encoder, hidden 32).
    Another `cross_attention_dim` (the text encoder's width) makes a LoRA that does not fit."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=RESOLUTION // 2,
                                in_channels=4, out_channels=4, norm_num_groups=2,
                                cross_attention_dim=cross_attention_dim,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2)
    return dict(cls=StableDiffusionPipeline, unet=unet, vae=_vae(), scheduler=_scheduler(),
                text_encoder=CLIPTextModel(_text_config(hidden_size=cross_attention_dim)))


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


def assemble(parts: dict):
    """The pipeline of a builder's `parts` (its class under "cls", its models by the pipeline's
    argument names). Every CLIP text encoder without a tokenizer gets the character tokenizer,
    sized to the encoder's positions; Stable Diffusion 1.x/2.x gets no safety checker."""
    from transformers import CLIPTextConfig, CLIPTokenizer

    parts = dict(parts)
    cls = parts.pop("cls")
    for name, encoder in list(parts.items()):
        tokenizer_name = name.replace("text_encoder", "tokenizer")
        config = getattr(encoder, "config", None)
        if name.startswith("text_encoder") and tokenizer_name not in parts and isinstance(config, CLIPTextConfig):
            with tempfile.TemporaryDirectory() as scratch:
                folder = write_clip_tokenizer(Path(scratch), config.max_position_embeddings)
                parts[tokenizer_name] = CLIPTokenizer.from_pretrained(folder)
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return cls(**parts)


def save_tiny_pipeline(kind: str, folder: Path, seed: int = 0) -> Path:
    """Build the test pipeline `kind` (a key of BUILDERS) and `save_pretrained` it into `folder`."""
    assemble(BUILDERS[kind](seed)).save_pretrained(folder)
    return folder


# ---- benchmark pipelines -------------------------------------------------------------------------

# Bumped when the architectures below change, so that cached folders are rebuilt.
BUILDER_VERSION = 1
SPEC_FILE = "bench_pipeline.json"


# Each architecture as data: the UNet's, the VAE's and the CLIP text encoder's settings (the
# UNet's sample_size and the VAE's follow from the resolution). The VAE shrinks a side by
# 2 ** (levels - 1): resolutions must be a multiple of that.
ARCHITECTURES = {
    # ~1.2M-parameter UNet, a factor-8 VAE with 4 latent channels (four levels, as in SD).
    "tiny": dict(
        unet=dict(layers_per_block=1, block_out_channels=(32, 48, 64), norm_num_groups=16, cross_attention_dim=32,
                  attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(layers_per_block=1, block_out_channels=(16, 32, 32, 32), norm_num_groups=8),
        text=dict(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=32)),
    # The memory benchmark's CPU architecture: three levels, a factor-4 VAE, 77 text positions.
    "small": dict(
        unet=dict(layers_per_block=1, block_out_channels=(32, 64, 64), norm_num_groups=32, cross_attention_dim=64,
                  attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(layers_per_block=1, block_out_channels=(32, 64, 64), norm_num_groups=32),
        text=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77)),
    # Stable Diffusion 1.5's published component configs (stable-diffusion-v1-5/*/config.json);
    # eos id 1 is the character tokenizer's (the real vocabulary's is 49407; only the length matters here).
    "sd15": dict(
        unet=dict(layers_per_block=2, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                  attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu", center_input_sample=False,
                  flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        vae=dict(layers_per_block=2, block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu"),
        text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)),
}


def vae_factor(arch: str) -> int:
    return 2 ** (len(ARCHITECTURES[arch]["vae"]["block_out_channels"]) - 1)


def _bench_parts(arch: str, resolution: int) -> dict:
    """The models of `arch` at `resolution`, built in a fixed order (UNet, VAE, text) from the seed."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = ARCHITECTURES[arch]
    levels = len(config["vae"]["block_out_channels"])
    unet = UNet2DConditionModel(sample_size=resolution // vae_factor(arch), in_channels=4, out_channels=4,
                                **config["unet"])
    vae = AutoencoderKL(sample_size=resolution, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, **config["vae"])
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **config["text"]))
    return dict(cls=StableDiffusionPipeline, unet=unet, vae=vae, text_encoder=text, scheduler=_scheduler())


@dataclass(frozen=True)
class PipelineSpec:
    # A key of ARCHITECTURES.
    arch: str
    # Image side in pixels; the UNet's sample_size is this / the VAE factor.
    resolution: int
    # Seed of the random weights.
    seed: int = 0
    version: int = BUILDER_VERSION


def random_pipeline(arch: str, resolution: int, seed: int = 0, device=None):
    """The benchmark pipeline `arch` at `resolution`, random weights, built directly on `device`
    (SD 1.5's 860M-parameter UNet is slow to initialise on a CPU)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    if resolution % vae_factor(arch):
        raise ValueError(f"resolution {resolution} is not a multiple of {vae_factor(arch)} ({arch}'s VAE factor)")
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        parts = _bench_parts(arch, resolution)
    return assemble(parts)


def build_pipeline(spec: PipelineSpec, folder: Path) -> Path:
    """Build the pipeline `spec` describes and save it into `folder`; reuse it if already there."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # "Writing model shards" bars would break a benchmark's report.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    folder = Path(folder)
    marker = folder / SPEC_FILE
    if marker.is_file() and json.loads(marker.read_text()) == asdict(spec):
        return folder
    random_pipeline(spec.arch, spec.resolution, spec.seed).save_pretrained(folder)
    # Written last: a folder interrupted mid-save is rebuilt next time.
    marker.write_text(json.dumps(asdict(spec)))
    return folder


def pipeline_folder(spec: PipelineSpec, cache: Path) -> Path:
    """Where `spec` is cached under `cache`, built on first use."""
    return build_pipeline(spec, Path(cache) / f"{spec.arch}-{spec.resolution}px-seed{spec.seed}")


def unet_params(folder: Path) -> int:
    """Parameter count of a saved UNet, read from its safetensors header (no model built)."""
    from safetensors import safe_open

    total = 0
    for path in (Path(folder) / "unet").glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                total += int(torch.Size(f.get_slice(key).get_shape()).numel())
    return total


# ---- test rewards and an in-process CLI ----------------------------------------------------------

class Brightness(Reward):
    """Mean pixel value: a simple differentiable reward a tiny model can learn to raise."""

    def score(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))


class Thresholded(Brightness):
    differentiable = False


TEST_REWARDS = ("brightness", "nondiff")


def register_test_rewards() -> None:
    """`brightness` (differentiable) and `nondiff` (declared non-differentiable), for tests only."""
    register("brightness", "mean pixel value (tests)")(lambda device=None, dtype=None: Brightness().to(device))
    register("nondiff", "a non-differentiable reward (tests)", differentiable=False)(
        lambda device=None, dtype=None: Thresholded().to(device))


def unregister_test_rewards() -> None:
    for name in TEST_REWARDS:
        REGISTRY.pop(name, None)


def run_cli(args: list) -> int:
    """`alignkit ARGS` in this process (so test rewards are registered); the exit code."""
    from alignkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Save a pipeline with random weights (alignkit.testing).")
    parser.add_argument("kind", choices=[*BUILDERS, *ARCHITECTURES])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--resolution", type=int, default=64, help="benchmark architectures only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.kind in BUILDERS:
        folder = save_tiny_pipeline(args.kind, args.output_dir, args.seed)
    else:
        try:
            folder = build_pipeline(PipelineSpec(args.kind, args.resolution, args.seed), args.output_dir)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
    print(f"{folder}  (UNet {unet_params(folder) / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
