"""`RunFolder`, the one owner of a run folder, on its own (no training)."""

import errno
import json

import pytest

from alignkit.errors import AlignkitError
from alignkit.runfolder import LORA_FILE, RunFolder, RunWriteError


def test_a_config_alone_is_not_a_run(tmp_path):
    run = RunFolder(tmp_path)
    run.write_config({"rank": 4})
    assert not run.holds_run() and run.read_config() == {"rank": 4}
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-20.tmp").mkdir()  # being written: not a checkpoint yet
    assert run.holds_run() and run.latest_checkpoint() == tmp_path / "checkpoint-12"
    run.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_metrics_append_read_and_keep_up_to_a_step(tmp_path):
    run = RunFolder(tmp_path)
    for step in (1, 2, 3):
        run.append_metrics({"step": step, "reward": float("nan") if step == 2 else 0.5})
    assert [row["reward"] for row in run.read_metrics()] == [0.5, None, 0.5]
    with open(run.metrics_file, "a") as fh:
        fh.write('{"step": 4, "rew')  # a run killed mid-write
    assert [json.loads(line)["step"] for line in run.metrics_up_to(2)] == [1, 2]
    assert len(run.read_metrics()) == 3
    run.metrics_file.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(AlignkitError, match="line 2 is not a metrics record"):
        run.metrics_up_to(2)


def test_a_disk_error_is_one_line_naming_the_checkpoint_to_resume_from(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(RunWriteError, match="no checkpoint was saved yet"):
        with run.writing("the final LoRA"):
            raise OSError(errno.ENOSPC, "No space left on device")
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(RunWriteError, match=r"cannot write checkpoint-6 .*checkpoint-5: resume from it"):
        with run.new_checkpoint(6, main=True) as tmp:
            tmp.mkdir()
            raise RuntimeError("[enforce fail at inline_container.cc] file write failed")
    assert not tmp.exists()
    with pytest.raises(ValueError):  # not a disk error: not translated
        with run.writing(LORA_FILE):
            raise ValueError("a bug")
