"""Independent judges: true targets read with nothing the trained reward uses.

A reward's own `targets()` are read with its own weights when it has any (the `count`
detector's NMS count): the aligner optimised against those weights and can fool them, so those
columns are *proxy targets*. A judge shares no weights with the reward; its columns are the
*true targets* that vouch for a gain (`overopt.find_unconfirmed`: a trained reward that rises
while its judge does not is flagged, and that candidate is never kept).

| judge      | for the trained reward | columns (better)                                          | when                   |
|------------|------------------------|-----------------------------------------------------------|------------------------|
| toy_rules  | count                  | pixel_count_correct (+), pixel_shape_correct (+),         | toy models, by default |
|            |                        | pixel_colour_correct (+); pixel_count, pixel_ambiguous    |                        |
| count      | count                  | judge_count_nms_correct (+); judge_count_nms              | `--judge count` with   |
|            |                        |                                                           | `detector=` another    |
|            |                        |                                                           | detector than the      |
|            |                        |                                                           | reward's               |

A judge is registered with `register_judge(name, factory)` (the registry is `alignkit.judges`,
below the rewards and evaluation, re-exported here); the factory takes the judge's options and
the device and returns a `Judge`. The toy world registers `toy_rules` itself
(`alignkit.toy.judge`) as a plugin (see alignkit.plugins), and names it as the default judge of
its model (`alignkit.models.NamedModel.judges`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from alignkit.errors import AlignkitError
from alignkit.judges import Judge, judge_factory, judge_names, register_judge
from alignkit.rewards.base import state_digest

__all__ = ["Judge", "JudgeScorer", "check_independent", "default_judges", "judge_names", "register_judge"]


def _count_judge(options: dict, device: str) -> Judge:
    """Another detector's NMS count: a true target for `count` only when it is not the reward's."""
    from alignkit.rewards import load_reward

    if not options.get("detector"):
        raise AlignkitError("--judge count needs another detector than the reward's: "
                            "--judge-option detector=PATH_OR_HUB_ID (a folder with model.yaml + "
                            "model.safetensors, or an ultralytics .pt)")
    reward = load_reward("count", device=device, **options)

    def read(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        return {f"judge_{k}": v for k, v in reward.targets(images, prompts).items()}

    return Judge("count", read, {"judge_count_nms_correct": +1}, {"judge_count_nms_correct": ("count",)},
                 f"detector {options['detector']} (NMS count)", state_digest(reward.model))


register_judge("count", _count_judge)


@dataclass
class JudgeScorer:
    """A judge used by evaluation, with the Scorer interface (`scorer_id`, `score`)."""

    spec: str
    options: dict = field(default_factory=dict)
    device: str = "cpu"
    role: str = "judge"
    _judge: Judge | None = None

    @property
    def scorer_id(self) -> str:
        return f"judge:{self.spec}:{json.dumps(self.options, sort_keys=True, default=str)}"

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            factory = judge_factory(self.spec)
            if factory is None:
                raise AlignkitError(f"--judge: unknown judge '{self.spec}'; known: {', '.join(judge_names())}")
            self._judge = factory(dict(self.options), self.device)
        return self._judge

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        return {k: v.detach().float().cpu() for k, v in self.judge.read(images, prompts).items()}

    def target_directions(self) -> dict[str, int]:
        return dict(self.judge.directions)

    def confirms(self) -> dict[str, tuple[str, ...]]:
        return dict(self.judge.confirms)


def default_judges(model_judges: tuple[str, ...] = ()) -> list[str]:
    """The judges evaluation uses unless told otherwise: those the model names for itself
    (the toy world's rules on the toy model), where registered."""
    return [name for name in model_judges if judge_factory(name) is not None]


def check_independent(judge: JudgeScorer, trained_reward: Callable[[], torch.nn.Module]) -> None:
    """Refuse a judge that reads with the trained reward's own weights: it would be a proxy.
    (`trained_reward` loads the reward; only judges with weights need it.)"""
    digest = judge.judge.weights_digest
    if digest is None:
        return
    reward = trained_reward()
    parts = getattr(reward, "rewards", {"_": reward})
    for reward in parts.values():
        model = getattr(reward, "model", None)
        if isinstance(model, torch.nn.Module) and state_digest(model) == digest:
            raise AlignkitError(f"--judge {judge.spec}: it reads with the same weights as the trained reward "
                                f"'{reward.name}', so it is a proxy, not a judge; point it at another model")
