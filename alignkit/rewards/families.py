"""Imports alignkit's own reward families so that each registers itself (see registry.py);
plugins (the toy world among them) register theirs through `alignkit.plugins`.

Family modules import only torch at the top; their heavy imports (open_clip, transformers
models, ultralytics) live inside the factories, so listing rewards stays cheap.
"""

import importlib

FAMILIES = (
    "alignkit.rewards.aesthetic", "alignkit.rewards.hps", "alignkit.rewards.pickscore",
    "alignkit.rewards.clip", "alignkit.rewards.compress", "alignkit.rewards.count",
    "alignkit.rewards.fitted",
)

for _family in FAMILIES:
    importlib.import_module(_family)
