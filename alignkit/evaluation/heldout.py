"""The rewards evaluation scores with: the trained one and held-out ones it was not tuned on.

A model tuned on one reward can learn to please that reward alone (reward hacking). Rewards
it never saw, and the true quantities behind a proxy, tell whether the gain is real:

| trained on             | held-out rewards watched  | true targets (independent)     | proxy targets (reward's weights) |
|------------------------|---------------------------|--------------------------------|----------------------------------|
| aesthetic              | hps, pickscore, clip      |                                |                                  |
| hps                    | aesthetic, pickscore, clip|                                |                                  |
| pickscore              | hps, aesthetic, clip      |                                |                                  |
| clip                   | hps, pickscore, aesthetic |                                |                                  |
| count                  | clip                      | a judge's count (`judges.py`)  | count_nms, count_nms_correct     |
| compress / incompress  | clip                      | jpeg_kb (PIL JPEG, quality 95) |                                  |

A named model may watch its own stand-ins (`alignkit.models.NamedModel.reward_substitutes`):
on the embedded toy world `clip` means `toy_clip`, the CLIP trained on that world, and the
count's judge is the world's own rules (`toy_rules`). A default held-out reward whose package
or weights are absent is skipped with a note; one named with `--rewards` must at least exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor

from alignkit.errors import AlignkitError
from alignkit.rewards import Reward, get_entry, load_reward, parse_spec
from alignkit.rewards.registry import weights_stamp
from alignkit.rewards.spec import options_by_reward

HELDOUT: dict[str, tuple[str, ...]] = {
    "aesthetic": ("hps", "pickscore", "clip"),
    "hps": ("aesthetic", "pickscore", "clip"),
    "pickscore": ("hps", "aesthetic", "clip"),
    "clip": ("hps", "pickscore", "aesthetic"),
    "count": ("clip",),
    "compress": ("clip",),
    "incompress": ("clip",),
    # A reward fitted on image embeddings knows nothing of the prompt: watch text alignment.
    "fitted": ("clip",),
}

# Which way is better for each target a reward reports (+1: higher). The independent ones are
# watched and must confirm the reward's gain; the proxies (`Reward.proxy_targets`) only serve
# to catch a gain the judge does not see. Targets not listed (the raw detector count) are
# reported but never flag anything.
TARGET_DIRECTIONS: dict[str, dict[str, int]] = {
    "compress": {"jpeg_kb": -1},
    "incompress": {"jpeg_kb": +1},
    "count": {"count_nms_correct": +1},
}
# Bumped when the columns a reward reports change meaning, so that cached scores are redone.
SCORES_VERSION = 2


@dataclass
class Scorer:
    """One reward used by evaluation, built on first use and cached by `scorer_id`."""

    # "trained" (columns `reward`, `reward/<part>`) or "heldout" (a column named after it).
    role: str
    spec: str
    # load_reward keyword overrides (for a combination, one dict per name).
    options: dict = field(default_factory=dict)
    device: str = "cpu"
    _reward: Reward | None = None
    _stamp: str | None = None

    @property
    def names(self) -> list[str]:
        return [name for name, _ in parse_spec(self.spec)]

    @property
    def scorer_id(self) -> str:
        # The local weight files' contents are part of the key (a detector or fitted head
        # retrained at the same path must not reuse scores read with the old one).
        if self._stamp is None:
            stamps = [weights_stamp(name, options) for name, options in options_by_reward(self.spec, self.options).items()]
            self._stamp = f":w{'+'.join(stamps)}" if any(stamps) else ""
        return f"{self.role}:{self.spec}:{json.dumps(self.options, sort_keys=True, default=str)}{self._stamp}:v{SCORES_VERSION}"

    @property
    def reward(self) -> Reward:
        if self._reward is None:
            self._reward = load_reward(self.spec, device=self.device, **self.options)
        return self._reward

    def loaded(self) -> Reward | None:
        return self._reward

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        """Every column this reward yields for a batch of float images in [0,1]."""
        reward = self.reward
        images = images.to(reward.device, reward.dtype)
        total, parts = reward.with_parts(images, prompts)
        if self.role == "trained":
            columns = {"reward": total}
            if len(parts) > 1:
                columns.update({f"reward/{name}": value for name, value in parts.items()})
        else:
            columns = {self.spec: total}
        columns.update(reward.targets(images, prompts))
        return {name: value.detach().float().cpu() for name, value in columns.items()}

    def target_directions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in self.names:
            out.update(TARGET_DIRECTIONS.get(name, {}))
        return out


def confirming_targets(trained: Scorer, judges: list) -> dict[str, int]:
    """The target columns that must rise when the trained reward rises (-> direction): its own
    targets and its judges' (evaluation keeps only those that are independent, not proxies)."""
    out = dict(trained.target_directions())
    for judge in judges:
        directions = judge.target_directions()
        for column, rewards in judge.confirms().items():
            if set(rewards) & set(trained.names):
                out[column] = directions.get(column, +1)
    return out


def trained_scorer(spec: str, options: dict, device: str) -> Scorer:
    """The trained reward; it must be available, since every verdict is relative to it."""
    names = [name for name, _ in parse_spec(spec)]
    for name in names:
        entry = get_entry(name)
        ok, why = entry.status()
        # Options may point it at local weights that the registry's cache check cannot see.
        if not ok and not options.get(name):
            raise AlignkitError(f"trained reward '{name}' is not available here ({why}); "
                                f"install it or point it at local weights with --reward-option {name}.OPTION=PATH")
    if len(names) == 1:
        # A single reward takes its options as plain keywords.
        options = options.get(names[0], {})
    return Scorer("trained", spec, options, device)


def heldout_scorers(spec: str | None, trained: list[str], substitutes: Mapping[str, str], options: dict,
                    device: str) -> tuple[list[Scorer], list[str]]:
    """The held-out rewards to score with, and a one-line note for each one skipped.
    `substitutes`: the model's stand-ins for generic rewards (`NamedModel.reward_substitutes`)."""
    explicit = spec is not None
    if explicit:
        names = [name for name, _ in parse_spec(spec)]
    else:
        names = default_heldout(trained, substitutes)
    scorers, notes = [], []
    for name in names:
        try:
            entry = get_entry(name)
        except AlignkitError as exc:
            if explicit:
                raise AlignkitError(f"--rewards: {exc}") from None
            notes.append(f"skipped held-out reward '{name}': not registered here")
            continue
        ok, why = entry.status()
        if not ok and not options.get(name):
            notes.append(f"skipped held-out reward '{name}': {why}")
            continue
        scorers.append(Scorer("heldout", name, options.get(name, {}), device))
    return scorers, notes


def default_heldout(trained: list[str], substitutes: Mapping[str, str] = {}) -> list[str]:
    """The HELDOUT table's rewards for every trained part (each replaced by the model's
    stand-in where it has one), minus the trained ones."""
    names: list[str] = []
    for part in trained:
        # 'fitted:path=DIR' is looked up as 'fitted' (inline options name a folder, not a kind).
        for name in HELDOUT.get(part.partition(":")[0], ()):
            name = substitutes.get(name, name)
            if name not in trained and name not in names:
                names.append(name)
    return names
