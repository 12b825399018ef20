"""The embedded toy world: a procedural scene generator and the small models trained on it.

The trained parts ship as package data under `weights/`; these helpers return their folders
without importing torch, so `import alignkit.toy` stays cheap.

    from diffusers import StableDiffusionPipeline
    from alignkit.toy import pipeline_path
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path())
"""

from __future__ import annotations

from pathlib import Path

from alignkit.errors import MissingWeightsError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Each bundled part: its folder under weights/, the file that proves it is complete, and
# the command that rebuilds it.
_PARTS = {
    "pipeline": ("pipeline", "unet/diffusion_pytorch_model.safetensors", "unet"),
    "flow pipeline": ("pipeline-flow", "transformer/diffusion_pytorch_model.safetensors", "flow"),
    "detector": ("detector", "model.safetensors", "detector"),
    "clip": ("clip", "model.safetensors", "clip"),
}


def _bundled(part: str) -> Path:
    folder, probe, trainer = _PARTS[part]
    path = WEIGHTS_DIR / folder
    if not (path / probe).is_file():
        raise MissingWeightsError(
            f"toy {part}: {path / probe} is missing from this install; reinstall alignkit or "
            f"rebuild it from a source checkout with `python -m toy_build.train {trainer}`"
        )
    return path


def pipeline_path() -> Path:
    """The toy Stable Diffusion pipeline folder (for `StableDiffusionPipeline.from_pretrained`)."""
    return _bundled("pipeline")


def flow_pipeline_path() -> Path:
    """The toy Stable Diffusion 3 pipeline folder (flow matching; no T5: load it with
    `StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)`)."""
    return _bundled("flow pipeline")


def detector_path() -> Path:
    """The toy YOLO detector folder: `model.yaml` and `model.safetensors`."""
    return _bundled("detector")


def clip_path() -> Path:
    """The toy CLIP folder (transformers `CLIPModel` with its tokenizer and processor)."""
    return _bundled("clip")


__all__ = ["WEIGHTS_DIR", "clip_path", "detector_path", "flow_pipeline_path", "pipeline_path"]
