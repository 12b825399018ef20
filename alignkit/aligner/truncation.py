"""Truncated backprop: how many of the last denoising steps (K) carry gradients.

One K is drawn per trajectory, i.e. once per optimizer step, from a `torch.Generator` whose
state is checkpointed; it is the same on every process and it is logged. The steps before
the cut run under `torch.no_grad()`.

Policies (`--truncation`):

    full                 K = T: every step carries gradients (with per-step checkpointing)
    last:K               the last K steps
    uniform:LO-HI        AlignProp's "uniform": a cut index c ~ U{LO..HI}, K = T - c
    gaussian:MEAN,STD    AlignProp's default: c = round(N(MEAN, STD)), K = T - c
                         (gaussian:42,5 over T=50 gives K = 8 on average)
    draft-lv:N           DRaFT-LV: sample without gradients, re-noise the final sample N
                         times and backprop through the last step only (K = 1)
    drtune:K[,SPAN]      DRTune (Wu et al. 2024): K steps spread evenly over the first SPAN
                         steps (default all T), at stride SPAN // K from a random offset; the
                         denoiser's input is detached at every step, so each trained step gets
                         the reward's gradient through the update's linear path and never
                         through the product of the chain's Jacobians. Reaches the early,
                         high-noise steps where the layout (the count) is decided.

For the last-K policies the cut index c counts the steps that run without gradients (steps 0..c-1); the K = T - c
steps c..T-1 carry them. K is clamped into [1, T]: a cut at or beyond T would leave nothing
to train, a negative one means "all steps".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from alignkit.errors import AlignkitError


class TruncationError(AlignkitError, ValueError):
    """A truncation spec that does not parse or does not fit the number of steps."""


_FORMS = "full, last:K, uniform:LO-HI, gaussian:MEAN,STD, draft-lv:N or drtune:K[,SPAN]"


@dataclass(frozen=True)
class Cut:
    """Which denoising steps of one trajectory carry gradients."""

    # How many steps carry gradients (logged as `k`).
    k: int
    # Their indices when they are not the last k (DRTune); None for the last k.
    steps: tuple[int, ...] | None = None
    # Whether the denoiser's input is detached at every step (DRTune).
    stop_grad: bool = False


@dataclass(frozen=True)
class TruncationPolicy:
    """Base policy: `draw` returns the K of one trajectory, `draw_cut` its whole cut."""

    spec: str
    # DRaFT-LV's number of re-noised copies of the final sample; 0 for the other policies.
    renoise: int = 0

    def draw(self, generator: torch.Generator, num_steps: int) -> int:
        raise NotImplementedError

    def draw_cut(self, generator: torch.Generator, num_steps: int) -> Cut:
        """The cut of one trajectory: by default the last K steps."""
        return Cut(self.draw(generator, num_steps))

    def validate(self, num_steps: int) -> None:
        """Raise one line when the policy cannot apply to `num_steps` denoising steps."""

    @staticmethod
    def clamp(k: int, num_steps: int) -> int:
        return max(1, min(num_steps, int(k)))


@dataclass(frozen=True)
class Full(TruncationPolicy):
    def draw(self, generator, num_steps):
        return num_steps


@dataclass(frozen=True)
class Last(TruncationPolicy):
    k: int = 1

    def draw(self, generator, num_steps):
        return self.k

    def validate(self, num_steps):
        if self.k > num_steps:
            raise TruncationError(
                f"--truncation {self.spec} backpropagates through {self.k} steps but --num-inference-steps "
                f"is {num_steps}; use K <= {num_steps} or 'full'")


@dataclass(frozen=True)
class UniformCut(TruncationPolicy):
    lo: int = 0
    hi: int = 50

    def draw(self, generator, num_steps):
        cut = int(torch.randint(self.lo, self.hi + 1, (1,), generator=generator))
        return self.clamp(num_steps - cut, num_steps)

    def validate(self, num_steps):
        if self.lo >= num_steps:
            raise TruncationError(
                f"--truncation {self.spec}: every cut index is >= --num-inference-steps {num_steps}, so K would "
                f"always be clamped to 1; use a range below {num_steps} or last:1")


@dataclass(frozen=True)
class GaussianCut(TruncationPolicy):
    mean: float = 42.0
    std: float = 5.0

    def draw(self, generator, num_steps):
        cut = round(float(torch.randn((1,), generator=generator)) * self.std + self.mean)
        return self.clamp(num_steps - cut, num_steps)

    def validate(self, num_steps):
        if self.mean >= num_steps + 3 * self.std:
            raise TruncationError(
                f"--truncation {self.spec}: the cut index mean {self.mean:g} is past --num-inference-steps "
                f"{num_steps}, so K would almost always be 1; scale it (AlignProp uses 42,5 for 50 steps)")


@dataclass(frozen=True)
class DraftLV(TruncationPolicy):
    def draw(self, generator, num_steps):
        return 1


@dataclass(frozen=True)
class DeepSupervision(TruncationPolicy):
    k: int = 5
    # The steps are spread over the first `span` steps; None means all of them.
    span: int | None = None

    def draw(self, generator, num_steps):
        return self.k

    def draw_cut(self, generator, num_steps):
        span = self.span or num_steps
        stride = span // self.k
        # One offset per trajectory, from the checkpointed generator: resume draws the same.
        offset = int(torch.randint(0, stride, (1,), generator=generator))
        return Cut(self.k, tuple(offset + j * stride for j in range(self.k)), stop_grad=True)

    def validate(self, num_steps):
        span = self.span or num_steps
        if span > num_steps:
            raise TruncationError(f"--truncation {self.spec}: SPAN {span} is more than --num-inference-steps "
                                  f"{num_steps}; use SPAN <= {num_steps}")
        if self.k > span:
            raise TruncationError(f"--truncation {self.spec} trains {self.k} steps but spreads them over {span}; "
                                  f"use K <= {span}")


def _ints(text: str, sep: str, count: int) -> list[int]:
    parts = text.split(sep)
    if len(parts) != count or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
        raise ValueError
    return [int(p) for p in parts]


def _parse_full(arg, spec):
    if arg:
        raise ValueError
    return Full(spec)


def _parse_last(arg, spec):
    (k,) = _ints(arg, ",", 1)
    if k < 1:
        raise TruncationError(f"--truncation {spec}: K must be at least 1")
    return Last(spec, k=k)


def _parse_uniform(arg, spec):
    lo, hi = _ints(arg, "-", 2)
    if lo > hi:
        raise TruncationError(f"--truncation {spec}: LO must not exceed HI")
    return UniformCut(spec, lo=lo, hi=hi)


def _parse_gaussian(arg, spec):
    mean, std = (float(p) for p in arg.split(","))  # ValueError on anything but two numbers
    if std < 0 or mean < 0:
        raise TruncationError(f"--truncation {spec}: MEAN and STD must be >= 0")
    return GaussianCut(spec, mean=mean, std=std)


def _parse_draft_lv(arg, spec):
    (n,) = _ints(arg, ",", 1)
    if n < 1:
        raise TruncationError(f"--truncation {spec}: N must be at least 1")
    return DraftLV(spec, renoise=n)


def _parse_drtune(arg, spec):
    numbers = _ints(arg, ",", 2) if "," in arg else _ints(arg, ",", 1)
    if numbers[0] < 1:
        raise TruncationError(f"--truncation {spec}: K must be at least 1")
    if len(numbers) == 2 and numbers[1] < 1:
        raise TruncationError(f"--truncation {spec}: SPAN must be at least 1")
    return DeepSupervision(spec, k=numbers[0], span=numbers[1] if len(numbers) == 2 else None)


# name -> parser of the text after the colon; `random` is another name for `uniform` (AlignProp's).
POLICIES: dict[str, Callable[[str, str], TruncationPolicy]] = {
    "full": _parse_full,
    "last": _parse_last,
    "uniform": _parse_uniform,
    "random": _parse_uniform,
    "gaussian": _parse_gaussian,
    "draft-lv": _parse_draft_lv,
    "drtune": _parse_drtune,
}


def parse_truncation(spec: str, num_steps: int | None = None) -> TruncationPolicy:
    """'gaussian:42,5' -> GaussianCut(mean=42, std=5); validated against `num_steps` if given."""
    name, _, arg = str(spec).strip().lower().partition(":")
    parser = POLICIES.get(name)
    if parser is None:
        raise TruncationError(f"unknown --truncation '{spec}'; expected {_FORMS}")
    try:
        policy = parser(arg.strip(), spec)
    except TruncationError:
        raise
    except (ValueError, TypeError):
        raise TruncationError(f"malformed --truncation '{spec}'; expected {_FORMS}") from None
    if num_steps is not None:
        policy.validate(num_steps)
    return policy
