"""Two CPU processes (gloo) through `accelerate launch`: the same LoRA on
both ranks, equal to one process with the same global batch (the forward goes through the
prepared DDP module, so gradients really are averaged)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from alignkit.hub import load_state_dict
from cli_runner import run_cli

ENTRY = Path(__file__).with_name("aligner_entry.py")
ARGS = ["--reward", "brightness", "--prompts", "simple_animals", "--num-inference-steps", "2",
        "--guidance-scale", "2", "--truncation", "uniform:0-2", "--learning-rate", "0.05",
        "--max-train-steps", "3", "--checkpointing-steps", "0", "--report-to", "none", "--seed", "1"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_with_the_same_global_batch(tiny_sd, test_rewards, tmp_path):
    dump = tmp_path / "ranks"
    dump.mkdir()
    # accelerate's `--cpu` starts a single process unless mpirun is configured; torchrun-style
    # launching (`--multi_gpu`) with ACCELERATE_USE_CPU=1 gives gloo processes on the CPU.
    env = {**os.environ, "ALIGNKIT_TEST_DUMP": str(dump), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    result = subprocess.run([*launch, str(ENTRY), "train", "--model", str(tiny_sd), *ARGS, "--train-batch-size", "1",
                             "--output-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_cli(["train", "--model", tiny_sd, *ARGS, "--train-batch-size", "2", "--output-dir", tmp_path / "one"]) == 0

    rank0, rank1 = (load_state_dict(dump / f"rank{i}.safetensors") for i in (0, 1))
    saved = load_state_dict(tmp_path / "two" / "pytorch_lora_weights.safetensors")
    one = load_state_dict(tmp_path / "one" / "pytorch_lora_weights.safetensors")
    assert len(rank0) == len(one) > 0
    for key, value in rank0.items():
        torch.testing.assert_close(rank1[key], value, rtol=0, atol=0)
        torch.testing.assert_close(saved[f"unet.{key}"], value, rtol=0, atol=0)
        torch.testing.assert_close(value, one[f"unet.{key}"], rtol=1e-4, atol=1e-5)
    # Training moved the adapter (so equality is not the trivial one of untouched weights).
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in rank0.items() if "lora_B" in k or "lora.up" in k)


GRPO = ["--algorithm", "grpo", "--reward", "nondiff", "--prompts", "simple_animals", "--num-inference-steps", "3",
        "--guidance-scale", "2", "--group-size", "4", "--grpo-steps", "first:2", "--gradient-accumulation-steps", "2",
        "--learning-rate", "0.05", "--max-train-steps", "2", "--checkpointing-steps", "0", "--report-to", "none",
        "--seed", "1"]


def test_grpo_two_processes_match_one_with_the_same_global_batch(tiny_sd, test_rewards, tmp_path):
    """Each group of 4 is split over the two processes (2 images each): its advantages are
    computed over the whole group, so the update equals one process sampling all 4."""
    dump = tmp_path / "ranks"
    dump.mkdir()
    env = {**os.environ, "ALIGNKIT_TEST_DUMP": str(dump), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    result = subprocess.run([*launch, str(ENTRY), "train", "--model", str(tiny_sd), *GRPO, "--train-batch-size", "2",
                             "--output-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_cli(["train", "--model", tiny_sd, *GRPO, "--train-batch-size", "4", "--output-dir", tmp_path / "one"]) == 0

    rank0, rank1 = (load_state_dict(dump / f"rank{i}.safetensors") for i in (0, 1))
    one = load_state_dict(tmp_path / "one" / "pytorch_lora_weights.safetensors")
    assert len(rank0) == len(one) > 0
    for key, value in rank0.items():
        torch.testing.assert_close(rank1[key], value, rtol=0, atol=0)
        torch.testing.assert_close(value, one[f"unet.{key}"], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in rank0.items() if "lora_B" in k or "lora.up" in k)
    # The metrics (rewards gathered from both processes) are the single process's too.
    import json

    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("one", "two")}
    for a, b in zip(rows["one"], rows["two"]):
        assert abs(a["reward"] - b["reward"]) < 1e-5 and abs(a["kl"] - b["kl"]) < 1e-4 * (1 + a["kl"])
