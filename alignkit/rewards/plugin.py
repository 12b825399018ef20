"""Rewards from the user's own code: `--reward my_pkg.rewards:factory` and installed packages.

Two ways in, one contract:

- a module reference in a spec, `module.path:factory`, imported when the spec is resolved;
- an entry point of an installed package, in the group `alignkit.rewards`
  (`[project.entry-points."alignkit.rewards"] my_style = "my_pkg.rewards:factory"`), registered
  under its entry-point name when the registry loads, so that `alignkit rewards` lists it.

The factory is called with the reward's options (and `device` / `dtype` when its signature
takes them). It returns a `Reward`, or any `(images, prompts) -> (B,)` callable, which is
wrapped in one. Whatever it returns is checked once, at load, on a small probe batch: the
output has shape (B,), is finite, and (unless it, or its factory, declares `differentiable =
False`) its gradient reaches the pixels, since AlignProp backpropagates through it; a reward
without gradient trains with `--algorithm grpo`. A failure is one line naming the reference and
what is wrong.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch
from torch import Tensor, nn

from alignkit.errors import AlignkitError, first_line
from alignkit.rewards.base import Reward

ENTRY_POINT_GROUP = "alignkit.rewards"

# The probe batch: two images, so that a reward that ignores the batch dimension shows it.
_PROBE_SIZE = 64
_PROBE_PROMPTS = ["a photo of a cat", "two red circles on a white background"]


def is_reference(head: str, attribute: str, registered) -> bool:
    """Whether 'head:attribute' names a factory in a module rather than a registered reward
    with a weight or options: the attribute is an identifier (a weight is a number), and the
    head is a module path that is not a `registered` name ('hps:abc' stays a bad weight)."""
    if not attribute.isidentifier() or not all(part.isidentifier() for part in head.split(".")):
        return False
    try:
        float(attribute)  # 'nan' and 'inf' are identifiers and numbers: weights
        return False
    except ValueError:
        pass
    return head.lower() not in registered


class CallableReward(Reward):
    """A plain `(images, prompts) -> (B,)` callable as a `Reward`; a module's weights move with it."""

    def __init__(self, fn: Callable, differentiable: bool = True):
        super().__init__()
        self.fn = fn  # an nn.Module becomes a submodule, so .to() and freeze() reach it
        self.differentiable = differentiable

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.fn(images, prompts)


def import_factory(reference: str) -> Callable:
    """'pkg.mod:factory' -> the object, or one line saying why not."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or the module's own code failing at import
        raise AlignkitError(f"reward '{reference}': cannot import module '{module_name}' "
                            f"({type(exc).__name__}: {first_line(exc)})") from None
    if not hasattr(module, attribute):
        raise AlignkitError(f"reward '{reference}': module '{module_name}' has no attribute '{attribute}'")
    target = getattr(module, attribute)
    if not callable(target) and not isinstance(target, Reward):
        raise AlignkitError(f"reward '{reference}': '{attribute}' is a {type(target).__name__}, not a factory")
    return target


def factory_options(target) -> tuple[str, ...]:
    """The options a factory takes (its parameters less device and dtype)."""
    if isinstance(target, Reward):
        return ()
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(name for name, p in params.items() if name not in ("device", "dtype")
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def make_factory(reference: str, target) -> Callable:
    """A registry factory: call the user's factory, wrap what it returns, check the contract."""

    def factory(device=None, dtype=None, **options) -> Reward:
        if isinstance(target, Reward):
            made = target
        else:
            params = _parameters(target)
            extra = {k: v for k, v in (("device", device), ("dtype", dtype)) if k in params}
            try:
                made = target(**extra, **options)
            except AlignkitError:
                raise
            except Exception as exc:
                raise AlignkitError(f"reward '{reference}': the factory failed "
                                    f"({type(exc).__name__}: {first_line(exc)})") from None
        # A factory may declare for what it returns that it has no gradient.
        reward = as_reward(reference, made, bool(getattr(target, "differentiable", True)))
        if isinstance(reward, nn.Module):
            reward = reward.to(device or "cpu")
        check_contract(reference, reward.freeze())
        return reward

    return factory


def _parameters(target) -> set[str]:
    try:
        return set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return set()


def as_reward(reference: str, made, differentiable: bool = True) -> Reward:
    if isinstance(made, Reward):
        return made
    if callable(made):
        return CallableReward(made, differentiable=bool(getattr(made, "differentiable", differentiable)))
    raise AlignkitError(f"reward '{reference}': the factory returned a {type(made).__name__}, "
                        "not a Reward or an (images, prompts) -> (B,) callable")


def check_contract(reference: str, reward: Reward) -> None:
    """One forward (and backward) pass on a probe batch: shape (B,), finite, gradient at the pixels."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(len(_PROBE_PROMPTS), 3, _PROBE_SIZE, _PROBE_SIZE, generator=g).to(reward.device)
    images.requires_grad_(reward.differentiable)
    try:
        with torch.enable_grad():
            out = reward(images, list(_PROBE_PROMPTS))
    except AlignkitError:
        raise
    except Exception as exc:
        raise AlignkitError(f"reward '{reference}' failed on a probe batch of 2 {_PROBE_SIZE}px images "
                            f"({type(exc).__name__}: {first_line(exc)})") from None
    batch = len(_PROBE_PROMPTS)
    if not isinstance(out, Tensor) or tuple(out.shape) != (batch,):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise AlignkitError(f"reward '{reference}' returned shape {shape} for {batch} images; it must return ({batch},)")
    if not torch.isfinite(out.detach().float()).all():
        raise AlignkitError(f"reward '{reference}' returned non-finite scores on a probe batch; it must be finite")
    if not reward.differentiable:
        return
    if not out.requires_grad:
        raise AlignkitError(f"reward '{reference}': no gradient reaches the pixels (the output has no graph); "
                            "make it differentiable, or set differentiable = False on it "
                            "(it then trains with --algorithm grpo only)")
    with torch.enable_grad():  # evaluation loads rewards under no_grad
        (grad,) = torch.autograd.grad(out.float().sum(), images, allow_unused=True)
    if grad is None or not torch.isfinite(grad).all() or not grad.abs().sum() > 0:
        what = "no gradient" if grad is None else "a zero or non-finite gradient"
        raise AlignkitError(f"reward '{reference}': {what} reaches the pixels; make it differentiable, "
                            "or set differentiable = False on it (it then trains with --algorithm grpo only)")


def reference_fields(reference: str) -> dict:
    """The registry entry's fields for a module reference, importing it now."""
    return _fields(reference, import_factory(reference), f"user code {reference}")


def entry_point_fields() -> dict[str, dict]:
    """Registry entry fields for every installed `alignkit.rewards` entry point, by its name,
    summarised by the first line of the factory's docstring. One that fails to import stays
    listed, unavailable, with the reason; using it raises that line."""
    from importlib.metadata import entry_points

    out = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = import_factory(ep.value)
        except AlignkitError as exc:
            out[ep.name] = dict(factory=_raiser(exc), summary=f"plugin {ep.value}",
                                probe=lambda message=str(exc), **_: (False, message))
            continue
        doc = (inspect.getdoc(target) or "").strip()
        out[ep.name] = {**_fields(ep.value, target, doc.splitlines()[0] if doc else f"plugin {ep.value}"),
                        "probe": lambda value=ep.value, **_: (True, f"plugin {value}")}
    return out


def _fields(reference: str, target, summary: str) -> dict:
    return dict(factory=make_factory(reference, target), summary=summary, options=factory_options(target),
                differentiable=bool(getattr(target, "differentiable", True)))


def _raiser(exc: AlignkitError) -> Callable:
    def factory(device=None, dtype=None, **options):
        raise AlignkitError(str(exc))

    return factory
