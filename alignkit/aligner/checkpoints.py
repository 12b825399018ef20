"""Checkpoints: atomic writes, rotation, and finding the one to resume from.

A checkpoint is `OUTPUT_DIR/checkpoint-<step>/`: accelerate's state (optimizer, lr schedule,
RNG states, our registered counters) plus `pytorch_lora_weights.safetensors`. It is written
under `checkpoint-<step>.tmp` and renamed into place only once complete, so a kill mid-write
leaves the previous checkpoints intact and never a half-written one under a final name.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from alignkit.errors import AlignkitError

_NAME = re.compile(r"checkpoint-(\d+)\Z")


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (temporary ones are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | Path) -> int:
    match = _NAME.match(Path(path).name)
    if not match:
        raise AlignkitError(f"--resume-from-checkpoint {path}: not a checkpoint-<step> folder")
    return int(match.group(1))


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """'latest' -> the newest checkpoint in output_dir; a path -> that checkpoint, checked."""
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        if not found:
            raise AlignkitError(f"--resume-from-checkpoint latest: no checkpoint-<step> folder in {output_dir}; "
                                "drop the flag to start a new run")
        return found[-1]
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise AlignkitError(f"--resume-from-checkpoint {resume}: no such folder")
    checkpoint_step(path)
    return path


def temporary_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}.tmp"


def publish(tmp: Path, limit: int | None) -> Path:
    """Rename a complete temporary checkpoint into place, then drop the oldest beyond `limit`."""
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    stale = None
    if final.exists():  # the same step saved again (a run resumed from an earlier checkpoint)
        # Move the old one aside first, so that some complete checkpoint-<step> exists at every instant.
        stale = final.with_name(final.name + ".old")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
    os.replace(tmp, final)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    if limit is not None and limit > 0:
        for old in checkpoint_dirs(final.parent)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final
