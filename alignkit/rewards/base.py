"""The reward interface and the differentiable preprocessing every backbone shares.

A reward is a frozen `nn.Module`: `reward(images, prompts)` takes float images `(B,3,H,W)`
in [0,1] of any size and B prompts, and returns a `(B,)` float tensor, higher is better,
differentiable with respect to the images. Resizing and normalisation happen inside, with
differentiable ops, so that the aligner can hand over its decoded samples as they are.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.errors import AlignkitError

# OpenAI CLIP's pixel statistics, used by every CLIP-family backbone here.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# A differentiable resize: (images, side) -> images of side x side.
Resize = Callable[[Tensor, int], Tensor]

# Decoded samples are clamped to [0,1]; allow float noise from dtype casts above that.
_RANGE_TOLERANCE = 1e-3


class InputError(AlignkitError, ValueError):
    """Images or prompts that do not fit the reward interface."""


class Reward(nn.Module):
    """Base class: subclasses set `name` and implement `score(images, prompts)`."""

    name: str = "reward"
    differentiable: bool = True
    # Columns of `targets()` computed with this reward's own weights (the count detector's NMS
    # count): the aligner optimised against those weights and can fool them, so evaluation
    # labels them proxies, never true targets. A target with no weights (a real JPEG size) is
    # independent and stays off this list.
    proxy_targets: frozenset[str] = frozenset()

    def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
        check_inputs(images, prompts)
        return self.score(images, prompts)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        raise NotImplementedError

    def with_parts(self, images: Tensor, prompts: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """The total reward and each named part (one part for a single reward), from one pass."""
        total = self(images, prompts)
        return total, {self.name: total}

    def embed_images(self, images: Tensor) -> Tensor | None:
        """Optional: this reward's image embedding, `(B, D)`, for images as `forward` takes them.

        Evaluation measures over-optimisation in it: diversity across the seeds of a prompt
        and drift from the base model's image, as 1 - cosine (so the scale of the features
        does not matter). A reward built on an image encoder (the CLIP family) returns that
        encoder's features, through the reward's own preprocessing; None (the default) means
        it has none, and evaluation uses another reward's or falls back to pixels.
        """
        return None

    @torch.no_grad()
    def targets(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        """The quantities this reward stands for, usually non-differentiable (a real JPEG size,
        a detector count with NMS), for evaluation; those named in `proxy_targets` are read
        with the reward's own weights. None by default."""
        return {}

    def freeze(self) -> "Reward":
        """No parameter of a reward ever trains, and dropout never fires."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Reward":
        # A parent calling .train() must not switch a reward's heads into dropout mode.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.parameters():
            return tensor.dtype
        return torch.float32


def check_inputs(images: Tensor, prompts: list[str]) -> None:
    """Raise one clear line when images or prompts do not fit the interface."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"images must be a float tensor of shape (B,3,H,W), got {shape}")
    if not images.is_floating_point():
        raise InputError(f"images must be float in [0,1], got dtype {images.dtype}; divide uint8 images by 255")
    if isinstance(prompts, str):
        raise InputError("prompts must be a list of strings, one per image, not a single string")
    if len(prompts) != images.shape[0]:
        raise InputError(f"got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image")
    lo, hi = images.detach().aminmax()
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise InputError(
            f"images must be in [0,1], got values in [{lo.item():.3g}, {hi.item():.3g}]; "
            "map [-1,1] samples with (x + 1) / 2"
        )


def check_prompts(reward: nn.Module, prompts: list[str]) -> None:
    """Raise one line for a prompt the reward cannot read, before any work depends on it.

    Rewards that read something from the prompt (count: a number and an object class) expose
    `parse(prompts)`, which raises an `AlignkitError` naming the prompt; the others accept any
    text. A combination checks each of its parts.
    """
    for part in getattr(reward, "rewards", {"": reward}).values():
        parse = getattr(part, "parse", None)
        if callable(parse):
            parse(list(prompts))


def resize_shortest_crop(images: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """CLIP's preprocessing: shortest side to `size`, then a centre crop, differentiably."""
    h, w = images.shape[-2:]
    # As torchvision's Resize(int) and CLIPImageProcessor: the long side is truncated, not rounded.
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode=mode, align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return images[..., top:top + size, left:left + size]


def resize_longest_pad(images: Tensor, size: int, fill: float = 0.0, mode: str = "bicubic") -> Tensor:
    """HPSv2's preprocessing: longest side to `size`, then pad to a square, differentiably."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode=mode, align_corners=False, antialias=True)
    pad_h, pad_w = size - nh, size - nw
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)


def normalize(images: Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    mean_t = images.new_tensor(mean).view(1, -1, 1, 1)
    std_t = images.new_tensor(std).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_pixels(images: Tensor, size: int, resize: Resize = resize_shortest_crop,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """[0,1] images of any size and dtype -> a CLIP backbone's input of `size`, differentiably:
    `resize` (CLIP's shortest side + centre crop by default; HPS pads instead), then CLIP's
    mean and std.

    Resizing runs in float32 (antialiased bicubic is not implemented for half on every
    device); the result is cast to the backbone's `dtype`.
    """
    return normalize(resize(images.float(), size)).to(dtype)


def state_digest(module: nn.Module) -> str:
    """A fingerprint of a module's weights (names and values): equal digests, equal weights.
    Tells a judge's detector from the reward's, and keys a fitted reward's embedding cache."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
