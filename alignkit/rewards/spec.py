"""The reward spec grammar, `name[:weight](+name[:weight])*`, and weighted combinations.

`load_reward("hps+aesthetic:0.5")` returns a `CombinedReward` whose forward is the weighted
sum and whose `with_parts` also returns each part, unweighted, so training logs
`reward/<name>` for every term.

A term may carry its own options, and may name code outside the registry:

    fitted:path=runs/fit:0.5        a registered reward with inline options, weight 0.5
    my_pkg.rewards:factory          a factory imported from a module (see rewards/plugin.py)

Such a term's whole text, less its weight, is its name: the run's config and evaluation carry
it as it is, and the registry resolves it (`get_entry`). A path holding '+' or ':' goes
through `--reward-option` instead.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn

from alignkit.errors import AlignkitError
from alignkit.rewards.base import Reward, check_inputs
from alignkit.rewards.plugin import is_reference
from alignkit.rewards.registry import KNOWN, build, get_entry

_GRAMMAR = "expected name[:weight](+name[:weight])*, e.g. 'hps+aesthetic:0.5'"
_NAME = re.compile(r"[a-z][a-z0-9_\-.]*\Z")


class SpecError(AlignkitError, ValueError):
    """A reward spec that does not parse."""


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """'hps+aesthetic:0.5' -> [('hps', 1.0), ('aesthetic', 0.5)]."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty reward spec; {_GRAMMAR}")
    terms: list[tuple[str, float]] = []
    for raw in spec.split("+"):
        term = raw.strip()
        if not term:
            raise SpecError(f"malformed reward spec '{spec}': empty term around '+'; {_GRAMMAR}")
        name, weight_text = _split_term(spec, term)
        weight = 1.0
        if weight_text is not None:
            try:
                weight = float(weight_text)
            except ValueError:
                raise SpecError(f"malformed reward spec '{spec}': weight '{weight_text}' of '{name}' is not a number; {_GRAMMAR}") from None
            if not math.isfinite(weight):
                raise SpecError(f"malformed reward spec '{spec}': weight of '{name}' must be finite, got '{weight_text}'")
            if weight == 0:
                # A term with weight 0 adds nothing to the reward but still loads its model.
                raise SpecError(f"reward spec '{spec}': '{name}' has weight 0; drop the term instead")
        if any(name == seen for seen, _ in terms):
            raise SpecError(f"malformed reward spec '{spec}': '{name}' appears twice; give it one weight")
        terms.append((name, weight))
    return terms


def _split_term(spec: str, term: str) -> tuple[str, str | None]:
    """'NAME[:OPTION=VALUE]*[:WEIGHT]' or 'module.path:factory[:WEIGHT]' -> (name, weight text or None).

    A registered name is lowercased; option values and module references keep their case."""
    head, *fields = [field.strip() for field in term.split(":")]
    reference = len(fields) >= 1 and is_reference(head, fields[0], KNOWN)
    # The last field is the weight unless it is an option or the factory of a module reference.
    weight = None
    if fields and "=" not in fields[-1] and not (reference and len(fields) == 1):
        weight = fields.pop()
    if reference:
        if len(fields) > 1:
            raise SpecError(f"malformed reward spec '{spec}': '{term}' takes no options inline; "
                            "pass them with --reward-option")
        return f"{head}:{fields[0]}", weight
    name = head.lower()
    if not _NAME.match(name):
        raise SpecError(f"malformed reward spec '{spec}': '{term}' has no valid reward name; {_GRAMMAR}")
    for field in fields:
        key, eq, _ = field.partition("=")
        if not eq or not key.isidentifier():
            raise SpecError(f"malformed reward spec '{spec}': '{field}' in '{term}' is not OPTION=VALUE; {_GRAMMAR}")
    return ":".join([name, *fields]), weight


class CombinedReward(Reward):
    """A weighted sum of rewards that also reports each part."""

    def __init__(self, parts: list[tuple[str, Reward, float]], spec: str):
        super().__init__()
        self.name = spec
        # A list, not a ModuleDict: names may hold '.' (a module reference, a path option).
        self.names = [name for name, _, _ in parts]
        self.parts = nn.ModuleList([reward for _, reward, _ in parts])
        self.weights = {name: weight for name, _, weight in parts}
        self.differentiable = all(r.differentiable for r in self.rewards.values())
        self.proxy_targets = frozenset().union(*(r.proxy_targets for r in self.rewards.values()))

    @property
    def rewards(self) -> dict[str, Reward]:
        return dict(zip(self.names, self.parts))

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self._total(self._parts(images, prompts))

    def with_parts(self, images: Tensor, prompts: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        check_inputs(images, prompts)
        parts = self._parts(images, prompts)
        return self._total(parts), parts

    def _parts(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        # The inputs were checked once for the whole combination, not once per part.
        return {name: reward.score(images, prompts) for name, reward in self.rewards.items()}

    def _total(self, parts: dict[str, Tensor]) -> Tensor:
        return sum(self.weights[name] * value.float() for name, value in parts.items())

    def embed_images(self, images: Tensor) -> Tensor | None:
        """The first part's embedding that has one (in the order of the spec)."""
        for reward in self.rewards.values():
            features = reward.embed_images(images)
            if features is not None:
                return features
        return None

    @torch.no_grad()
    def targets(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for reward in self.rewards.values():
            out.update(reward.targets(images, prompts))
        return out


def load_reward(spec: str, device=None, dtype=None, **overrides) -> Reward:
    """Build the reward a spec names, frozen, on `device`.

    Options go to the factories: for a single reward as keywords
    (`load_reward("aesthetic", head_path=...)`), for a combination as one dict per name
    (`load_reward("hps+aesthetic", aesthetic={"head_path": ...})`).
    """
    terms = parse_spec(spec)
    for name, _ in terms:
        get_entry(name)  # unknown names fail before anything loads
    options = options_by_reward(spec, overrides)
    if len(terms) == 1:
        name, weight = terms[0]
        reward = build(name, device=device, dtype=dtype, **options[name])
        if weight == 1.0:
            return reward
        parts = [(name, reward, weight)]
    else:
        parts = [(name, build(name, device=device, dtype=dtype, **options[name]), weight) for name, weight in terms]
    return CombinedReward(parts, spec).freeze()


def options_by_reward(spec: str, overrides: dict) -> dict[str, dict]:
    """`load_reward`'s keyword overrides as one dict per reward the spec names: for a single
    reward its loose keywords and its own dict merged; for a combination, per reward only."""
    names = [name for name, _ in parse_spec(spec)]
    per_reward = {k: v for k, v in overrides.items() if k in names and isinstance(v, dict)}
    loose = {k: v for k, v in overrides.items() if k not in per_reward}
    if loose and len(names) > 1:
        raise AlignkitError(
            f"options {sorted(loose)} are ambiguous for '{spec}'; give them per reward, e.g. {names[0]}={{...}}"
        )
    return {name: {**loose, **per_reward.get(name, {})} for name in names}


def check_reward_options(options, where: str) -> dict[str, dict]:
    """`reward_options` read from a file (a config, a run's config.yaml): a mapping of reward
    name to a mapping of its options, copied (an empty entry becomes {}). Anything else, such
    as `{count: 5}`, is one line naming `where` and the shape it needs."""
    example = "e.g. reward_options: {count: {detector: DIR}}"
    if not isinstance(options, dict):
        raise AlignkitError(f"{where}: reward_options must map reward names to their options ({example}), "
                            f"got {options!r}")
    for name, values in options.items():
        if values is not None and not isinstance(values, dict):
            raise AlignkitError(f"{where}: reward_options.{name} must map option names to values ({example}), "
                                f"got {values!r}")
    return {str(name): dict(values or {}) for name, values in options.items()}


def parse_reward_options(options: list[str], spec: str) -> dict:
    """['aesthetic.head_path=/x', 'hps.version=v2.1'] -> load_reward keyword overrides.

    With a single reward the `name.` prefix may be left out.
    """
    names = [name for name, _ in parse_spec(spec)]
    return parse_named_options(options, names, "reward", f"is not in the reward spec '{spec}'")


def parse_named_options(options: list[str], names: list[str], kind: str, absent: str) -> dict:
    """'NAME.OPTION=VALUE' items -> {NAME: {OPTION: value}} for the named things of one `kind`
    (rewards, judges): values read as YAML scalars ('0.5' -> 0.5, a path stays a string),
    the `NAME.` prefix optional when there is one name; `absent` ends the line for a NAME
    that is not among `names`."""
    import yaml

    overrides: dict = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AlignkitError(f"--{kind}-option '{item}' must look like NAME.OPTION=VALUE")
        name, dot, option = key.rpartition(".")
        if not dot:
            if len(names) != 1:
                example = names[0] if names else "NAME"
                raise AlignkitError(f"--{kind}-option '{item}': say which {kind}, e.g. {example}.{key}={value}")
            name, option = names[0], key
        if name not in names:
            raise AlignkitError(f"--{kind}-option '{item}': '{name}' {absent}")
        parsed = yaml.safe_load(value) if value else value
        overrides.setdefault(name, {})[option] = value if isinstance(parsed, (dict, list)) or parsed is None else parsed
    return overrides
