"""User-facing errors: one line that says what is wrong and what to do.

The CLI prints `AlignkitError`s as a single line on stderr and exits non-zero; set
`ALIGNKIT_DEBUG=1` to see the full traceback instead (as the `hf` CLI does).
"""

from __future__ import annotations

import os


class AlignkitError(Exception):
    """An error caused by the user's input or environment, explained in one line."""

    exit_code = 2


class MissingDependencyError(AlignkitError):
    """An optional package is not installed."""


class MissingWeightsError(AlignkitError):
    """A checkpoint could not be found locally or on the hub."""


class CheckpointError(AlignkitError):
    """A checkpoint exists but is corrupted, unsafe, or of the wrong shape."""


def debug_enabled() -> bool:
    return os.environ.get("ALIGNKIT_DEBUG", "").lower() not in ("", "0", "false", "no")


def require(module: str, extra: str | None = None, purpose: str = ""):
    """Import an optional module, or raise one clear line naming the pip command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = f"alignkit[{extra}]" if extra else module
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"package '{module}' is not installed{why}: run `pip install '{pkg}'` ({exc})"
        ) from exc
