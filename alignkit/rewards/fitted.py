"""`fitted`: a reward fitted by `alignkit reward fit`, loaded from its folder.

    load_reward("fitted", path="runs/my-reward")
    alignkit train --reward fitted:path=runs/my-reward        # or --reward-option fitted.path=...

The folder holds `reward.json` (backbone id and revision, preprocessing, head, data hash,
metrics) and `reward.safetensors` (the head: affine layers, standardisation folded in). The
backbone is loaded through the same loaders as every CLIP-family reward, and the features
are computed by the same code that computed them for the fit, so the reward at training time
scores exactly what the head was fitted on. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from alignkit.errors import AlignkitError, CheckpointError
from alignkit.rewards.base import Reward
from alignkit.rewards.registry import register

CONFIG_FILE = "reward.json"
WEIGHTS_FILE = "reward.safetensors"
FORMAT = "alignkit.fitted_reward"
FORMAT_VERSION = 1


class FittedReward(Reward):
    """head(features(backbone(images), prompts)): a rating, a Bradley–Terry utility, or the
    log-probability of the wanted class."""

    def __init__(self, embedder, head, with_prompt: bool, meta: dict | None = None):
        super().__init__()
        self.embedder = embedder
        self.head = head
        self.with_prompt = with_prompt
        self.meta = meta or {}

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        from alignkit.rewards.fit.embed import features_torch

        z = self.embedder.embed_images(images)
        t = self.embedder.embed_texts(list(prompts)).to(z.device) if self.with_prompt else None
        return self.head(features_torch(z, t).to(self.head_dtype)).float()

    def embed_images(self, images: Tensor) -> Tensor:
        """The backbone's unit-norm image embedding (evaluation's diversity and drift)."""
        return self.embedder.embed_images(images)

    @property
    def head_dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype


def read_config(folder: Path) -> dict:
    """reward.json of a fitted folder, checked; one line on anything missing or foreign."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AlignkitError(f"fitted reward: no folder at {folder}; pass path= a folder written by `alignkit reward fit`")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise AlignkitError(f"fitted reward: {folder} has no {CONFIG_FILE}; pass path= a folder written by "
                            "`alignkit reward fit`")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"fitted reward: {config_path} is not readable JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"fitted reward: {config_path} is not an alignkit fitted reward (format "
                              f"{config.get('format') if isinstance(config, dict) else None!r})")
    if config.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"fitted reward: {config_path} has format version {config['version']}; this alignkit "
                              f"reads up to {FORMAT_VERSION}: upgrade alignkit")
    return config


def load_fitted(folder: Path, device=None, dtype=None) -> FittedReward:
    from alignkit.hub import load_state_dict
    from alignkit.rewards.fit.backbones import load_backbone
    from alignkit.rewards.fit.heads import OUTPUTS, HeadModule

    folder = Path(folder).expanduser()
    config = read_config(folder)
    head_config, backbone = config["head"], config["backbone"]
    if head_config.get("output") not in OUTPUTS:
        raise CheckpointError(f"fitted reward: {folder / CONFIG_FILE} names an unknown output '{head_config.get('output')}'")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise AlignkitError(f"fitted reward: {folder} has no {WEIGHTS_FILE}")
    head = HeadModule(head_config["sizes"], head_config["output"])
    state = load_state_dict(weights, f"fitted reward head {weights}")
    try:
        head.load_state_dict(state)
    except RuntimeError:
        raise CheckpointError(f"fitted reward: {weights} does not fit the head of {CONFIG_FILE} "
                              f"(sizes {head_config['sizes']})") from None
    try:
        embedder = load_backbone(backbone["spec"], with_text=bool(head_config.get("with_prompt")), device=device)
    except AlignkitError as exc:
        raise type(exc)(f"fitted reward {folder}: its backbone '{backbone['spec']}' is not available here: {exc}") from None
    if backbone.get("revision") not in (None, "unknown", embedder.revision):
        raise CheckpointError(f"fitted reward {folder}: it was fitted on backbone '{backbone['spec']}' revision "
                              f"{backbone['revision']}, but the one here is {embedder.revision}; the head reads "
                              "that backbone's features only: refit it, or point the backbone at the original weights")
    reward = FittedReward(embedder, head.to(device or "cpu"), bool(head_config.get("with_prompt")), config)
    if dtype is not None:
        reward.embedder.to(dtype)  # the head stays float32: it is tiny, and standardisation folded in amplifies rounding
    return reward


def probe(path: str | None = None) -> tuple[bool, str]:
    """Availability without loading: the folder and its files (the backbone is checked on load)."""
    if path is None:
        return True, "needs path=DIR (a folder from `alignkit reward fit`)"
    try:
        config = read_config(Path(str(path)))
    except AlignkitError as exc:
        return False, str(exc)
    if not (Path(str(path)).expanduser() / WEIGHTS_FILE).is_file():
        return False, f"{path} has no {WEIGHTS_FILE}"
    return True, f"backbone {config['backbone']['spec']}"


@register("fitted", "a reward fitted with `alignkit reward fit DATA --out DIR` (use fitted:path=DIR)",
          differentiable=True, probe=probe, path_options=("path",))
def fitted(device=None, dtype=None, path: str | None = None) -> FittedReward:
    """`path`: a folder written by `alignkit reward fit`."""
    if path is None:
        raise AlignkitError("reward 'fitted' needs path=DIR, a folder from `alignkit reward fit` "
                            "(e.g. --reward fitted:path=runs/my-reward)")
    return load_fitted(Path(str(path)), device=device, dtype=dtype)
