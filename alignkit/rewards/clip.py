"""`clip`: the CLIP score, `100 * cos(image_i, prompt_i)`, with a transformers CLIP model.

Unlike torchmetrics' CLIPScore this is not clamped at 0: a clamp has zero gradient wherever
image and prompt disagree, which is exactly where a training reward must push.
Preprocessing as CLIP's processor: shortest side to the model's input size (224 for the
default ViT-L/14, bicubic), centre crop, CLIP mean/std, with differentiable ops.
"""

from __future__ import annotations

from alignkit.rewards._clip_backbones import (ContrastiveReward, HFClipTowers, load_hf_clip,
                                              load_hf_tokenizer, place)
from alignkit.rewards.base import resize_shortest_crop
from alignkit.rewards.registry import register

MODEL = "openai/clip-vit-large-patch14"
SCALE = 100.0


@register(
    "clip",
    "CLIP score: 100 x image-prompt cosine, unclamped",
    weights=((MODEL, "model.safetensors"),),
    differentiable=True,
    path_options=("model",),
)
def clip(device=None, dtype=None, model: str = MODEL) -> ContrastiveReward:
    """`model` a transformers CLIP hub id or folder (its tokenizer is read from the same place)."""
    tokenizer = load_hf_tokenizer(model, what="clip tokenizer", option="model")
    towers = HFClipTowers(load_hf_clip(model, what="clip model", option="model"), tokenizer)
    return place(ContrastiveReward(towers, resize_shortest_crop, scale=SCALE), device, dtype)
