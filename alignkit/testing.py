"""Pipelines with random weights and rewards for tests: what the test suite, the benchmarks and
a plugin's own tests build on (as `diffusers.utils.testing_utils` is for diffusers).

The pipelines are built from configs and saved with `save_pretrained`, so they have the real
pipelines' classes, folder layouts and file names (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/): the loading code that reads them is the code that reads
the real checkpoints. The tokenizers are written offline: a character-level CLIP BPE (no
merges, so every word splits into characters, which keeps transformers' vocabulary checks
satisfied) and, for T5, a Unigram whose pieces are single characters; nothing is downloaded.

Two tables of architectures:

    BUILDERS       for tests, seconds on a CPU, at RESOLUTION:
                   sd     StableDiffusionPipeline: UNet blocks (4,8), 2-layer text encoder
                   sdxl   StableDiffusionXLPipeline: two text encoders, pooled embeddings, time ids
                   sd3    StableDiffusion3Pipeline: MMDiT (patch 2), CLIP-L + CLIP-G + T5, shift 3.0
                   flux   FluxPipeline like FLUX.1-dev: guidance embedding, dynamic shift
                   flux-schnell  FluxPipeline like FLUX.1-schnell: no guidance embedding, no shift
    ARCHITECTURES  for benchmarks, at any resolution that is a multiple of the family's size step:
                   tiny   a ~1.2M-parameter UNet, a factor-8 VAE (the CPU peer comparisons)
                   small  a ~1.5M-parameter UNet, a factor-4 VAE (memory_scaling's CPU grid)
                   sd15   Stable Diffusion 1.5's published configs (860M UNet), for GPU timings
                   sd35m  Stable Diffusion 3.5 medium's published configs (MMDiT-X, 24 layers)
                   flux1  FLUX.1-dev's published configs (19 double + 38 single blocks)

    python -m alignkit.testing sd OUT_DIR
    python -m alignkit.testing flux OUT_DIR
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

from alignkit.families import vae_factor_of
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


def write_t5_tokenizer(folder: Path) -> Path:
    """A T5 tokenizer (transformers' Unigram backend) whose pieces are single characters."""
    from transformers import T5TokenizerFast

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    # T5's layout: <pad>=0, </s>=1, <unk>=2, then the pieces ("\u2581" marks a word start).
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0),
             *((c, -2.0) for c in chars), *(("\u2581" + c, -2.5) for c in chars)]
    T5TokenizerFast(vocab=vocab, extra_ids=0).save_pretrained(folder)
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


# T5's hidden size in the flow test pipelines; SD3 pads the two CLIPs' concatenated hidden
# states (32 + 32) up to it.
T5_DIM = 64


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=160, d_model=T5_DIM, d_kv=16, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1))


def _flow_vae(shift_factor: float, scaling_factor: float):
    """Four blocks (factor 8, so the family's size step is the real 16: a 4x4 latent at RESOLUTION,
    2x2 = 4 transformer tokens) and 4 latent channels; the real models' shift and scale."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(4, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         norm_num_groups=2, sample_size=RESOLUTION, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=shift_factor, scaling_factor=scaling_factor)


# The flow-matching test pipelines follow diffusers' own pipeline tests
# (tests/pipelines/stable_diffusion_3, tests/pipelines/flux), with the real models' scheduler
# settings and VAE shift/scaling factors, so that the sigma shifts and the decode are the real ones.

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
                vae=_flow_vae(shift_factor=0.0609, scaling_factor=1.5305),
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
                vae=_flow_vae(shift_factor=0.1159, scaling_factor=0.3611),
                text_encoder=CLIPTextModel(_text_config(projection_dim=32)), text_encoder_2=_t5())


def build_flux(seed: int = 0):
    """A tiny FLUX.1-dev-like `FluxPipeline` (guidance embedding, dynamic shift)."""
    return _build_flux(seed, dev=True)


def build_flux_schnell(seed: int = 0):
    """A tiny FLUX.1-schnell-like `FluxPipeline` (no guidance embedding, no shift)."""
    return _build_flux(seed, dev=False)


BUILDERS = {"sd": build_sd, "sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux,
            "flux-schnell": build_flux_schnell}


def assemble(parts: dict):
    """The pipeline of a builder's `parts` (its class under "cls", its models by the pipeline's
    argument names). Every CLIP text encoder without a tokenizer gets the character tokenizer,
    sized to the encoder's positions, every T5 encoder the character T5 tokenizer; Stable
    Diffusion 1.x/2.x gets no safety checker."""
    from transformers import CLIPTextConfig, CLIPTokenizer, T5Config, T5TokenizerFast

    parts = dict(parts)
    cls = parts.pop("cls")
    for name, encoder in list(parts.items()):
        tokenizer_name = name.replace("text_encoder", "tokenizer")
        config = getattr(encoder, "config", None)
        if not name.startswith("text_encoder") or tokenizer_name in parts:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            if isinstance(config, CLIPTextConfig):
                folder = write_clip_tokenizer(Path(scratch), config.max_position_embeddings)
                parts[tokenizer_name] = CLIPTokenizer.from_pretrained(folder)
            elif isinstance(config, T5Config):
                parts[tokenizer_name] = T5TokenizerFast.from_pretrained(write_t5_tokenizer(Path(scratch)))
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


# Each architecture as data. The UNet ones: the UNet's, the VAE's and the CLIP text encoder's
# settings (the UNet's sample_size and the VAE's follow from the resolution). The VAE shrinks a
# side by 2 ** (levels - 1): resolutions must be a multiple of that. The flow-matching ones
# (a "family" key): every component's published config.json, the text encoders with their class.
# The flow-matching architectures' shared components (their published config.json values).
_FLOW_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
                 down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                 layers_per_block=2, norm_num_groups=32, sample_size=1024, use_quant_conv=False,
                 use_post_quant_conv=False, force_upcast=True)
# eos id 1 is the character tokenizer's, as for sd15.
_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
               num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0,
               eos_token_id=1, pad_token_id=1)
_CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, projection_dim=1280, num_hidden_layers=32,
               num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", bos_token_id=0,
               eos_token_id=1, pad_token_id=1)
_T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
               decoder_start_token_id=0)

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
    # stabilityai/stable-diffusion-3.5-medium: MMDiT-X, 24 layers, dual attention in 0-12,
    # CLIP-L + CLIP-G + T5-XXL, a 16-channel VAE.
    "sd35m": dict(
        family="sd3",
        vae=dict(_FLOW_VAE, scaling_factor=1.5305, shift_factor=0.0609),
        scheduler=dict(num_train_timesteps=1000, shift=3.0),
        transformer=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                         attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                         caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                         qk_norm="rms_norm", dual_attention_layers=list(range(13))),
        text_encoders=dict(text_encoder=("CLIPTextModelWithProjection", _CLIP_L),
                           text_encoder_2=("CLIPTextModelWithProjection", _CLIP_G),
                           text_encoder_3=("T5EncoderModel", _T5_XXL))),
    # black-forest-labs/FLUX.1-dev: 19 double + 38 single blocks, guidance embedding,
    # CLIP-L + T5-XXL, a 16-channel VAE.
    "flux1": dict(
        family="flux",
        vae=dict(_FLOW_VAE, scaling_factor=0.3611, shift_factor=0.1159),
        scheduler=dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                       base_image_seq_len=256, max_image_seq_len=4096),
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         guidance_embeds=True, axes_dims_rope=[16, 56, 56]),
        text_encoders=dict(text_encoder=("CLIPTextModel", _CLIP_L), text_encoder_2=("T5EncoderModel", _T5_XXL))),
}
# The pipeline and denoiser classes of the flow-matching families.
FLOW_CLASSES = {"sd3": ("StableDiffusion3Pipeline", "SD3Transformer2DModel"),
                "flux": ("FluxPipeline", "FluxTransformer2DModel")}


def vae_factor(arch: str) -> int:
    return vae_factor_of(ARCHITECTURES[arch]["vae"]["block_out_channels"])


def size_step(arch: str) -> int:
    """What a resolution of `arch` must be a multiple of: the VAE factor, x2 for the flow
    families (SD3's patch size 2, FLUX's 2x2 latent packing)."""
    return vae_factor(arch) * (2 if "family" in ARCHITECTURES[arch] else 1)


def _flow_parts(arch: str) -> dict:
    """The models of the flow-matching `arch` from its configs, built in a fixed order (VAE, the
    first text encoder, transformer, the other text encoders) from the seed."""
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    config = ARCHITECTURES[arch]
    pipeline, transformer = FLOW_CLASSES[config["family"]]

    def text_encoder(name):
        cls_name, settings = config["text_encoders"][name]
        config_cls = transformers.T5Config if cls_name.startswith("T5") else transformers.CLIPTextConfig
        return getattr(transformers, cls_name)(config_cls(**settings))

    parts = dict(cls=getattr(diffusers, pipeline), vae=AutoencoderKL.from_config(config["vae"]),
                 text_encoder=text_encoder("text_encoder"),
                 scheduler=FlowMatchEulerDiscreteScheduler.from_config(config["scheduler"]),
                 transformer=getattr(diffusers, transformer).from_config(config["transformer"]))
    parts.update({name: text_encoder(name) for name in config["text_encoders"] if name != "text_encoder"})
    return parts


def _bench_parts(arch: str, resolution: int) -> dict:
    """The models of `arch` at `resolution`, built in a fixed order (UNet, VAE, text) from the seed."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = ARCHITECTURES[arch]
    if "family" in config:
        return _flow_parts(arch)
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


def random_pipeline(arch: str, resolution: int, seed: int = 0, device=None, dtype=None):
    """The benchmark pipeline `arch` at `resolution`, random weights, built directly on `device`
    (SD 1.5's 860M-parameter UNet is slow to initialise on a CPU) and, given `dtype`, made in it
    (FLUX.1's 12B parameters in fp32 would take 48 GB and minutes). `arch` may also be a key of
    BUILDERS: that test pipeline at its own size (the resolution is then checked when it loads)."""
    if arch not in ARCHITECTURES and arch not in BUILDERS:
        raise ValueError(f"unknown architecture '{arch}'; choose from {', '.join([*ARCHITECTURES, *BUILDERS])}")
    if arch in ARCHITECTURES and resolution % size_step(arch):
        raise ValueError(f"resolution {resolution} is not a multiple of {size_step(arch)} ({arch}'s size step)")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        with torch.device(device or "cpu"):
            parts = BUILDERS[arch](seed) if arch in BUILDERS else _bench_parts(arch, resolution)
    finally:
        torch.set_default_dtype(previous)
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


def denoiser_params(folder: Path) -> int:
    """Parameter count of a saved UNet or transformer, read from its safetensors header (no model built)."""
    from safetensors import safe_open

    total = 0
    for path in [*(Path(folder) / "unet").glob("*.safetensors"), *(Path(folder) / "transformer").glob("*.safetensors")]:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                total += int(torch.Size(f.get_slice(key).get_shape()).numel())
    return total


# ---- test rewards ----------------------------------------------------------------------------

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
    denoiser = "UNet" if (folder / "unet").is_dir() else "transformer"
    print(f"{folder}  ({denoiser} {denoiser_params(folder) / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
