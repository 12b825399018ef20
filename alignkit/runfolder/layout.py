"""The run folder's format: what `alignkit train` writes and `alignkit eval` reads.

    RUN/config.yaml                                   the resolved training config
    RUN/metrics.jsonl                                 one JSON line per optimizer step
    RUN/pytorch_lora_weights.safetensors              the final LoRA (diffusers format)
    RUN/checkpoint-<step>/                            a checkpoint (runfolder/checkpoints.py)
    RUN/checkpoint-<step>.tmp/                        one being written, renamed when complete
    RUN/samples/step-<step>.png                       sample images logged during training
    RUN/logs/                                         the trackers' logs (tensorboard)
    RUN/.alignkit.lock                                held by the run writing the folder (runfolder/lock.py)

A bare diffusers LoRA folder holds only `pytorch_lora_weights.safetensors`.
"""

from __future__ import annotations

import re
from pathlib import Path

# diffusers' file name, so that `pipe.load_lora_weights(dir)` finds it.
LORA_FILE = "pytorch_lora_weights.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
LOGS_DIR = "logs"
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)\Z")
# Suffix of a checkpoint folder still being written.
TMP_SUFFIX = ".tmp"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def checkpoint_step_of(name: str) -> int | None:
    """The step of a `checkpoint-<step>` folder name, or None for any other name."""
    match = CHECKPOINT_NAME.match(name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (temporary ones are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir()
             if p.is_dir() and (step := checkpoint_step_of(p.name)) is not None]
    return [p for _, p in sorted(found)]
