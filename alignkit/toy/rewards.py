"""The toy world's text-image reward: `toy_clip`, a small CLIP trained on the world.

Same score as the `clip` reward, 100 × cosine of image i's and prompt i's embeddings, with
the preprocessing inside (64 px, CLIP mean/std) so that gradients reach the pixels. Its
weights ship with alignkit, so it is always available. It is the held-out reward when a
toy model is aligned on `count`: it sees colour, shape and background as well as number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.hub import resolve_pretrained
from alignkit.rewards.base import Reward, clip_pixels
from alignkit.rewards.registry import register
from alignkit.toy import world


class ToyCLIPReward(Reward):
    name = "toy_clip"

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def embed_text(self, prompts: list[str]) -> Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return F.normalize(self.model.get_text_features(input_ids=ids).pooler_output.float(), dim=-1)

    def embed_images(self, images: Tensor) -> Tensor:
        pixels = clip_pixels(images.to(self.device), world.IMAGE_SIZE, dtype=self.dtype)
        return F.normalize(self.model.get_image_features(pixel_values=pixels).pooler_output.float(), dim=-1)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        # Only the diagonal: image i with its own prompt i.
        return 100.0 * (self.embed_images(images) * self.embed_text(prompts)).sum(dim=-1)


@register("toy_clip", "toy world CLIP: 100·cosine(image, prompt), trained on the world's scenes",
          bundled=True, differentiable=True)
def toy_clip(device=None, dtype=None, path: str | None = None) -> ToyCLIPReward:
    """`path` points at another folder in the same layout (a retrained toy CLIP)."""
    from transformers import CLIPModel, CLIPTokenizer

    from alignkit.toy import clip_path

    folder = resolve_pretrained(str(path), "toy_clip") if path is not None else str(clip_path())
    # The weights are stored in fp16; compute in float32 unless asked otherwise (CPU has no fast fp16).
    model = CLIPModel.from_pretrained(folder, dtype=dtype or torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    return ToyCLIPReward(model.to(device or "cpu"), tokenizer)
