"""`hps`: Human Preference Score v2 / v2.1 (Wu et al. 2023), an open_clip ViT-H-14 fine-tuned
on human preferences.

Score = cosine of the normalised image and text features, image i with prompt i, without the
logit scale (as HPSv2's own `score()` computes it). The checkpoints in `xswu/HPSv2` replace
every weight of the model, so the architecture is built empty from open_clip's config and
filled from the checkpoint: the laion2B weights are never downloaded first, as the original
code does.

v2.1 is the default: it is the authors' latest release of the model and the checkpoint that
recent reward-alignment code (DanceGRPO and others) downloads, so results stay comparable
with current work. The `hpsv2` package still defaults to v2.0 and the two scales differ, so
compare numbers only within one version (`version="v2.0"` reproduces the older one).

Preprocessing as HPSv2's evaluation transform: longest side to 224 (bicubic), zero padding
to a square, CLIP mean/std.
"""

from __future__ import annotations

from alignkit.errors import AlignkitError
from alignkit.hub import resolve_file
from alignkit.rewards._clip_backbones import (ContrastiveReward, OpenClipTowers, load_open_clip,
                                              open_clip_config, place)
from alignkit.rewards.base import resize_longest_pad
from alignkit.rewards.registry import register

HPS_REPO = "xswu/HPSv2"
# Version -> checkpoint file in HPS_REPO.
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
DEFAULT_VERSION = "v2.1"
# Spellings users type (and that YAML turns into numbers) for each version.
_ALIASES = {"v2": "v2.0", "2": "v2.0", "2.0": "v2.0", "v2.0": "v2.0", "2.1": "v2.1", "v2.1": "v2.1"}


def canonical_version(version) -> str:
    key = str(version).strip().lower()
    if key not in _ALIASES:
        raise AlignkitError(f"hps: unknown version '{version}'; choose one of {', '.join(HPS_FILES)}")
    return _ALIASES[key]


@register(
    "hps",
    "Human Preference Score v2.1 (or v2.0), ViT-H-14 cosine",
    weights=((HPS_REPO, HPS_FILES[DEFAULT_VERSION]),),
    differentiable=True,
    path_options=("checkpoint_path",),
)
def hps(device=None, dtype=None, version: str = DEFAULT_VERSION, checkpoint_path: str | None = None,
        model_name: str = "ViT-H-14") -> ContrastiveReward:
    """`version` v2.1 (default) or v2.0; `checkpoint_path` a local checkpoint file;
    `model_name` the open_clip architecture the checkpoint fits."""
    version = canonical_version(version)
    what = f"hps {version} checkpoint"
    open_clip_config(model_name, what="hps")  # a bad name fails before a 4 GB file is fetched
    path = resolve_file(HPS_REPO, HPS_FILES[version], local=checkpoint_path, what=what, option="checkpoint_path")
    model = load_open_clip(model_name, path, what=what)
    reward = ContrastiveReward(OpenClipTowers(model, model_name), resize_longest_pad, scale=1.0)
    return place(reward, device, dtype)
