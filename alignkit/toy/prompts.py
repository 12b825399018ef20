"""The toy world's prompt sets, registered with `alignkit.prompts` (no torch import here).

`toy_counting` trains on most colour/background combinations and holds some out for
evaluation, so that an aligned model is judged on prompts it was not tuned on (the base
model itself was trained on every combination: the held-out part tests the alignment).
"""

from __future__ import annotations

from alignkit.prompts import PromptSet, register_prompt_set
from alignkit.toy.world import all_specs

# (colour, background) pairs that alignment never trains on: one per background.
EVAL_COMBINATIONS = (("red", "gray"), ("green", "white"), ("blue", "black"))


def toy_counting() -> PromptSet:
    train, held_out = [], []
    for spec in all_specs():
        (held_out if (spec.colour, spec.background) in EVAL_COMBINATIONS else train).append(spec.prompt)
    return PromptSet("toy_counting", train, held_out)


register_prompt_set("toy_counting", toy_counting)
