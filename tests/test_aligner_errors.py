"""Bad input to `alignkit train`: one line on stderr, a non-zero exit, nothing on disk lost."""

import pytest

from cli_runner import run_cli

BASE = ["--reward", "brightness", "--prompt", "a cat", "--num-inference-steps", "2", "--guidance-scale", "1",
        "--train-batch-size", "1", "--max-train-steps", "1", "--report-to", "none", "--truncation", "last:1"]


@pytest.mark.parametrize("extra, match", [
    (["--truncation", "last:5"], "backpropagates through 5 steps but --num-inference-steps is 2"),
    (["--resolution", "31"], "--resolution must be a positive multiple of 8, got 31"),
    (["--reward", "nondiff"], "reward 'nondiff' is not differentiable"),
    (["--resume-from-checkpoint", "latest"], "no checkpoint-<step> folder"),
    (["--truncation", "sometimes"], "unknown --truncation 'sometimes'"),
    (["--mixed-precision", "fp8"], "--mixed-precision 'fp8' is not one of"),
])
def test_bad_settings(tiny_sd, test_rewards, tmp_path, fails, extra, match):
    out = tmp_path / "run"
    fails(["train", "--model", tiny_sd, *BASE, "--output-dir", out, *extra], match)
    assert not out.exists()


def test_missing_models(test_rewards, tmp_path, fails):
    fails(["train", "--model", tmp_path / "nowhere", *BASE, "--output-dir", tmp_path / "a"], "no folder at")
    err = fails(["train", "--model", "no-such-org/no-such-model", *BASE, "--output-dir", tmp_path / "b"],
                 "no-such-org/no-such-model")
    assert "HF_HUB_OFFLINE" in err
    (tmp_path / "notamodel").mkdir()
    fails(["train", "--model", tmp_path / "notamodel", *BASE, "--output-dir", tmp_path / "c"], "model_index.json")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_toy_default_without_the_toy_weights(test_rewards, tmp_path, fails, monkeypatch):
    import alignkit.toy

    monkeypatch.setattr(alignkit.toy, "WEIGHTS_DIR", tmp_path / "no-weights")
    err = fails(["train", *BASE, "--output-dir", tmp_path / "run"], "toy pipeline:")
    assert "missing from this install" in err and "(--model)" in err
    assert not (tmp_path / "run").exists()


def test_empty_prompt_file(tiny_sd, test_rewards, tmp_path, fails):
    (tmp_path / "prompts.txt").write_text("\n  \n")
    args = ["--model", tiny_sd, *BASE[2:], "--reward", "brightness", "--prompts", tmp_path / "prompts.txt"]
    args.remove("--prompt"), args.remove("a cat")
    fails(["train", *args, "--output-dir", tmp_path / "run"], "is empty")


def test_output_dir_with_another_run_is_kept(tiny_sd, test_rewards, tmp_path, fails):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("reward: hps\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    fails(["train", "--model", tiny_sd, *BASE, "--output-dir", run], "already holds a run")
    assert (run / "config.yaml").read_text() == "reward: hps\n"
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    # With --overwrite the previous run is replaced, and only its files.
    (run / "notes.txt").write_text("mine")
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--output-dir", run, "--overwrite"]) == 0
    assert "brightness" in (run / "config.yaml").read_text() and (run / "notes.txt").read_text() == "mine"


def test_resume_with_changed_settings_is_refused(tiny_sd, test_rewards, tmp_path, fails):
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--output-dir", run, "--checkpointing-steps", "1"]) == 0
    fails(["train", "--model", tiny_sd, *BASE, "--output-dir", run, "--resume-from-checkpoint", "latest",
           "--seed", "3"], "seed differ from the settings it was saved with")


def test_a_half_written_checkpoint_is_never_resumed(tiny_sd, test_rewards, tmp_path):
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_sd, *BASE, "--output-dir", run, "--checkpointing-steps", "1"]) == 0
    # A kill mid-write leaves checkpoint-<step>.tmp: it is not a checkpoint, the complete one stays.
    (run / "checkpoint-2.tmp").mkdir()
    from alignkit.runfolder.checkpoints import resolve_resume

    assert resolve_resume("latest", run).name == "checkpoint-1"
