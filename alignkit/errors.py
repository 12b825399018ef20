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


def read_text(path, what: str) -> str:
    """A UTF-8 text file's content, or one line naming the file and what is wrong with it.

    Prompt files, configs and logs are read with this, so that a binary or Latin-1 file is
    an error the user can act on instead of a UnicodeDecodeError traceback.
    """
    from pathlib import Path

    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AlignkitError(f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                            f"{exc.start}); save it as UTF-8") from None
    except IsADirectoryError:
        raise AlignkitError(f"{what} {path} is a folder, not a file") from None
    except FileNotFoundError:
        raise AlignkitError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise AlignkitError(f"{what} {path} cannot be read ({exc.strerror or type(exc).__name__})") from None


def first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message, whole (never cut mid-sentence): what a
    one-line error quotes from a library's multi-line one."""
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    line = text[0].strip()
    sentence, dot, _ = line.partition(". ")
    return sentence + "." if dot and len(sentence) >= 20 else line
