"""What `alignkit eval` evaluates: a training run folder or a bare diffusers LoRA folder.

A run folder (written by the aligner, read through `alignkit.runfolder.RunFolder`) holds:

    RUN/config.yaml                                     the resolved training config
    RUN/pytorch_lora_weights.safetensors                the final LoRA (diffusers format)
    RUN/metrics.jsonl                                   one JSON line per optimizer step
    RUN/checkpoint-<step>/pytorch_lora_weights.safetensors

A bare LoRA folder holds only `pytorch_lora_weights.safetensors`; the base model and the
reward it was tuned on then come from `--model` and `--reward`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.runfolder import LORA_FILE, RunFolder, checkpoint_step_of



@dataclass(frozen=True)
class LoraCheckpoint:
    """One saved LoRA: a `checkpoint-<step>` folder or the run's final weights."""

    # "checkpoint-200" or "final"; also the adapter name the pipeline loads it under.
    label: str
    # The optimizer step it was saved at (None when unknown, e.g. a bare LoRA folder).
    step: int | None
    # The safetensors file.
    path: Path
    # sha256 of the file's bytes: the cache key of every image generated with it.
    sha256: str

    @property
    def adapter_name(self) -> str:
        # peft adapter names become module attribute names: no dashes.
        return self.label.replace("-", "_")


@dataclass
class EvalSource:
    """A run or a LoRA folder, resolved: the model, its LoRAs, and the run's settings."""

    root: Path
    # The base model as given (a hub id, a local folder, or "toy").
    model: str
    # Every LoRA to evaluate, by step; the last one is the final LoRA the scale sweep uses.
    checkpoints: list[LoraCheckpoint]
    # The run's config.yaml (empty for a bare LoRA folder).
    config: dict = field(default_factory=dict)
    # The run's training log, one dict per optimizer step.
    train_log: list[dict] = field(default_factory=list)

    @property
    def final(self) -> LoraCheckpoint:
        return self.checkpoints[-1]

    @property
    def is_run(self) -> bool:
        return bool(self.config)


def open_source(path: str | Path, model: str | None = None) -> EvalSource:
    """Resolve RUN_DIR or LORA_DIR; one clear line when it is neither."""
    root = Path(path).expanduser()
    if not root.exists():
        raise AlignkitError(f"no folder at {root}; pass a run folder written by `alignkit train` or a diffusers LoRA folder")
    if not root.is_dir():
        raise AlignkitError(f"{root} is a file; pass the folder that holds {LORA_FILE}")
    run = RunFolder(root)
    config = run.read_config()
    train_log = run.read_metrics()
    checkpoints = _find_checkpoints(run, train_log)
    if not checkpoints:
        raise AlignkitError(
            f"{root} holds no LoRA ({LORA_FILE} or checkpoint-*/{LORA_FILE}); "
            "pass a run folder written by `alignkit train` or a diffusers LoRA folder"
        )
    base = model or config.get("pretrained_model_name_or_path")
    if not base:
        raise AlignkitError(f"{root} has no config.yaml naming its base model; pass --model MODEL (the model the LoRA was trained on)")
    return EvalSource(root=root, model=str(base), checkpoints=checkpoints, config=config, train_log=train_log)


def _find_checkpoints(run: RunFolder, train_log: list[dict]) -> list[LoraCheckpoint]:
    found: list[LoraCheckpoint] = []
    for child in run.checkpoints():  # oldest first
        if (child / LORA_FILE).is_file():
            found.append(_checkpoint(child.name, checkpoint_step_of(child.name), child / LORA_FILE))
    final_file = run.lora_file
    if final_file.is_file():
        steps = [row["step"] for row in train_log if isinstance(row.get("step"), int)]
        final_step = max(steps) if steps else (found[-1].step if found else None)
        final = _checkpoint("final", final_step, final_file)
        # A checkpoint saved at the last step holds the same weights: evaluate them once.
        found = [c for c in found if c.sha256 != final.sha256]
        found.append(final)
    return found


def _checkpoint(label: str, step: int | None, path: Path) -> LoraCheckpoint:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    _check_finite(label, path)
    return LoraCheckpoint(label=label, step=step, path=path, sha256=digest.hexdigest())


def _check_finite(label: str, path: Path) -> None:
    """A LoRA with NaN or inf (a run that diverged before alignkit stopped such runs) would
    generate black or noise images and score them as if they meant something: refuse it."""
    from alignkit.hub import load_state_dict

    state = load_state_dict(path, what=f"LoRA '{label}'")
    bad = [key for key, value in state.items() if value.is_floating_point() and not value.isfinite().all()]
    if bad:
        raise AlignkitError(f"LoRA '{label}' ({path}) holds non-finite values (NaN or inf) in {len(bad)} of "
                            f"{len(state)} tensors: the run diverged; evaluate an earlier checkpoint folder "
                            "instead (with --model and --reward)")
