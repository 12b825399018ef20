"""Checkpoints: atomic writes, rotation, finding the one to resume from, and reading it safely.

A checkpoint is `OUTPUT_DIR/checkpoint-<step>/`:

    pytorch_lora_weights.safetensors   the LoRA (safetensors)
    train_state.json                   the loop's step and non-finite counters, and the run's config
    train_state.safetensors            the data generator's state (a uint8 tensor)
    optimizer.bin, scheduler.bin       accelerate's AdamW and lr-schedule state (torch pickles)
    random_states_<process>.pkl        accelerate's RNG states, one per process (torch pickles)
    scaler.pt                          accelerate's GradScaler state, with fp16 only

It is written under `checkpoint-<step>.tmp` and renamed into place only once complete, so a
kill mid-write leaves the previous checkpoints intact and never a half-written one under a
final name.

Resuming never runs code from the folder: alignkit's own state is JSON and safetensors, and
accelerate's pickles are read with `torch.load(weights_only=True)` (through
`alignkit.hub.load_state_dict`), whose unpickler refuses any object other than tensors,
containers and plain numbers (plus numpy arrays for the RNG states), instead of
accelerate's `load_state`, which unpickles registered objects with `weights_only=False`.
Every file is read and checked before the run writes anything; a missing or unreadable one
(the RNG states included: without them the resume would no longer be exact) is an error.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.errors import AlignkitError, CheckpointError
from alignkit.runfolder.layout import LORA_FILE, TMP_SUFFIX, checkpoint_dirs, checkpoint_name, checkpoint_step_of


def checkpoint_step(path: str | Path) -> int:
    step = checkpoint_step_of(Path(path).name)
    if step is None:
        raise AlignkitError(f"--resume-from-checkpoint {path}: not a checkpoint-<step> folder")
    return step


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
    return Path(output_dir) / (checkpoint_name(step) + TMP_SUFFIX)


def publish(tmp: Path, limit: int | None) -> Path:
    """Rename a complete temporary checkpoint into place, then drop the oldest beyond `limit`."""
    final = tmp.with_name(tmp.name.removesuffix(TMP_SUFFIX))
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


# ---- what a checkpoint holds, and reading it without running code -------------------------------

STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"
OPTIMIZER_FILE = "optimizer.bin"
SCHEDULER_FILE = "scheduler.bin"
SCALER_FILE = "scaler.pt"
# Checkpoints written before train_state.json held the same two values in accelerate's pickle
# of registered objects ({'step': int, 'generator': uint8 tensor}): readable weights-only.
LEGACY_STATE = "custom_checkpoint_0.pkl"
STATE_FORMAT = 1


def rng_file(process_index: int) -> str:
    return f"random_states_{process_index}.pkl"


def write_train_state(folder: Path, step: int, generator_state: torch.Tensor, nonfinite: dict, config: dict) -> None:
    """alignkit's own part of a checkpoint: JSON and safetensors, nothing that unpickles."""
    from safetensors.torch import save_file

    save_file({"generator": generator_state.contiguous()}, str(folder / STATE_TENSORS))
    state = {"format": STATE_FORMAT, "step": step, "nonfinite": nonfinite, "config": config}
    (folder / STATE_JSON).write_text(json.dumps(state, indent=1, default=str))


@dataclass
class SavedState:
    """A checkpoint read and checked in full, ready to be applied to the run's objects."""

    folder: Path
    step: int
    generator: torch.Tensor
    # {'in_a_row': int, 'total': int}: non-finite steps skipped so far.
    nonfinite: dict
    # The run's config when the checkpoint was written (None for a legacy checkpoint).
    config: dict | None
    optimizer: dict
    scheduler: dict
    rng: dict
    scaler: dict | None


def read_checkpoint(folder: Path, process_index: int, with_scaler: bool) -> SavedState:
    """Read every file this process needs from `folder`, safely; one line for what is wrong."""
    from alignkit.hub import load_state_dict

    legacy = not (folder / STATE_JSON).exists() and (folder / LEGACY_STATE).is_file()
    needed = [LORA_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, rng_file(process_index),
              *([LEGACY_STATE] if legacy else [STATE_JSON, STATE_TENSORS]), *([SCALER_FILE] if with_scaler else [])]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: {', '.join(missing)} missing; "
                              "resume from an earlier checkpoint or start a new run")
    what = f"checkpoint {folder.name}"
    load_state_dict(folder / LORA_FILE, what=what)  # the LoRA itself loads later, through peft
    if legacy:
        own = _expect_dict(load_state_dict(folder / LEGACY_STATE, what=what), folder / LEGACY_STATE, ("step", "generator"))
        step, generator, nonfinite, config = int(own["step"]), own["generator"], {}, None
    else:
        step, nonfinite, config = _read_state_json(folder / STATE_JSON)
        generator = load_state_dict(folder / STATE_TENSORS, what=what).get("generator")
    if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8:
        raise CheckpointError(f"{what}: no generator state in {folder / (LEGACY_STATE if legacy else STATE_TENSORS)}")
    if checkpoint_step_of(folder.name) is not None and step != checkpoint_step(folder):
        raise CheckpointError(f"{what}: its state says step {step}, its name step {checkpoint_step(folder)}; "
                              "it was renamed or mixed with another checkpoint's files")
    from accelerate.utils.other import TORCH_SAFE_GLOBALS  # numpy arrays, for the RNG states

    rng_path = folder / rng_file(process_index)
    return SavedState(
        folder=folder, step=step, generator=generator, nonfinite=nonfinite, config=config,
        optimizer=_expect_dict(load_state_dict(folder / OPTIMIZER_FILE, what=what), folder / OPTIMIZER_FILE,
                               ("state", "param_groups")),
        scheduler=_expect_dict(load_state_dict(folder / SCHEDULER_FILE, what=what), folder / SCHEDULER_FILE, ()),
        rng=_expect_dict(load_state_dict(rng_path, what=what, allow=TORCH_SAFE_GLOBALS), rng_path,
                         ("random_state", "numpy_random_seed", "torch_manual_seed")),
        scaler=_expect_dict(load_state_dict(folder / SCALER_FILE, what=what), folder / SCALER_FILE, ())
        if with_scaler else None,
    )


def _read_state_json(path: Path) -> tuple[int, dict, dict | None]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {path} is not readable JSON ({type(exc).__name__}); "
                              "resume from an earlier checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not isinstance(state.get("step"), int) \
            or not isinstance(state.get("config"), dict) or not isinstance(state.get("nonfinite", {}), dict):
        raise CheckpointError(f"checkpoint file {path} is not an alignkit train state (format {STATE_FORMAT}); "
                              "resume from an earlier checkpoint")
    return state["step"], state.get("nonfinite", {}), state["config"]


def _expect_dict(value, path: Path, keys: tuple[str, ...]) -> dict:
    if not isinstance(value, dict) or any(k not in value for k in keys):
        raise CheckpointError(f"checkpoint file {path} does not hold what accelerate writes there"
                              f"{' (' + ', '.join(keys) + ')' if keys else ''}; resume from an earlier checkpoint")
    return value


def restore_rng(rng: dict) -> None:
    """Set Python's, numpy's, torch's (and CUDA's) global generators as accelerate saved them."""
    import random

    import numpy as np

    try:
        random.setstate(rng["random_state"])
        np.random.set_state(rng["numpy_random_seed"])
        torch.set_rng_state(rng["torch_manual_seed"])
        if torch.cuda.is_available() and "torch_cuda_manual_seed" in rng:
            torch.cuda.set_rng_state_all(rng["torch_cuda_manual_seed"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's random states do not apply here ({type(exc).__name__}); "
                              "the resume would not be exact") from None
