"""The reward registry: a name → factory table with what each reward needs.

Each reward family (one file each) registers its factories with `@register(...)`. A factory
takes `device`, `dtype` and the reward's own options, and returns a frozen `Reward`.
`alignkit rewards` prints this table with each entry's availability on this machine.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Callable

from alignkit.errors import AlignkitError
from alignkit.plugins import load_plugins


@dataclass(frozen=True)
class RewardEntry:
    name: str
    factory: Callable
    # One line for `alignkit rewards`.
    summary: str
    # Import names of the packages the reward needs beyond alignkit's own dependencies.
    packages: tuple[str, ...] = ()
    # The pip extra that provides those packages.
    extra: str | None = None
    # Default weights as (hub repo id, file) pairs; a local path option overrides each.
    weights: tuple[tuple[str, str], ...] = ()
    # Whether gradients flow from the score to the pixels (the aligner needs this).
    differentiable: bool = True
    # Weights that ship with the reward's package (the toy world's): always available.
    bundled: bool = False
    options: tuple[str, ...] = field(default=())

    def status(self) -> tuple[bool, str]:
        """(available, reason) on this machine, without loading anything."""
        missing = [p for p in self.packages if importlib.util.find_spec(p) is None]
        if missing:
            return False, f"missing package {', '.join(missing)} (pip install 'alignkit[{self.extra or missing[0]}]')"
        if self.bundled or not self.weights:
            return True, "bundled" if self.bundled else "no weights needed"
        from huggingface_hub import try_to_load_from_cache

        absent = [describe(repo, file) for repo, file in self.weights
                  if not any(isinstance(try_to_load_from_cache(repo, f), str) for f in EQUIVALENT_FILES.get(file, (file,)))]
        if absent:
            return False, f"not in HF cache: {', '.join(absent)}"
        return True, "in HF cache"


REGISTRY: dict[str, RewardEntry] = {}

# transformers saves a model as either file, and hub repos ship one or both
# (yuvalkirstain/PickScore_v1: pytorch_model.bin only); the loaders take whichever is there.
EQUIVALENT_FILES = {"model.safetensors": ("model.safetensors", "pytorch_model.bin")}


def describe(repo: str, file: str) -> str:
    """'repo/model.safetensors or pytorch_model.bin': a needed file and its alternatives."""
    return f"{repo}/{' or '.join(EQUIVALENT_FILES.get(file, (file,)))}"


def register(name: str, summary: str, **meta) -> Callable:
    """Decorator: add a reward factory to the registry under `name`."""

    def wrap(factory: Callable) -> Callable:
        params = inspect.signature(factory).parameters
        options = tuple(p for p in params if p not in ("device", "dtype"))
        REGISTRY[name] = RewardEntry(name=name, factory=factory, summary=summary, options=options, **meta)
        return factory

    return wrap


def get_entry(name: str) -> RewardEntry:
    _load_families()
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise AlignkitError(f"unknown reward '{name}'{hint} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def list_entries() -> list[RewardEntry]:
    _load_families()
    return [REGISTRY[name] for name in sorted(REGISTRY)]


def build(name: str, device=None, dtype=None, **options):
    """Build one registered reward, checking its options first."""
    entry = get_entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        known = ", ".join(entry.options) or "none"
        raise AlignkitError(f"reward '{name}' has no option {', '.join(unknown)} (options: {known})")
    reward = entry.factory(device=device, dtype=dtype, **options)
    reward.name = name
    return reward.freeze()


def _load_families() -> None:
    # Importing the family modules registers them; their heavy imports live in the factories.
    importlib.import_module("alignkit.rewards.families")
    load_plugins()
