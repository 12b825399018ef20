"""Imports every reward family so that each registers itself (see registry.py).

Family modules import only torch at the top; their heavy imports (open_clip, transformers
models, ultralytics) live inside the factories, so listing rewards stays cheap.
"""

import importlib

FAMILIES = ("aesthetic", "hps", "pickscore", "clip", "compress", "count")

for _family in FAMILIES:
    importlib.import_module(f"alignkit.rewards.{_family}")
