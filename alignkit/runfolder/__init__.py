"""The run folder: what `alignkit train` writes and `alignkit eval` reads, and its one owner.

`RunFolder` knows the layout (`layout.py`), takes the lock (`lock.py`), writes and reads the
config and the metrics, writes, rotates and reads checkpoints (`checkpoints.py`), and turns a
disk that stops accepting writes into one line (`RunWriteError`) that names the checkpoint to
resume from. A training loop (AlignProp's, GRPO's) drives the model and the optimizer and
hands the folder what to write; evaluation reads through the same type.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import shutil
from pathlib import Path

from alignkit.errors import AlignkitError, read_text
from alignkit.runfolder import checkpoints
from alignkit.runfolder.checkpoints import SavedState
from alignkit.runfolder.layout import (CONFIG_FILE, LOGS_DIR, LORA_FILE, METRICS_FILE, SAMPLES_DIR, TMP_SUFFIX,
                                       checkpoint_dirs, checkpoint_name, checkpoint_step_of)
from alignkit.runfolder.lock import LOCK_FILE, RunLock, RunLockedError

__all__ = ["CONFIG_FILE", "LOCK_FILE", "LOGS_DIR", "LORA_FILE", "METRICS_FILE", "SAMPLES_DIR", "TMP_SUFFIX",
           "RunFolder", "RunLock", "RunLockedError", "RunWriteError", "SavedState", "checkpoint_dirs",
           "checkpoint_name", "checkpoint_step_of", "checkpoints"]

# What marks a folder as holding a run (and so protects it from being written over).
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, LORA_FILE)

# Errors of the disk, not of the program: reported in one line, the last checkpoint named.
_DISK_ERRNOS = {getattr(errno, name) for name in ("ENOSPC", "EROFS", "EACCES", "EPERM", "EDQUOT", "EIO")
                if hasattr(errno, name)}


class RunWriteError(AlignkitError):
    """The run folder stopped accepting writes (disk full, read-only, quota)."""


class RunFolder:
    """One run folder (`root`): its layout, lock, config, metrics, checkpoints and disk errors."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def lora_file(self) -> Path:
        """The final LoRA, in diffusers' format (`pipe.load_lora_weights(root)` finds it)."""
        return self.root / LORA_FILE

    @property
    def samples_dir(self) -> Path:
        return self.root / SAMPLES_DIR

    @property
    def logs_dir(self) -> Path:
        return self.root / LOGS_DIR

    # ---- the run as a whole ----------------------------------------------------------------------

    def lock(self) -> RunLock:
        """The folder's writer lock (`acquire()` it; `discard()` undoes what taking it created)."""
        return RunLock(self.root)

    def holds_run(self) -> bool:
        """Whether the folder holds a run's results (a step logged, a checkpoint, a LoRA). A
        config.yaml alone is what a run that failed before its first step leaves: it must not
        block the corrected rerun."""
        logged = self.metrics_file.is_file() and self.metrics_file.stat().st_size > 0
        return logged or self.lora_file.exists() or bool(self.checkpoints())

    def clear(self) -> None:
        """--overwrite: remove the previous run's files, and only those."""
        for name in (*RUN_MARKERS, LOGS_DIR, SAMPLES_DIR):
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for path in [*self.checkpoints(), *self.root.glob(f"checkpoint-*{TMP_SUFFIX}")]:
            shutil.rmtree(path)

    def begin(self, config: dict, *, clear: bool, metrics: list[str] | None) -> None:
        """The run's first write, once everything is checked and loaded: clear a previous run
        (`clear`), write the config, and on resume keep only `metrics` (the lines up to the
        checkpoint's step; the later steps are redone)."""
        with self.writing("the run's config"):
            if clear:
                self.clear()
            self.root.mkdir(parents=True, exist_ok=True)
            self.write_config(config)
            if metrics is not None:
                self.metrics_file.write_text("".join(line + "\n" for line in metrics))

    # ---- config ----------------------------------------------------------------------------------

    def write_config(self, config: dict) -> None:
        import yaml

        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        """The run's config.yaml ({} when there is none: a bare LoRA folder)."""
        if not self.config_file.is_file():
            return {}
        config = _read_yaml(self.config_file)
        if not isinstance(config, dict):
            raise AlignkitError(f"{self.config_file} must be a YAML mapping of config keys, got {type(config).__name__}")
        return config

    def check_resume(self, saved: SavedState, config: dict, may_change: set[str]) -> None:
        """Refuse to resume from `saved` with settings other than those it was trained with
        (the keys of `config` outside `may_change`, which do not alter the trajectory)."""
        # The checkpoint says which settings it was trained with; a legacy one, its run's config.yaml.
        settings, where = saved.config, "it was saved with"
        for run in (RunFolder(saved.folder.parent), self):
            if settings is None and run.config_file.is_file():
                data = _read_yaml(run.config_file)
                settings, where = data if isinstance(data, dict) else {}, f"in {run.config_file}"
        settings = settings or {}
        changed = sorted(k for k in config if k not in may_change and k in settings and settings[k] != config[k])
        if changed:
            raise AlignkitError(f"cannot resume from {saved.folder}: {', '.join(changed)} differ from the settings "
                                f"{where}; resume with the same settings or start a new --output-dir")

    # ---- metrics ---------------------------------------------------------------------------------

    def append_metrics(self, record: dict) -> None:
        """One metrics.jsonl line (NaN and inf, which are not JSON, as null)."""
        safe = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        with self.writing(METRICS_FILE):
            with open(self.metrics_file, "a") as fh:
                fh.write(json.dumps(safe) + "\n")

    def read_metrics(self) -> list[dict]:
        """The training log, one dict per optimizer step; a line that does not parse (a run
        killed mid-write leaves a torn last line) is skipped."""
        if not self.metrics_file.is_file():
            return []
        rows = []
        for line in read_text(self.metrics_file, "training log").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def metrics_up_to(self, step: int) -> list[str]:
        """metrics.jsonl lines up to `step` (a resume redoes the later ones). A torn last line
        (a run killed mid-write) is dropped; a broken line before it is an error, not silently lost."""
        if not self.metrics_file.is_file():
            return []
        lines = [line for line in read_text(self.metrics_file, "metrics").splitlines() if line.strip()]
        keep = []
        for number, line in enumerate(lines, 1):
            try:
                row_step = json.loads(line)["step"]
            except (ValueError, TypeError, KeyError):
                if number == len(lines):
                    break
                raise AlignkitError(f"{self.metrics_file} line {number} is not a metrics record; fix or remove "
                                    "that line (only a torn last line is dropped on resume)") from None
            if row_step <= step:
                keep.append(line)
        return keep

    # ---- checkpoints -----------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete `checkpoint-<step>` folders, oldest first (ones being written are not)."""
        return checkpoint_dirs(self.root)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def resolve_resume(self, resume: str) -> Path:
        """'latest' -> the newest checkpoint here; a path -> that checkpoint folder, checked."""
        return checkpoints.resolve_resume(resume, self.root)

    def read_checkpoint(self, folder: Path, process_index: int, with_scaler: bool) -> SavedState:
        """Every file of `folder` this process needs, read safely and checked (checkpoints.py)."""
        return checkpoints.read_checkpoint(folder, process_index, with_scaler)

    @contextlib.contextmanager
    def new_checkpoint(self, step: int, main: bool):
        """`with run.new_checkpoint(step, main) as tmp:` write the checkpoint's files into
        `tmp` (every process: accelerate's state), then `publish_checkpoint(tmp, ...)` (the main
        process). A disk that fails mid-write removes `tmp` and leaves the previous checkpoints
        as they were: one line, `RunWriteError`."""
        tmp = checkpoints.temporary_path(self.root, step)
        try:
            if main and tmp.exists():
                shutil.rmtree(tmp)  # left by a run killed mid-write
            yield tmp
        except (OSError, RuntimeError) as exc:
            # torch.save reports a full disk as a RuntimeError ("file write failed").
            if isinstance(exc, OSError) and exc.errno not in _DISK_ERRNOS or \
                    isinstance(exc, RuntimeError) and "write" not in str(exc).lower():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            reason = exc.strerror if isinstance(exc, OSError) else str(exc).strip().splitlines()[0]
            raise RunWriteError(f"cannot write {checkpoint_name(step)} in {self.root} ({reason}); "
                                f"{self._resume_note()}") from None

    def publish_checkpoint(self, tmp: Path, step: int, generator_state, nonfinite: dict, config: dict,
                           limit: int | None) -> Path:
        """Add alignkit's own state (JSON and safetensors) to a checkpoint written into `tmp`,
        rename it into place (atomic), and drop the oldest beyond `limit`."""
        checkpoints.write_train_state(tmp, step, generator_state, nonfinite, config)
        return checkpoints.publish(tmp, limit)

    # ---- disk errors -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, what: str):
        """Around a write into the folder: a disk error becomes one line naming the checkpoint
        to resume from."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in _DISK_ERRNOS:
                raise
            raise RunWriteError(f"cannot write {what} in {self.root} ({exc.strerror}); "
                                f"{self._resume_note()}") from None

    def _resume_note(self) -> str:
        last = self.latest_checkpoint()
        if last is None:
            return "no checkpoint was saved yet"
        return f"the last complete checkpoint is {last}: resume from it with --resume-from-checkpoint latest"


def _read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(read_text(path, "run config"))
    except yaml.YAMLError as exc:
        raise AlignkitError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); fix or remove it") from None
