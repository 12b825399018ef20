"""What a trusted training tool must guarantee: resume never runs code from the checkpoint
folder, a non-finite step never reaches the LoRA, one writer per run folder, and a disk
that fails mid-run costs no complete checkpoint."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignkit.runfolder import checkpoints
from alignkit.runfolder import LORA_FILE
from alignkit.runfolder.lock import LOCK_FILE
from alignkit.hub import load_state_dict
from alignkit.rewards.registry import REGISTRY, register
from tiny_models import write_code_pickle
from alignkit.testing import Brightness
from cli_runner import run_cli

BASE = ["--reward", "brightness", "--prompt", "a cat", "--num-inference-steps", "2", "--guidance-scale", "1",
        "--train-batch-size", "1", "--report-to", "none", "--truncation", "last:1", "--seed", "0"]


def _tree(root: Path) -> dict:
    """Every file under root with its bytes' size and content hash: 'the disk did not change'."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpointed_run(tiny_sd, test_rewards, tmp_path_factory):
    """A 2-step run with a checkpoint at each step (read-only for the tests: they copy it)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "2", "--checkpointing-steps", "1",
                    "--output-dir", run]) == 0
    return run


def test_a_checkpoint_holds_no_pickle_of_ours(checkpointed_run):
    names = sorted(p.name for p in (checkpointed_run / "checkpoint-2").iterdir())
    assert names == sorted([LORA_FILE, "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                            "train_state.json", "train_state.safetensors"])
    state = json.loads((checkpointed_run / "checkpoint-2" / "train_state.json").read_text())
    assert state["step"] == 2 and state["config"]["reward"] == "brightness"


def test_a_planted_pickle_in_any_checkpoint_file_is_refused_without_running(checkpointed_run, tiny_sd, tmp_path,
                                                                            fails):
    files = sorted(p.name for p in (checkpointed_run / "checkpoint-2").iterdir())
    for name in files:
        run = tmp_path / name
        shutil.copytree(checkpointed_run, run)
        marker = tmp_path / f"{name}.pwned"
        write_code_pickle(run / "checkpoint-2" / name, marker)
        before = _tree(run)
        err = fails(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "3", "--checkpointing-steps", "1",
                     "--output-dir", run, "--resume-from-checkpoint", "latest"])
        assert not marker.exists(), f"the payload planted in {name} ran"
        assert name in err or "checkpoint" in err, err
        assert _tree(run) == before, name  # nothing written, not even the lock file left


def test_a_missing_checkpoint_file_is_an_error_not_a_silent_skip(checkpointed_run, tiny_sd, tmp_path, fails):
    for name in ("random_states_0.pkl", "optimizer.bin", "scheduler.bin", "train_state.json", LORA_FILE):
        run = tmp_path / name
        shutil.copytree(checkpointed_run, run)
        (run / "checkpoint-2" / name).unlink()
        fails(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "3", "--output-dir", run,
               "--resume-from-checkpoint", "latest"], f"{name} missing", "incomplete")


def test_a_checkpoint_of_another_rank_or_reward_is_refused_even_into_a_new_folder(checkpointed_run, tiny_sd,
                                                                                 tmp_path, fails):
    source = checkpointed_run / "checkpoint-2"
    for extra, field in ((["--rank", "2"], "rank"), (["--reward", "brightness:2"], "reward")):
        fails(["train", "--model", tiny_sd, *BASE, *extra, "--max-train-steps", "3",
               "--output-dir", tmp_path / "new", "--resume-from-checkpoint", source], f"{field} differ")
        assert not (tmp_path / "new").exists()
    # The same settings may continue into a new folder (a fork of the run).
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "3", "--checkpointing-steps", "1",
                    "--output-dir", tmp_path / "fork", "--resume-from-checkpoint", source]) == 0
    assert [json.loads(x)["step"] for x in (tmp_path / "fork" / "metrics.jsonl").read_text().splitlines()] == [3]


def test_a_torn_last_metrics_line_is_dropped_on_resume(checkpointed_run, tiny_sd, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "rew')  # killed mid-write
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "3", "--checkpointing-steps", "1",
                    "--output-dir", run, "--resume-from-checkpoint", "latest"]) == 0
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


# ---- non-finite steps ---------------------------------------------------------------------------

def _register_nan_reward(name: str, nan_calls: set[int]):
    """Brightness, except NaN on the given forward calls (0-based)."""
    calls = []

    class NanSometimes(Brightness):
        def score(self, images, prompts):
            calls.append(1)
            value = super().score(images, prompts)
            return value * float("nan") if len(calls) - 1 in nan_calls else value

    register(name, "NaN on some calls (tests)")(lambda device=None, dtype=None: NanSometimes().to(device))


@pytest.fixture
def nan_rewards():
    yield _register_nan_reward
    for name in [n for n in REGISTRY if n.startswith("nan_")]:
        REGISTRY.pop(name)


def _finite(path: Path) -> bool:
    return all(torch.isfinite(v).all() for v in load_state_dict(path).values())


def test_a_nan_reward_stops_the_run_keeping_finite_checkpoints_and_no_final_lora(tiny_sd, nan_rewards, tmp_path,
                                                                                capsys):
    nan_rewards("nan_late", nan_calls={2, 3, 4, 5, 6, 7})
    run = tmp_path / "run"
    code = run_cli(["train", "--model", tiny_sd, *BASE, "--reward", "nan_late", "--learning-rate", "0.05",
                    "--max-train-steps", "8", "--checkpointing-steps", "1", "--output-dir", run])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and "3 steps in a row had a non-finite loss" in errors[0], err
    assert "checkpoint-4" in errors[0]
    assert not (run / LORA_FILE).exists() and not (run / LOCK_FILE).exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["skipped"] for r in rows] == [False, False, True, True, True]
    assert [r["nonfinite_steps"] for r in rows] == [0, 0, 1, 2, 3] and rows[-1]["reward"] is None
    # Skipped steps did not touch the LoRA: the checkpoints after step 2 hold its weights.
    assert sorted(p.name for p in checkpoints.checkpoint_dirs(run)) == [f"checkpoint-{i}" for i in (1, 2, 3, 4)]
    step2 = load_state_dict(run / "checkpoint-2" / LORA_FILE)
    for i in (3, 4):
        assert _finite(run / f"checkpoint-{i}" / LORA_FILE)
        later = load_state_dict(run / f"checkpoint-{i}" / LORA_FILE)
        assert all(torch.equal(later[k], step2[k]) for k in step2)


def test_an_isolated_nan_step_is_skipped_and_training_goes_on(tiny_sd, nan_rewards, tmp_path):
    nan_rewards("nan_once", nan_calls={1})
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--reward", "nan_once", "--learning-rate", "0.05",
                    "--max-train-steps", "3", "--checkpointing-steps", "0", "--output-dir", run]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False, True, False] and rows[-1]["nonfinite_steps"] == 1
    assert _finite(run / LORA_FILE)


def test_a_learning_rate_that_blows_up_stops_with_one_line(tiny_sd, test_rewards, tmp_path, capsys):
    run = tmp_path / "run"
    code = run_cli(["train", "--model", tiny_sd, *BASE, "--learning-rate", "1e3", "--max-train-steps", "10",
                    "--checkpointing-steps", "1", "--output-dir", run])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1 and "non-finite" in errors[0], errors
    assert not (run / LORA_FILE).exists()
    assert all(_finite(p / LORA_FILE) for p in checkpoints.checkpoint_dirs(run))


def test_eval_refuses_a_lora_with_non_finite_values(checkpointed_run, tmp_path, fails):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    state = load_state_dict(run / LORA_FILE)
    first = next(iter(state))
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(run / LORA_FILE))
    fails(["eval", run, "--seeds", "1", "--rewards", "brightness"], "non-finite", "final")
    assert not (run / "eval").exists()


# ---- one writer per run folder ---------------------------------------------------------------

def test_a_second_train_on_a_running_folder_is_refused(tiny_sd, test_rewards, tmp_path, capsys):
    """The second run starts while the first is inside its training loop (from its reward)."""
    run = tmp_path / "run"
    seen = {}

    class StartsAnother(Brightness):
        def score(self, images, prompts):
            if not seen:
                for extra in ([], ["--overwrite"], ["--resume-from-checkpoint", "latest"]):
                    seen[tuple(extra)] = run_cli(["train", "--model", tiny_sd, *BASE, *extra,
                                                  "--max-train-steps", "1", "--output-dir", run])
            return super().score(images, prompts)

    register("starts_another", "tests")(lambda device=None, dtype=None: StartsAnother().to(device))
    try:
        assert run_cli(["train", "--model", tiny_sd, *BASE, "--reward", "starts_another", "--max-train-steps", "2",
                        "--checkpointing-steps", "1", "--output-dir", run]) == 0
    finally:
        REGISTRY.pop("starts_another")
    err = capsys.readouterr().err
    assert all(code != 0 for code in seen.values()) and len(seen) == 3, seen
    assert err.count("is in use by another alignkit train") == 3, err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # the first run's log, not interleaved
    assert "starts_another" in (run / "config.yaml").read_text()
    assert not (run / LOCK_FILE).exists()


def test_a_lock_left_by_a_killed_run_is_stale(tiny_sd, test_rewards, tmp_path, fails):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from alignkit.runfolder.lock import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        fails(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "1", "--output-dir", run], f"pid {holder.pid}")
        assert sorted(os.listdir(run)) == [LOCK_FILE]  # the holder's; the refused run wrote nothing
    finally:
        holder.kill()  # as a crash would: no clean-up, the lock file stays
        holder.wait()
    assert (run / LOCK_FILE).exists()
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "1", "--output-dir", run]) == 0
    assert (run / LORA_FILE).exists() and not (run / LOCK_FILE).exists()


# ---- the disk fails mid-run -----------------------------------------------------------------------

def test_a_full_disk_mid_run_is_one_line_and_the_last_checkpoint_survives(tiny_sd, test_rewards, tmp_path, capsys,
                                                                           monkeypatch):
    write = checkpoints.write_train_state

    def fills_up(folder, step, *args):
        if step == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "train_state.json"))
        return write(folder, step, *args)

    monkeypatch.setattr(checkpoints, "write_train_state", fills_up)
    run = tmp_path / "run"
    code = run_cli(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "3", "--checkpointing-steps", "1",
                    "--output-dir", run])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1, errors
    assert "No space left on device" in errors[0] and "checkpoint-1" in errors[0], errors
    assert [p.name for p in run.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-1"]
    monkeypatch.setattr(checkpoints, "write_train_state", write)
    # The survivor resumes.
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "3", "--checkpointing-steps", "1",
                    "--output-dir", run, "--resume-from-checkpoint", "latest"]) == 0


def test_a_planted_pickle_in_the_earlier_formats_state_file_is_refused_without_running(checkpointed_run, tiny_sd,
                                                                                      tmp_path, fails):
    """The earlier format's custom_checkpoint_0.pkl (accelerate's pickle of registered objects,
    which its load_state would unpickle in full) is read weights-only: code in it never runs."""
    run = tmp_path / "legacy"
    shutil.copytree(checkpointed_run, run)
    folder = run / "checkpoint-2"
    (folder / "train_state.json").unlink()
    (folder / "train_state.safetensors").unlink()
    marker = tmp_path / "legacy.pwned"
    write_code_pickle(folder / "custom_checkpoint_0.pkl", marker)
    before = _tree(run)
    err = fails(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "3", "--checkpointing-steps", "1",
                 "--output-dir", run, "--resume-from-checkpoint", "latest"])
    assert not marker.exists(), "the payload planted in custom_checkpoint_0.pkl ran"
    assert "custom_checkpoint_0.pkl: it is a pickle that asks to run code" in err, err
    assert _tree(run) == before


def test_a_checkpoint_of_the_earlier_format_resumes_to_the_same_weights(checkpointed_run, tiny_sd, tmp_path):
    """Before train_state.json, the step and generator were in accelerate's pickle of registered
    objects; such a checkpoint still resumes (read weights-only), to the same LoRA."""
    from safetensors.torch import load_file

    new, legacy = tmp_path / "new", tmp_path / "legacy"
    shutil.copytree(checkpointed_run, new)
    shutil.copytree(checkpointed_run, legacy)
    folder = legacy / "checkpoint-2"
    generator = load_file(str(folder / "train_state.safetensors"))["generator"]
    torch.save({"step": 2, "generator": generator}, folder / "custom_checkpoint_0.pkl")
    (folder / "train_state.json").unlink()
    (folder / "train_state.safetensors").unlink()
    for run in (new, legacy):
        assert run_cli(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "3", "--checkpointing-steps", "1",
                        "--output-dir", run, "--resume-from-checkpoint", "latest"]) == 0
    a, b = load_state_dict(new / LORA_FILE), load_state_dict(legacy / LORA_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], load_state_dict(checkpointed_run / LORA_FILE)[k]) for k in a)


def test_a_run_that_fails_before_its_first_step_does_not_block_the_corrected_rerun(tiny_sd, test_rewards, tmp_path,
                                                                                  fails):
    from alignkit.errors import AlignkitError

    class FailsAtOnce(Brightness):
        def score(self, images, prompts):
            raise AlignkitError("this reward cannot score these images")

    register("fails_at_once", "tests")(lambda device=None, dtype=None: FailsAtOnce().to(device))
    run = tmp_path / "run"
    try:
        err = fails(["train", "--model", tiny_sd, *BASE, "--reward", "fails_at_once", "--max-train-steps", "1",
                     "--output-dir", run])
    finally:
        REGISTRY.pop("fails_at_once")
    assert err.endswith("this reward cannot score these images")
    assert (run / "config.yaml").exists() and not (run / LOCK_FILE).exists()
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--max-train-steps", "1", "--output-dir", run]) == 0
    assert "brightness" in (run / "config.yaml").read_text()
