"""`alignkit train` and `eval` on tiny SD3 and FLUX.1 pipelines: family defaults in the run's
config, exact resume, LoRA files that plain diffusers loads, and evaluation through the plain
pipeline (CPU, seconds each)."""

import json

import pytest
import torch
import yaml

from alignkit.families import FLUX_TARGETS, SD3_TARGETS
from alignkit.hub import load_state_dict
from alignkit.runfolder import LORA_FILE
from alignkit.testing import RESOLUTION
from cli_runner import run_cli

FAST = ["--reward", "brightness", "--prompt", "two red circles", "--num-inference-steps", "2",
        "--train-batch-size", "2", "--report-to", "none", "--seed", "0"]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _generate(pipe, guidance):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="two red circles", num_inference_steps=2, guidance_scale=guidance, height=RESOLUTION,
                width=RESOLUTION, max_sequence_length=32, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("fixture, pipeline, targets, guidance", [
    ("tiny_sd3", "StableDiffusion3Pipeline", SD3_TARGETS, 7.0),
    ("tiny_flux", "FluxPipeline", FLUX_TARGETS, 3.5),
])
def test_run_records_family_defaults_and_its_lora_loads_in_plain_diffusers(fixture, pipeline, targets, guidance,
                                                                          test_rewards, tmp_path, request):
    import diffusers

    model = request.getfixturevalue(fixture)
    run = tmp_path / "run"
    assert run_cli(["train", "--model", model, *FAST, "--truncation", "last:1", "--learning-rate", "0.05",
                    "--max-train-steps", "2", "--checkpointing-steps", "0", "--output-dir", run]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    # Unset flags took the family's defaults, and the run's config says so.
    assert config["eta"] == 0.0 and config["guidance_scale"] == guidance
    assert config["lora_target_modules"] == list(targets)
    assert [r["step"] for r in _metrics(run)] == [1, 2]
    state = load_state_dict(run / LORA_FILE)
    assert state and all(k.startswith("transformer.") for k in state)
    cls = getattr(diffusers, pipeline)
    pipe = cls.from_pretrained(model)
    base = _generate(pipe, guidance)
    pipe.load_lora_weights(run)
    (adapter,) = pipe.transformer.peft_config.values()
    assert adapter.r == 4 and set(adapter.target_modules) == set(targets)
    assert (_generate(pipe, guidance) - base).abs().max() > 1e-4


@pytest.mark.parametrize("fixture", ["tiny_sd3", "tiny_flux"])
def test_stop_and_resume_equals_an_uninterrupted_run(fixture, test_rewards, tmp_path, request):
    common = ["--model", request.getfixturevalue(fixture), *FAST, "--truncation", "uniform:0-1",
              "--learning-rate", "0.02", "--checkpointing-steps", "2", "--gradient-accumulation-steps", "2"]
    assert run_cli(["train", *common, "--max-train-steps", "4", "--output-dir", tmp_path / "full"]) == 0
    assert run_cli(["train", *common, "--max-train-steps", "2", "--output-dir", tmp_path / "cut"]) == 0
    assert run_cli(["train", *common, "--max-train-steps", "4", "--output-dir", tmp_path / "cut",
                    "--resume-from-checkpoint", "latest"]) == 0
    full, resumed = load_state_dict(tmp_path / "full" / LORA_FILE), load_state_dict(tmp_path / "cut" / LORA_FILE)
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("step_time", "peak_mem_mb")} for r in rows]  # noqa: E731
    assert strip(_metrics(tmp_path / "cut")) == strip(_metrics(tmp_path / "full"))
    assert len({r["k"] for r in _metrics(tmp_path / "full")}) >= 1


def test_reward_rises_on_flux(tiny_flux, test_rewards, tmp_path):
    """The gradient through the Euler chain, the packing and the VAE's shift points uphill."""
    run = tmp_path / "run"
    (tmp_path / "config.yaml").write_text("lora_target_modules: [attn.to_q, attn.to_k, attn.to_v, attn.to_out.0, "
                                          "ff.net.2, proj_out]\n")
    assert run_cli(["train", "--config", tmp_path / "config.yaml", "--model", tiny_flux, *FAST, "--truncation",
                    "full", "--learning-rate", "0.05", "--max-train-steps", "12", "--checkpointing-steps", "0",
                    "--output-dir", run]) == 0
    rows = _metrics(run)
    first, last = (sum(r["reward"] for r in part) / 3 for part in (rows[:3], rows[-3:]))
    # Fixed prompt, deterministic sampler, one seed stream: the rise is well above step-to-step noise.
    assert last > first + 0.005, (first, last)


def test_eval_runs_on_a_flux_run_through_the_plain_pipeline(tiny_flux, test_rewards, tmp_path):
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_flux, *FAST, "--truncation", "last:1", "--learning-rate", "0.05",
                    "--max-train-steps", "1", "--checkpointing-steps", "0", "--output-dir", run]) == 0
    assert run_cli(["eval", run, "--seeds", "2", "--scales", "0,1", "--rewards", "brightness", "--device", "cpu",
                    "--output-dir", tmp_path / "eval"]) == 0
    written = {p.name for p in (tmp_path / "eval").iterdir()}
    assert any(name.endswith(".json") for name in written), written


def test_schnell_takes_no_guidance(tiny_flux_schnell, test_rewards, tmp_path, caplog):
    """Schnell has no guidance embedding: an unset guidance resolves to 0; a given one is
    ignored with one warning."""
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        assert run_cli(["train", "--model", tiny_flux_schnell, *FAST, "--guidance-scale", "3.5", "--truncation",
                        "last:1", "--max-train-steps", "2", "--checkpointing-steps", "0", "--output-dir", run]) == 0
    warnings = [r.message for r in caplog.records if "is ignored" in r.getMessage()]
    assert len(warnings) == 1
    assert run_cli(["train", "--model", tiny_flux_schnell, *FAST, "--truncation", "last:1", "--max-train-steps", "1",
                    "--checkpointing-steps", "0", "--output-dir", tmp_path / "unset"]) == 0
    assert yaml.safe_load((tmp_path / "unset" / "config.yaml").read_text())["guidance_scale"] == 0.0


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change once set:
    reset it around a test that trains in another precision than the rest of the session."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_mixed_precision_run(tiny_sd3, test_rewards, tmp_path, fresh_accelerate_state):
    """bf16 autocast with bf16 frozen weights and fp32 LoRA, as on a GPU (here on the CPU)."""
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_sd3, *FAST, "--mixed-precision", "bf16", "--truncation", "last:1",
                    "--max-train-steps", "2", "--checkpointing-steps", "0", "--output-dir", run]) == 0
    rows = _metrics(run)
    assert len(rows) == 2 and all(r["reward"] == r["reward"] for r in rows)  # finite, not NaN
    assert all(v.dtype == torch.float32 for v in load_state_dict(run / LORA_FILE).values())


def test_two_processes_match_one_on_flux(tiny_flux, test_rewards, tmp_path):
    """accelerate, 2 CPU processes (gloo): the transformer goes through DDP like the UNet."""
    import os
    import subprocess
    import sys

    from test_aligner_multiprocess import ENTRY, _free_port

    args = ["--reward", "brightness", "--prompts", "simple_animals", "--num-inference-steps", "2", "--truncation",
            "uniform:0-2", "--learning-rate", "0.05", "--max-train-steps", "2", "--checkpointing-steps", "0",
            "--report-to", "none", "--seed", "1"]
    dump = tmp_path / "ranks"
    dump.mkdir()
    env = {**os.environ, "ALIGNKIT_TEST_DUMP": str(dump), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ENTRY.parents[1]), os.environ.get("PYTHONPATH")]))}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    result = subprocess.run([*launch, str(ENTRY), "train", "--model", str(tiny_flux), *args, "--train-batch-size", "1",
                             "--output-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_cli(["train", "--model", tiny_flux, *args, "--train-batch-size", "2", "--output-dir", tmp_path / "one"]) == 0
    rank0, rank1 = (load_state_dict(dump / f"rank{i}.safetensors") for i in (0, 1))
    one = load_state_dict(tmp_path / "one" / LORA_FILE)
    assert len(rank0) == len(one) > 0
    for key, value in rank0.items():
        torch.testing.assert_close(rank1[key], value, rtol=0, atol=0)
        # Not bitwise: one batch of 2 and DDP's mean of two batches of 1 sum in another order, and
        # AdamW's per-element normalisation magnifies that where a gradient is near 0 (measured:
        # 1 element in a few hundred off by up to 1.3e-4, against updates of lr = 0.05). So: almost
        # every element equal to float rounding, none off by more than 2% of one update.
        ref = one[f"transformer.{key}"]
        diff = (value - ref).abs()
        assert (diff <= 1e-5 + 1e-4 * ref.abs()).float().mean() > 0.99 and diff.max() < 1e-3, key
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in rank0.items() if "lora_B" in k)


def test_a_flux_hub_id_trains_from_the_hub_cache_offline(tiny_flux, test_rewards, tmp_path, monkeypatch, capsys):
    """`--model ORG/NAME` resolves through huggingface_hub's cache, offline; a cached copy that
    lacks T5 is one line naming it, nothing written."""
    import shutil

    from tiny_models import put_in_hub_cache, use_hub_cache

    cache = use_hub_cache(monkeypatch, tmp_path / "hub")
    put_in_hub_cache(cache, "alignkit-test/tiny-flux", {"": tiny_flux})
    run = tmp_path / "run"
    assert run_cli(["train", "--model", "alignkit-test/tiny-flux", *FAST, "--truncation", "last:1",
                    "--max-train-steps", "1", "--checkpointing-steps", "0", "--output-dir", run]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["guidance_scale"] == 3.5  # dev: read from the cache
    snapshot = put_in_hub_cache(cache, "alignkit-test/flux-no-t5", {"": tiny_flux})
    shutil.rmtree(snapshot / "text_encoder_2")
    capsys.readouterr()
    assert run_cli(["train", "--model", "alignkit-test/flux-no-t5", *FAST, "--truncation", "last:1",
                    "--max-train-steps", "1", "--output-dir", tmp_path / "broken"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "its T5 text encoder (text_encoder_2/) is not in the Hugging Face cache" in err, err
    assert not (tmp_path / "broken").exists()


def test_sd3_without_t5_trains_and_evaluates(tiny_sd3, test_rewards, tmp_path):
    """SD3 may ship without T5 (model_index.json lists text_encoder_3 as null; the pipeline
    feeds zeros): diffusers loads such a folder only when told the component is None, which
    the aligner and evaluation both do."""
    import shutil

    model = tmp_path / "sd3-no-t5"
    shutil.copytree(tiny_sd3, model)
    for part in ("text_encoder_3", "tokenizer_3"):
        shutil.rmtree(model / part)
    index = json.loads((model / "model_index.json").read_text())
    index.update(text_encoder_3=[None, None], tokenizer_3=[None, None])
    (model / "model_index.json").write_text(json.dumps(index))
    run = tmp_path / "run"
    assert run_cli(["train", "--model", model, *FAST, "--truncation", "last:1", "--max-train-steps", "1",
                    "--checkpointing-steps", "0", "--output-dir", run]) == 0
    assert run_cli(["eval", run, "--seeds", "1", "--scales", "0,1", "--rewards", "brightness", "--device", "cpu",
                    "--output-dir", tmp_path / "eval"]) == 0
    assert (tmp_path / "eval" / "summary.json").is_file()
