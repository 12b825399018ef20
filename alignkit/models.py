"""Named models: a short name (`toy`) for a diffusers pipeline, and what it recommends.

A plugin that ships a model registers it (`register_model`); `alignkit train --model NAME`
and `alignkit eval --model NAME` then load its folder, training starts from its recommended
settings, and evaluation watches its own stand-in rewards and judges. Any other model
argument is a local folder or a hub id (`alignkit.hub.is_hub_id`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from alignkit.errors import AlignkitError
from alignkit.hub import resolve_pretrained
from alignkit.plugins import load_plugins


@dataclass(frozen=True)
class NamedModel:
    name: str
    # The pipeline folder for `from_pretrained` (called when needed: it may raise MissingWeightsError).
    path: Callable[[], Path]
    # TrainConfig fields the model recommends over the dataclass defaults (SD 1.5's AlignProp
    # settings are far too slow for a small CPU model).
    train_defaults: Callable[[], dict] = dict
    # Rewards that stand in for a generic one on this model's images, e.g. {"clip": "toy_clip"}.
    reward_substitutes: Mapping[str, str] = field(default_factory=dict)
    # The independent judges evaluation uses on this model unless told otherwise.
    judges: tuple[str, ...] = ()


_MODELS: dict[str, NamedModel] = {}


def register_model(model: NamedModel) -> None:
    _MODELS[model.name] = model


def get_model(name: str) -> NamedModel | None:
    """The named model called `name`, or None (a folder or hub id). Named models come from
    plugins: they are loaded here, when asked for a model."""
    load_plugins()
    return _MODELS.get(name)


def find_model(name_or_path: str) -> NamedModel | None:
    """The named model given by name or by its installed folder (a run's config may hold either)."""
    model = get_model(name_or_path)
    if model is not None:
        return model
    given = Path(name_or_path).expanduser().resolve()
    for model in _MODELS.values():
        try:
            if given == Path(model.path()).resolve():
                return model
        except AlignkitError:  # its weights are not installed: it cannot be that folder
            continue
    return None


def resolve_model(name_or_path: str, what: str = "model") -> str:
    """A `from_pretrained` source: a named model's folder, else a local folder or hub id,
    checked to exist (one line when it does not)."""
    model = get_model(name_or_path)
    if model is not None:
        return str(model.path())
    return resolve_pretrained(name_or_path, what=f"{what} '{name_or_path}'", probe="model_index.json")


def model_defaults(name: str) -> dict:
    """Settings a named model recommends for itself ({} for any other model)."""
    model = get_model(name)
    return dict(model.train_defaults()) if model is not None else {}
