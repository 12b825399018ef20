"""The frozen image (and text) towers a fitted head reads, named by a backbone spec.

    openai/clip-vit-large-patch14     a transformers CLIP, hub id or folder (the default, as LAION)
    hf:PATH_OR_ID                     the same, explicitly
    open_clip:ARCH@CHECKPOINT         an open_clip architecture filled from a checkpoint file
    reward:NAME                       a registered reward that exposes embeddings (e.g. toy_clip)

Each loads through the rewards library's own loaders (same checks, same one-line errors) and
is wrapped as an `Embedder`: [0,1] images of any size -> unit-norm embeddings, differentiably,
with the backbone's preprocessing inside, so that the fitted reward at training time computes
exactly the features the head was fitted on. `key` names the weights for the embedding cache;
`describe()` is what reward.json records.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.errors import AlignkitError
from alignkit.rewards._clip_backbones import (
    HFClipTowers, OpenClipTowers, clip_pixels, encode_prompts, fetch, load_hf_clip, load_hf_tokenizer,
    load_open_clip, split_source,
)
from alignkit.rewards.base import CLIP_MEAN, CLIP_STD, Reward, resize_shortest_crop, state_digest

DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"


class Embedder(nn.Module):
    """Unit-norm image (and text) embeddings from [0,1] images; frozen."""

    def __init__(self, spec: str, kind: str, source: str, revision: str, preprocessing: dict):
        super().__init__()
        self.spec, self.kind, self.source, self.revision = spec, kind, source, revision
        self.preprocessing = preprocessing

    @property
    def key(self) -> str:
        """What identifies these weights and this preprocessing, for the embedding cache."""
        return f"{self.kind}|{self.source}|{self.revision}|{sorted(self.preprocessing.items())}"

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "id": self.source, "revision": self.revision,
                "preprocessing": self.preprocessing}

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters())).device

    def embed_images(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def embed_texts(self, prompts: list[str]) -> Tensor:
        raise NotImplementedError


class TowersEmbedder(Embedder):
    """A transformers or open_clip CLIP: CLIP preprocessing (shortest side, centre crop)."""

    def __init__(self, towers: nn.Module, spec: str, kind: str, source: str, revision: str):
        size = int(towers.image_size)
        super().__init__(spec, kind, source, revision,
                         {"resize": "shortest_side_center_crop", "size": size, "interpolation": "bicubic",
                          "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "embedding": "l2-normalised"})
        self.towers = towers
        self.size = size

    def embed_images(self, images: Tensor) -> Tensor:
        dtype = next(self.towers.parameters()).dtype
        pixels = clip_pixels(images.to(self.device), self.size, resize_shortest_crop, dtype)
        return F.normalize(self.towers.encode_images(pixels).float(), dim=-1)

    def embed_texts(self, prompts: list[str]) -> Tensor:
        if not hasattr(self.towers, "encode_texts"):
            raise AlignkitError(f"backbone {self.spec} was loaded without its text tower")
        return F.normalize(encode_prompts(self.towers.encode_texts, prompts).float(), dim=-1)


class VisionTower(nn.Module):
    """A transformers CLIPVisionModelWithProjection behind `encode_images` (no text tower:
    the image-only fit does not load one)."""

    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision
        self.image_size = int(vision.config.image_size)

    def encode_images(self, pixels: Tensor) -> Tensor:
        return self.vision(pixel_values=pixels).image_embeds


class RewardEmbedder(Embedder):
    """A registered reward that exposes `embed_images` (and `embed_text`): its own preprocessing."""

    def __init__(self, reward: nn.Module, name: str, revision: str):
        super().__init__(f"reward:{name}", "reward", name, revision, {"resize": f"as the reward '{name}'",
                                                                      "embedding": "l2-normalised"})
        self.reward = reward

    def embed_images(self, images: Tensor) -> Tensor:
        return F.normalize(self.reward.embed_images(images.to(self.device)).float(), dim=-1)

    def embed_texts(self, prompts: list[str]) -> Tensor:
        embed = getattr(self.reward, "embed_text", None) or getattr(self.reward, "embed_texts", None)
        if embed is None:
            raise AlignkitError(f"backbone {self.spec} has no text embedding; fit without --with-prompt")
        with torch.no_grad():
            return F.normalize(embed(list(prompts)).float(), dim=-1)

    @property
    def device(self) -> torch.device:
        return self.reward.device


def _hf(source: str, with_text: bool, spec: str) -> Embedder:
    what, option = f"backbone {source}", "--backbone"
    if Path(source).expanduser().is_dir():
        # reward.json records the spec: an absolute folder loads from any working directory.
        source = spec = str(Path(source).expanduser().resolve())
    if with_text:
        towers = HFClipTowers(load_hf_clip(source, what=what, option=option),
                              load_hf_tokenizer(source, what=what, option=option))
    else:
        towers = VisionTower(load_hf_clip(source, what=what, option=option, vision_only=True))
    return TowersEmbedder(towers, spec, "hf", source, _hf_revision(source, what))


def _open_clip(source: str, with_text: bool, spec: str) -> Embedder:
    arch, at, checkpoint = source.partition("@")
    if not at or not arch or not checkpoint:
        raise AlignkitError(f"--backbone {spec}: an open_clip backbone is open_clip:ARCH@CHECKPOINT, "
                            "e.g. open_clip:ViT-H-14@HPS_v2.1_compressed.pt")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise AlignkitError(f"--backbone {spec}: no checkpoint file at {path}")
    model = load_open_clip(arch, path, what=f"backbone {spec}")
    source = f"{arch}@{path.resolve()}"
    return TowersEmbedder(OpenClipTowers(model, arch), f"open_clip:{source}", "open_clip", source,
                          file_fingerprint(path))


def _reward(source: str, with_text: bool, spec: str) -> Embedder:
    from alignkit.rewards.registry import build

    reward = build(source)
    # Every Reward has embed_images; the base class's returns None (no image encoder).
    if type(reward).embed_images is Reward.embed_images:
        raise AlignkitError(f"--backbone {spec}: reward '{source}' exposes no embed_images(); "
                            "pick a CLIP backbone or a reward that embeds images (e.g. toy_clip)")
    return RewardEmbedder(reward, source, module_fingerprint(reward))


# Backbone kinds by their spec prefix; a spec without a known prefix is a transformers CLIP.
BACKBONES: dict[str, Callable[[str, bool, str], Embedder]] = {"hf": _hf, "open_clip": _open_clip, "reward": _reward}


def load_backbone(spec: str | None, with_text: bool = False, device=None) -> Embedder:
    """The frozen embedder a backbone spec names, on `device`."""
    spec = spec or DEFAULT_BACKBONE
    prefix, colon, rest = spec.partition(":")
    kind, source = (prefix, rest) if colon and prefix in BACKBONES else ("hf", spec)
    embedder = BACKBONES[kind](source, with_text, spec)
    embedder.requires_grad_(False).eval()
    return embedder.to(device or "cpu")


def _hf_revision(source: str, what: str) -> str:
    """The hub commit a cached transformers model resolved to, or a fingerprint of a local folder's weights."""
    repo, folder = split_source(source, what, "--backbone")
    if folder is not None:
        from alignkit.rewards._clip_backbones import WEIGHT_FILES

        weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
        return file_fingerprint(weights) if weights else "unknown"
    config = fetch(source, "config.json", what=what, option="--backbone")
    return config.parent.name if config.parent.parent.name == "snapshots" else "unknown"


def file_fingerprint(path: Path, chunk: int = 4 << 20) -> str:
    """sha256 of a file's size and its first and last 4 MiB: cheap for multi-GB checkpoints,
    and any re-download or retraining changes it."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(chunk))
        f.seek(max(0, path.stat().st_size - chunk))
        digest.update(f.read(chunk))
    return "sha256-ends:" + digest.hexdigest()[:16]


def module_fingerprint(module: nn.Module) -> str:
    return "sha256-weights:" + state_digest(module)
