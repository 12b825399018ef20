"""Stable Diffusion pipelines with random weights, built from configs, for the benchmarks.

Both trainers under comparison load the same folder with `from_pretrained`, so it is saved
with `save_pretrained` in the real layout (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/). Two architectures:

    tiny   a ~1.2M-parameter cross-attention UNet, a factor-8 VAE, a 2-layer CLIP text encoder:
           the size of the CPU peer figures (trl 0.23 on a 2-core CPU); any resolution that is a multiple of 8
    sd15   Stable Diffusion 1.5's published configs (860M UNet, 84M VAE, 123M ViT-L/14 text
           encoder), random weights: for GPU timings at 512 px without downloading anything

The tokenizer is a character-level CLIP BPE written offline (no merges: every word splits into
characters), so nothing is fetched; only the sequence length (77 for sd15) affects compute.
The trainers read the resolution from `unet.config.sample_size` (trl's AlignPropTrainer has no
height/width option), so a pipeline is built per resolution.

    python benchmarks/tiny_pipeline.py tiny --resolution 64 OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import string
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Bumped when the architectures below change, so that cached folders are rebuilt.
BUILDER_VERSION = 1
SPEC_FILE = "bench_pipeline.json"
VAE_FACTOR = 8


@dataclass(frozen=True)
class PipelineSpec:
    # "tiny" or "sd15".
    arch: str
    # Image side in pixels; the UNet's sample_size is this / 8.
    resolution: int
    # Seed of the random weights.
    seed: int = 0
    version: int = BUILDER_VERSION


def write_char_tokenizer(folder: Path, max_length: int):
    """A CLIP tokenizer over printable characters, saved as vocab.json + merges.txt like the real one."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=max_length, pad_token="<|endoftext|>")


def _scheduler():
    from diffusers import DDIMScheduler

    # SD 1.5's scheduler config (the trainers both swap in DDIM from it).
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)


def _tiny_parts(resolution: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=resolution // VAE_FACTOR, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 48, 64), norm_num_groups=16, cross_attention_dim=32, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    # Four levels, as in SD: a factor-8 autoencoder with 4 latent channels.
    vae = AutoencoderKL(
        sample_size=resolution, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return unet, vae, text, 32


def _sd15_parts(resolution: int):
    """Stable Diffusion 1.5's published component configs (stable-diffusion-v1-5/*/config.json)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=resolution // VAE_FACTOR, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu", center_input_sample=False, flip_sin_to_cos=True,
        freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(
        sample_size=resolution, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu",
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return unet, vae, text, 77


ARCHITECTURES = {"tiny": _tiny_parts, "sd15": _sd15_parts}


def build_pipeline(spec: PipelineSpec, folder: Path) -> Path:
    """Build the pipeline `spec` describes and save it into `folder`; reuse it if already there."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # "Writing model shards" bars would break the report.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if spec.arch not in ARCHITECTURES:
        raise SystemExit(f"error: unknown architecture '{spec.arch}'; choose from {', '.join(ARCHITECTURES)}")
    if spec.resolution % VAE_FACTOR:
        raise SystemExit(f"error: resolution {spec.resolution} is not a multiple of {VAE_FACTOR}")
    folder = Path(folder)
    marker = folder / SPEC_FILE
    if marker.is_file() and json.loads(marker.read_text()) == asdict(spec):
        return folder
    torch.manual_seed(spec.seed)
    unet, vae, text, max_length = ARCHITECTURES[spec.arch](spec.resolution)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_char_tokenizer(Path(scratch), max_length)
        pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                                       scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(folder)
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
                total += _prod(f.get_slice(key).get_shape())
    return total


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arch", choices=sorted(ARCHITECTURES))
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = build_pipeline(PipelineSpec(args.arch, args.resolution, args.seed), args.output_dir)
    print(f"{folder}  (UNet {unet_params(folder) / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
