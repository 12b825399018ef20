"""Imports every reward family so that each registers itself (see registry.py)."""

import importlib

FAMILIES = ("aesthetic", "hps", "pickscore", "clip", "compress", "count")

for _family in FAMILIES:
    try:
        importlib.import_module(f"alignkit.rewards.{_family}")
    except ModuleNotFoundError as exc:  # a family not written yet must not break the others
        if exc.name != f"alignkit.rewards.{_family}":
            raise

importlib.import_module("alignkit.toy.rewards")  # the toy world's rewards, weights bundled
