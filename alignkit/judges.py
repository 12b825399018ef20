"""The judge registry: independent judges by name, below both the rewards and evaluation.

A judge reads images with nothing the trained reward uses and returns true-target columns
(see `alignkit.evaluation.judges` for how evaluation uses them). It lives here, at the bottom
of the package, so that a plugin registering one (the toy world's `toy_rules`) imports
neither evaluation nor the rewards: building a reward stays free of evaluation.

    register_judge(name, factory)    factory(options: dict, device: str) -> Judge
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from alignkit.plugins import load_plugins


@dataclass
class Judge:
    name: str
    # (images (B,3,H,W) float in [0,1], prompts) -> {column: (B,) tensor}.
    read: Callable
    # Which way is better for each column that can vouch for a gain (+1: higher).
    directions: dict[str, int]
    # The columns that tell the truth about a trained reward: when one of those rewards
    # rises, the column must rise too (column -> reward names).
    confirms: dict[str, tuple[str, ...]]
    # What the judge reads with, for the report.
    description: str = ""
    # A fingerprint of the weights it reads with (None: none), to refuse a judge that is the reward.
    weights_digest: str | None = None


_JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str, factory: Callable[..., Judge]) -> None:
    _JUDGES[name] = factory


def judge_names() -> list[str]:
    """Every registered judge, the plugins' among them."""
    load_plugins()
    return sorted(_JUDGES)


def judge_factory(name: str) -> Callable[..., Judge] | None:
    """The factory registered as `name` (plugins are loaded only when the core lacks it), or None."""
    if name not in _JUDGES:
        load_plugins()
    return _JUDGES.get(name)
