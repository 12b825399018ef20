"""The reward registry: a name → factory table with what each reward needs.

Each reward family (one file each) registers its factories with `@register(...)`. A factory
takes `device`, `dtype` and the reward's own options, and returns a frozen `Reward`.
`alignkit rewards` prints this table with each entry's availability on this machine.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
from dataclasses import dataclass, field, replace
from typing import Callable

from alignkit.errors import AlignkitError
from alignkit.plugins import load_plugins
from alignkit.rewards.plugin import entry_point_fields, is_reference, reference_fields


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
    # Whether gradients flow from the score to the pixels (reward backprop, `--algorithm
    # alignprop`, needs this; `grpo` uses the score's value only and takes any reward).
    differentiable: bool = True
    # Option values with which a differentiable reward has no gradient, as (option, value)
    # pairs: `count` with objective=exact scores the detector's NMS count.
    gradient_free: tuple[tuple[str, object], ...] = ()
    # Weights that ship with the reward's package (the toy world's): always available.
    bundled: bool = False
    options: tuple[str, ...] = field(default=())
    # Options given inline in the spec (`fitted:path=DIR`), as (name, value) pairs.
    bound: tuple[tuple[str, str], ...] = ()
    # For rewards whose weights an option names (a fitted folder): (available, reason) given
    # the bound options, still loading nothing.
    probe: Callable[..., tuple[bool, str]] | None = None
    # Where the weights come from when no option names a path (the toy's bundled detector):
    # options -> local path or None, for `weights_stamp`, resolving without loading.
    default_path: Callable[[dict], str | None] | None = None
    # The options whose values name weights (a file, a folder, or a hub id), for
    # `weights_stamp`; None (user code, whose options alignkit cannot know) means any option
    # whose value is an existing path.
    path_options: tuple[str, ...] | None = None

    def has_gradient(self, options: dict | None = None) -> bool:
        """Whether the reward built with `options` (and the spec's inline ones) is differentiable."""
        chosen = {**{key: _scalar(value) for key, value in self.bound}, **(options or {})}
        return self.differentiable and not any(chosen.get(key) == value for key, value in self.gradient_free)

    def gradient_note(self) -> str:
        """'yes', 'no', or 'yes*' (not with some options: see `gradient_free_options`), for `alignkit rewards`."""
        if not self.differentiable:
            return "no"
        return "yes*" if self.gradient_free else "yes"

    def gradient_free_options(self) -> str:
        """'objective=exact': the options with which this reward has no gradient."""
        return ", ".join(f"{key}={value}" for key, value in self.gradient_free)

    def status(self) -> tuple[bool, str]:
        """(available, reason) on this machine, without loading anything."""
        if self.probe is not None:
            return self.probe(**dict(self.bound))
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


def weights_stamp(name: str, options: dict | None = None) -> str:
    """A fingerprint of the local weight files a reward would read with `options`, loading
    nothing: every value (given or inline) of the entry's `path_options` that is an existing
    file or folder, and the entry's `default_path`, by content. A scalar option whose value
    happens to name a path (objective=exact beside a folder `exact`) is not read. Cached scores
    are keyed by it, so that weights retrained at the same path (a re-fitted reward, a new
    bundled detector) are never read from a cache of the old ones. Hub weights are keyed by
    their repo id in the options, as before."""
    import hashlib
    import os

    entry = get_entry(name)
    chosen = {**dict(entry.bound), **(options or {})}
    named = chosen if entry.path_options is None else {k: v for k, v in chosen.items() if k in entry.path_options}
    paths = [str(v) for v in named.values() if isinstance(v, (str, os.PathLike)) and str(v) and os.path.exists(v)]
    if entry.default_path is not None:
        try:
            default = entry.default_path(chosen)
        except AlignkitError:  # nothing installed: building the reward will say so
            default = None
        if default and os.path.exists(default):
            paths.append(str(default))
    h = hashlib.sha256()
    for root in sorted(set(paths)):
        files = [root] if os.path.isfile(root) else sorted(
            os.path.join(d, f) for d, _, names in os.walk(root) for f in names)
        for path in files:
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16] if paths else ""


def get_entry(name: str) -> RewardEntry:
    """The entry of a registered name, of a name with inline options (`fitted:path=DIR`), or
    of a module reference (`my_pkg.rewards:factory`, imported now: a failure is one line)."""
    _load_core()
    if ":" in name and name not in REGISTRY:
        head, _, rest = name.partition(":")
        if is_reference(head, rest, KNOWN):
            return RewardEntry(name=name, **reference_fields(name))
        bound = tuple(field.partition("=")[::2] for field in rest.split(":"))
        base = get_entry(head)
        unknown = sorted({key for key, _ in bound} - set(base.options))
        if unknown:
            raise AlignkitError(f"reward '{head}' has no option {', '.join(unknown)} "
                                f"(options: {', '.join(base.options) or 'none'})")
        return replace(base, name=name, bound=bound)
    if name not in KNOWN:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise AlignkitError(f"unknown reward '{name}'{hint} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def registered_names() -> set[str]:
    """Every registered name, the plugins' among them."""
    _load_core()
    load_plugins()
    return set(REGISTRY)


def list_entries() -> list[RewardEntry]:
    """Every registered reward, the plugins' among them (`alignkit rewards`)."""
    return [REGISTRY[name] for name in sorted(registered_names())]


class _Known:
    """The registered names as a container that loads no more than it must: the core's own
    rewards first, and the plugins (the toy world's) only for a name the core lacks, so that
    building `compress` imports neither the toy nor evaluation."""

    def __contains__(self, name: object) -> bool:
        _load_core()
        if name not in REGISTRY:
            load_plugins()
        return name in REGISTRY


KNOWN = _Known()


def build(name: str, device=None, dtype=None, **options):
    """Build one registered reward, checking its options first."""
    entry = get_entry(name)
    # Inline options are read as YAML scalars, as --reward-option values are; flags win.
    options = {**{key: _scalar(value) for key, value in entry.bound}, **options}
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        known = ", ".join(entry.options) or "none"
        raise AlignkitError(f"reward '{name}' has no option {', '.join(unknown)} (options: {known})")
    reward = entry.factory(device=device, dtype=dtype, **options)
    reward.name = name
    return reward.freeze()


def _load_core() -> None:
    # Importing the family modules registers them; their heavy imports live in the factories.
    importlib.import_module("alignkit.rewards.families")
    # Rewards that installed packages declare as entry points (read once).
    global _entry_points_read
    if not _entry_points_read:
        _entry_points_read = True
        for name, fields in entry_point_fields().items():
            REGISTRY.setdefault(name, RewardEntry(name=name, **fields))


_entry_points_read = False


def _scalar(text: str):
    import yaml

    parsed = yaml.safe_load(text) if text else text
    return text if parsed is None or isinstance(parsed, (dict, list)) else parsed
