"""The toy world as an alignkit plugin: what it adds to the core's registries.

Imported by `alignkit.plugins.load_plugins()` (the toy is listed there as a built-in
plugin); the core never imports the toy itself. It registers:

- the model `toy` (the embedded pipeline), with its training defaults (train_defaults.yaml),
  `toy_clip` standing in for `clip` on its images, and `toy_rules` as its default judge;
- the model `toy-flow` (the flow-matching toy, SD3 format), the same way (train_defaults_flow.yaml);
- the reward `toy_clip` (alignkit.toy.rewards) and the bundled detector `toy`
  (alignkit.detectors), the `count` reward's default;
- the judge `toy_rules` (alignkit.toy.judge) and the prompt set `toy_counting`
  (alignkit.toy.prompts).
"""

from __future__ import annotations

from pathlib import Path

import alignkit.toy.judge  # noqa: F401  (registers toy_rules)
import alignkit.toy.prompts  # noqa: F401  (registers toy_counting)
import alignkit.toy.rewards  # noqa: F401  (registers toy_clip)
from alignkit import toy
from alignkit.models import NamedModel, register_model
from alignkit.detectors import register_detector


def _defaults(file: str):
    """TrainConfig's defaults are AlignProp's for SD 1.5 (50 steps, K≈8), far too slow for a CPU."""
    def read() -> dict:
        import yaml

        return yaml.safe_load((Path(__file__).resolve().parent / file).read_text())
    return read


train_defaults = _defaults("train_defaults.yaml")

register_model(NamedModel("toy", path=lambda: toy.pipeline_path(), train_defaults=train_defaults,
                          reward_substitutes={"clip": "toy_clip"}, judges=("toy_rules",)))
register_model(NamedModel("toy-flow", path=lambda: toy.flow_pipeline_path(),
                          train_defaults=_defaults("train_defaults_flow.yaml"),
                          reward_substitutes={"clip": "toy_clip"}, judges=("toy_rules",)))
register_detector("toy", lambda: toy.detector_path(), default=True)
