"""Prompt sets: built-in names, a file with one prompt a line, or a single prompt.

Each built-in set has a `train` split and a held-out `eval` split, so that evaluation scores
prompts the model was not tuned on. Plugins (the toy world) add sets with
`register_prompt_set` (see alignkit.plugins).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alignkit.errors import AlignkitError, read_text
from alignkit.plugins import load_plugins

# The 45 animals of ddpo-pytorch's and AlignProp's `simple_animals.txt`.
SIMPLE_ANIMALS = (
    "cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion tiger bear raccoon "
    "fox wolf lizard beetle ant butterfly fish shark whale dolphin squirrel mouse rat snake "
    "turtle frog chicken duck goose bee pig turkey fly llama camel bat gorilla hedgehog kangaroo"
).split()
# Held out for evaluation: animals of the same kind that training never sees.
EVAL_ANIMALS = "elephant giraffe penguin owl panda koala octopus crab parrot peacock".split()

NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# COCO classes that a stock YOLO detector counts, for the `count` reward on real models.
COUNT_OBJECTS = ("apple", "cat", "dog", "bird", "car", "cup", "banana", "orange", "horse", "sheep")
EVAL_COUNT_OBJECTS = ("donut", "clock", "bottle", "cow")


_IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "child": "children", "man": "men",
                      "woman": "women", "sheep": "sheep", "fish": "fish", "knife": "knives",
                      "leaf": "leaves", "foot": "feet", "tooth": "teeth", "goose": "geese"}


def plural(noun: str) -> str:
    """English plural of a noun: 'apple' -> 'apples', 'box' -> 'boxes', 'puppy' -> 'puppies'."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if re.search(r"(s|x|z|ch|sh)$", noun):
        return noun + "es"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + "s"


def counting_prompts(objects, counts=range(1, 5)) -> list[str]:
    """'one apple', 'two apples', ...: the prompts the `count` reward reads a number from."""
    return [f"{NUMBER_WORDS[n - 1]} {noun if n == 1 else plural(noun)}" for noun in objects for n in counts]


@dataclass(frozen=True)
class PromptSet:
    name: str
    train: list[str]
    eval: list[str]


_SETS: dict[str, Callable[[], PromptSet]] = {
    "simple_animals": lambda: PromptSet("simple_animals", list(SIMPLE_ANIMALS), list(EVAL_ANIMALS)),
    "counting": lambda: PromptSet("counting", counting_prompts(COUNT_OBJECTS), counting_prompts(EVAL_COUNT_OBJECTS)),
}


def register_prompt_set(name: str, factory: Callable[[], PromptSet]) -> None:
    _SETS[name] = factory


def prompt_set_names() -> list[str]:
    load_plugins()
    return sorted(_SETS)


def load_prompt_set(source: str) -> PromptSet:
    """A built-in set by name, or a file (one prompt a line, used for train and eval alike)."""
    if source not in _SETS:  # the plugins' sets (toy_counting) are loaded only when asked for
        load_plugins()
    if source in _SETS:
        return _SETS[source]()
    path = Path(source).expanduser()
    if path.is_file():
        lines = [line.strip() for line in read_text(path, "prompt file").splitlines() if line.strip()]
        if not lines:
            raise AlignkitError(f"prompt file {path} is empty; write one prompt a line")
        return PromptSet(str(path), lines, lines)
    if path.exists():
        raise AlignkitError(f"prompts: {path} is not a file")
    raise AlignkitError(
        f"prompts: '{source}' is neither a built-in set ({', '.join(sorted(_SETS))}) nor a file"
    )


def single_prompt(prompt: str) -> PromptSet:
    if not prompt.strip():
        raise AlignkitError("--prompt is empty")
    return PromptSet("prompt", [prompt], [prompt])

