"""`aesthetic`: the LAION aesthetic predictor on CLIP ViT-L/14 image embeddings.

Two published heads read the L2-normalised 768-d image embedding of OpenAI's CLIP ViT-L/14:

- v2 (default), "improved aesthetic predictor" (christophschuhmann, file
  `sac+logos+ava1-l14-linearMSE.pth`): an MLP 768→1024→128→64→16→1 with dropout and no
  activations, so in eval mode the whole head is affine. trl's DDPO example publishes the
  same weights as `trl-lib/ddpo-aesthetic-predictor` / `aesthetic-model.pth`, which is what
  users of trl and AlignProp already have in their HF cache.
- v1 (LAION-AI/aesthetic-predictor, `sa_0_4_vit_l_14_linear.pth`): one Linear 768→1. It is
  published on GitHub, not under a hub id we can vouch for, so it loads from `head_path`.

Preprocessing follows the reference: shortest side to 224 (bicubic), centre crop, CLIP
mean/std, here with differentiable ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.errors import AlignkitError, CheckpointError, MissingWeightsError
from alignkit.hub import load_into, load_state_dict, resolve_file
from alignkit.rewards._clip_backbones import load_hf_clip, place
from alignkit.rewards.base import Reward, clip_pixels
from alignkit.rewards.registry import register

CLIP_MODEL = "openai/clip-vit-large-patch14"
EMBED_DIM = 768


class AestheticMLP(nn.Module):
    """The v2 head. Attribute and layer order give the checkpoint's keys `layers.{0,2,4,6,7}`."""

    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


@dataclass(frozen=True)
class HeadSpec:
    """Where a published head lives and the module its state dict fits."""

    # Hub repo id and file name; repo None when there is no hub copy (head_path required).
    repo: str | None
    filename: str
    build: Callable[[], nn.Module]
    # Where to get the file by hand, for the error message.
    origin: str


HEADS: dict[str, HeadSpec] = {
    "v2": HeadSpec("trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth", AestheticMLP,
                   "hf.co/trl-lib/ddpo-aesthetic-predictor or github.com/christophschuhmann/improved-aesthetic-predictor"),
    "v1": HeadSpec(None, "sa_0_4_vit_l_14_linear.pth", lambda: nn.Linear(EMBED_DIM, 1),
                   "github.com/LAION-AI/aesthetic-predictor"),
}


class AestheticReward(Reward):
    """Predicted aesthetic rating (roughly 1–10) of each image; prompts are ignored."""

    def __init__(self, vision: nn.Module, head: nn.Module):
        super().__init__()
        self.vision = vision
        self.head = head
        self.image_size = int(vision.config.image_size)

    def embed_images(self, images: Tensor) -> Tensor:
        """The CLIP image embedding the head reads (before its unit normalisation)."""
        return self.vision(pixel_values=clip_pixels(images, self.image_size, dtype=self.vision.dtype)).image_embeds

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        embedding = self.embed_images(images)
        # The heads were fitted on unit-norm embeddings, in float32.
        z = F.normalize(embedding.float(), dim=-1)
        return self.head(z.to(self.head_dtype)).squeeze(-1).float()

    @property
    def head_dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype


def load_head(version: str, head_path: str | None) -> nn.Module:
    spec = HEADS.get(str(version).lower())
    if spec is None:
        raise AlignkitError(f"aesthetic: unknown version '{version}'; choose one of {', '.join(HEADS)}")
    what = f"aesthetic {version} head"
    if spec.repo is None and head_path is None:
        raise MissingWeightsError(f"{what}: {spec.filename} has no hub copy; download it from {spec.origin} "
                                  f"and pass head_path=PATH")
    path = resolve_file(spec.repo, spec.filename, local=head_path, what=what, option="head_path")
    state = load_state_dict(path, what)
    head = spec.build()
    if isinstance(state, dict) and set(state) != set(head.state_dict()):
        # The two heads are easy to mix up by file name: say which one this file is.
        for other, other_spec in HEADS.items():
            if set(state) == set(other_spec.build().state_dict()):
                raise CheckpointError(f"{what}: {path} is a {other} head; pass version={other}")
    load_into(head, state, what)
    return head


@register(
    "aesthetic",
    "LAION aesthetic predictor on CLIP ViT-L/14 (v2 MLP, or v1 linear)",
    weights=((CLIP_MODEL, "model.safetensors"), (HEADS["v2"].repo, HEADS["v2"].filename)),
    differentiable=True,
    path_options=("head_path", "clip_model"),
)
def aesthetic(device=None, dtype=None, version: str = "v2", head_path: str | None = None,
              clip_model: str = CLIP_MODEL) -> AestheticReward:
    """`version` v2 (MLP, default) or v1 (linear); `head_path` a local head file (v1 needs
    one); `clip_model` a transformers CLIP hub id or folder."""
    head = load_head(version, head_path)  # the small file first: a bad head fails fast
    vision = load_hf_clip(clip_model, what="aesthetic CLIP model", option="clip_model", vision_only=True)
    dim = vision.config.projection_dim
    if dim != EMBED_DIM:
        raise AlignkitError(f"aesthetic: the head reads {EMBED_DIM}-d ViT-L/14 embeddings but {clip_model} "
                            f"gives {dim}-d ones; pass clip_model= a ViT-L/14 CLIP")
    reward = place(AestheticReward(vision, head), device, dtype)
    # The head stays float32 whatever the backbone's dtype: it is tiny, and its weights
    # (norm ~18 on a unit vector) would amplify half-precision rounding.
    reward.head.float()
    return reward
