"""`alignkit train` end to end on tiny pipelines: learning, the run-directory contract,
checkpoints and resume, truncation bookkeeping, and loading the LoRA in plain diffusers."""

import json

import torch
import yaml

from alignkit.aligner import load_config, train
from alignkit.runfolder import LORA_FILE
from alignkit.hub import load_state_dict
from cli_runner import run_cli

FAST = ["--reward", "brightness", "--prompt", "two red circles", "--num-inference-steps", "2",
        "--guidance-scale", "1", "--train-batch-size", "2", "--report-to", "none", "--seed", "0"]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_reward_rises_and_the_run_directory_holds_the_contract(tiny_sd, test_rewards, tmp_path):
    run = tmp_path / "run"
    # A random tiny VAE barely responds to its latents, so LoRA also wraps the UNet's output
    # convolutions here (set through a config file, which flags then override).
    (tmp_path / "config.yaml").write_text("lora_target_modules: [to_q, to_k, to_v, to_out.0, proj_out, conv_out]\n"
                                          "eta: 0.0\nlearning_rate: 0.5\n")
    code = run_cli(["train", "--config", tmp_path / "config.yaml", "--model", tiny_sd, *FAST, "--truncation", "full",
                    "--learning-rate", "0.05", "--max-train-steps", "20", "--checkpointing-steps", "10",
                    "--checkpoints-total-limit", "1", "--output-dir", run])
    assert code == 0
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 21))
    for key in ("reward", "reward/brightness", "loss", "lr", "k", "step_time", "peak_mem_mb"):
        assert all(key in r for r in rows), key
    first, last = (sum(r["reward"] for r in part) / 3 for part in (rows[:3], rows[-3:]))
    # Noise between steps is ~0.001 (fixed prompt, eta 0); the rise is an order of magnitude above it.
    assert last > first + 0.01, (first, last)
    assert sum(b["reward"] > a["reward"] for a, b in zip(rows, rows[1:])) >= 12
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["pretrained_model_name_or_path"] == str(tiny_sd) and config["reward"] == "brightness"
    assert config["num_inference_steps"] == 2 and config["truncation"] == "full" and config["resolution"] is None
    assert config["eta"] == 0.0 and config["learning_rate"] == 0.05 and "conv_out" in config["lora_target_modules"]
    # checkpoints_total_limit=1 keeps only the newest; no temporary folder is left behind.
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-20"]
    assert (run / "checkpoint-20" / LORA_FILE).is_file() and (run / LORA_FILE).is_file()


def test_stop_and_resume_equals_an_uninterrupted_run(tiny_sd, test_rewards, tmp_path):
    common = ["--model", tiny_sd, *FAST, "--truncation", "uniform:0-2", "--eta", "1.0", "--learning-rate", "0.02",
              "--checkpointing-steps", "2", "--gradient-accumulation-steps", "2"]
    assert run_cli(["train", *common, "--max-train-steps", "4", "--output-dir", tmp_path / "full"]) == 0
    assert run_cli(["train", *common, "--max-train-steps", "2", "--output-dir", tmp_path / "cut"]) == 0
    assert run_cli(["train", *common, "--max-train-steps", "4", "--output-dir", tmp_path / "cut",
                    "--resume-from-checkpoint", "latest"]) == 0
    full = load_state_dict(tmp_path / "full" / LORA_FILE)
    resumed = load_state_dict(tmp_path / "cut" / LORA_FILE)
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("step_time", "peak_mem_mb")} for r in rows]  # noqa: E731
    assert strip(_metrics(tmp_path / "cut")) == strip(_metrics(tmp_path / "full"))


def test_one_k_per_trajectory_and_it_is_the_one_logged(tiny_sd, test_rewards, tmp_path, monkeypatch):
    from alignkit.aligner.sampler import DDIMSampler

    seen = []
    original = DDIMSampler.sample

    def spy(self, unet, cond, traj, nograd_unet=None):
        if torch.is_grad_enabled():
            seen.append(traj.k)
        return original(self, unet, cond, traj, nograd_unet)

    monkeypatch.setattr(DDIMSampler, "sample", spy)
    config = load_config(None, dict(pretrained_model_name_or_path=str(tiny_sd), reward="brightness",
                                    prompt="a cat", num_inference_steps=3, guidance_scale=1.0,
                                    truncation="gaussian:1,1.5", train_batch_size=1, gradient_accumulation_steps=2,
                                    max_train_steps=5, resolution=16, checkpointing_steps=0, report_to="none",
                                    output_dir=str(tmp_path / "run")))
    train(config)
    logged = [r["k"] for r in _metrics(tmp_path / "run")]
    # Both micro-batches of an optimizer step share its K; the logged K is that one.
    assert seen[0::2] == seen[1::2] == logged
    assert all(1 <= k <= 3 for k in logged) and len(set(logged)) > 1


def test_compile_unet_compiles_the_unet_once_for_the_steps_without_gradients(tiny_sd, test_rewards, tmp_path,
                                                                             monkeypatch):
    compiled = []

    def fake_compile(module, **kwargs):  # inductor would take a minute here; the wiring is the test
        calls = []
        compiled.append((module, calls))

        def run(*args, **kw):
            calls.append(torch.is_grad_enabled())
            return module(*args, **kw)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    run_dir = tmp_path / "run"
    train(load_config(None, dict(pretrained_model_name_or_path=str(tiny_sd), reward="brightness", prompt="a cat",
                                 num_inference_steps=4, truncation="last:1", guidance_scale=1.0, train_batch_size=1,
                                 max_train_steps=2, resolution=16, checkpointing_steps=0, report_to="none",
                                 compile_unet=True, output_dir=str(run_dir))))
    (module, calls), = compiled
    assert type(module).__name__ == "UNet2DConditionModel"
    assert calls == [False] * 3 * 2  # T - K = 3 no-grad steps per optimizer step, never with gradients
    assert len(_metrics(run_dir)) == 2


def test_sdxl_run_and_lora_loads_into_plain_diffusers(tiny_sdxl, test_rewards, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    run = tmp_path / "xl"
    assert run_cli(["train", "--model", tiny_sdxl, *FAST, "--guidance-scale", "3", "--truncation", "last:1",
                    "--learning-rate", "0.05", "--max-train-steps", "2", "--output-dir", run]) == 0
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="two red circles", num_inference_steps=2, guidance_scale=3.0, output_type="pt")
    base = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(run)
    tuned = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert (tuned - base).abs().max() > 1e-4


def test_sd_lora_loads_with_rank_and_alpha(tiny_sd, test_rewards, tmp_path):
    from diffusers import StableDiffusionPipeline

    run = tmp_path / "sd"
    assert run_cli(["train", "--model", tiny_sd, *FAST, "--rank", "2", "--lora-alpha", "8", "--truncation", "last:1",
                    "--max-train-steps", "1", "--output-dir", run]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.load_lora_weights(run)
    (config,) = pipe.unet.peft_config.values()
    assert config.r == 2 and config.lora_alpha == 8


def test_config_file_then_flags(tmp_path):
    (tmp_path / "c.yaml").write_text("rank: 8\nlearning_rate: 1\nreward_options: {hps: {version: v2.1}}\n")
    (tmp_path / "c.toml").write_text('rank = 16\ntruncation = "last:3"\n')
    config = load_config(tmp_path / "c.yaml", {"rank": 2, "seed": None, "reward_options": {"hps": {"x": 1}}})
    assert config.rank == 2 and config.learning_rate == 1.0 and config.seed == 0
    assert config.reward_options == {"hps": {"version": "v2.1", "x": 1}}
    config = load_config(tmp_path / "c.toml", {})
    assert config.rank == 16 and config.truncation == "last:3"
