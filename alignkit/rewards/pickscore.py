"""`pickscore`: PickScore (Kirstain et al. 2023), a CLIP ViT-H/14 fine-tuned on Pick-a-Pic.

Score = `logit_scale.exp() * cos(image_i, prompt_i)`: the diagonal, image i with prompt i.
(The model card's snippet scores every image against one prompt; scoring a batch with
several prompts by taking row 0 of the similarity matrix is a known bug in code derived
from it.) The weights are a transformers CLIPModel in `yuvalkirstain/PickScore_v1`; the
tokenizer is the one of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`, PickScore's base model.

Preprocessing as that processor does: shortest side to 224 (bicubic), centre crop, CLIP
mean/std, here with differentiable ops.
"""

from __future__ import annotations

from alignkit.rewards._clip_backbones import (ContrastiveReward, HFClipTowers, load_hf_clip,
                                              load_hf_tokenizer, place)
from alignkit.rewards.base import resize_shortest_crop
from alignkit.rewards.registry import register

MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@register(
    "pickscore",
    "PickScore v1: logit-scaled CLIP ViT-H/14 cosine",
    weights=((MODEL, "model.safetensors"), (PROCESSOR, "tokenizer_config.json")),
    differentiable=True,
    path_options=("model", "processor"),
)
def pickscore(device=None, dtype=None, model: str = MODEL, processor: str = PROCESSOR) -> ContrastiveReward:
    """`model` a transformers CLIP hub id or folder; `processor` where its tokenizer lives."""
    tokenizer = load_hf_tokenizer(processor, what="pickscore processor", option="processor")
    clip = load_hf_clip(model, what="pickscore model", option="model")
    towers = HFClipTowers(clip, tokenizer)
    # The trained temperature is part of the score's scale (about 100 for PickScore_v1).
    reward = ContrastiveReward(towers, resize_shortest_crop, scale=clip.logit_scale.detach().float().exp())
    return place(reward, device, dtype)
