"""`alignkit eval` knows the model family: a bare LoRA folder (no config.yaml) takes its base
model family's default guidance (SD3 7.0, FLUX.1-dev 3.5, FLUX.1-schnell 0), and `--resolution`
is checked against the loaded pipeline's size step (16 for SD3 and FLUX), as `train` checks it."""

import json
import shutil

import pytest

from alignkit.families import FAMILIES, family_guidance, resolution_error, size_multiple
from alignkit.runfolder import LORA_FILE
from cli_runner import run_cli

TRAIN = ["--reward", "brightness", "--prompt", "two red circles", "--num-inference-steps", "2",
         "--train-batch-size", "1", "--report-to", "none", "--seed", "0", "--truncation", "last:1",
         "--max-train-steps", "1", "--checkpointing-steps", "0"]
EVAL = ["--seeds", "1", "--scales", "1", "--rewards", "brightness", "--device", "cpu", "--num-inference-steps", "2"]


@pytest.mark.parametrize("fixture, guidance", [("tiny_flux", 3.5), ("tiny_flux_schnell", 0.0), ("tiny_sd3", 7.0)])
def test_a_bare_lora_takes_its_base_model_familys_guidance(fixture, guidance, test_rewards, tmp_path, request):
    model = request.getfixturevalue(fixture)
    assert family_guidance(str(model)) == guidance
    run = tmp_path / "run"
    assert run_cli(["train", "--model", model, *TRAIN, "--output-dir", run]) == 0
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / LORA_FILE, bare / LORA_FILE)  # the LoRA alone: no config.yaml, no metrics
    assert run_cli(["eval", bare, "--model", model, "--reward", "brightness", "--prompt", "two red circles", *EVAL,
                    "--output-dir", tmp_path / "eval"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["settings"]["guidance_scale"] == guidance


def test_family_guidance_of_other_pipelines(tiny_sd, tmp_path):
    assert family_guidance(str(tiny_sd)) == 7.5
    assert family_guidance(str(tmp_path)) is None  # no model_index.json: the caller's fallback


def test_size_multiple_of_each_family(tiny_sd3, tiny_flux):
    import diffusers

    sd3 = diffusers.StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    flux = diffusers.FluxPipeline.from_pretrained(tiny_flux)
    assert size_multiple(sd3) == (16, "the VAE factor 8 x the transformer's patch size 2")
    assert size_multiple(flux) == (16, "the VAE factor 8 x FLUX's 2x2 latent packing")
    assert resolution_error(48, 16, "why") is None
    assert resolution_error(40, 16, "why") == "--resolution 40 is not a multiple of 16 (why); use 32 or 48"
    assert {f.name for f in FAMILIES.values()} == {"sd", "sdxl", "sd3", "flux"}


def test_eval_refuses_a_resolution_flux_cannot_generate(tiny_flux, test_rewards, tmp_path, fails):
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_flux, *TRAIN, "--output-dir", run]) == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    fails(["eval", run, *EVAL, "--resolution", "40", "--output-dir", tmp_path / "eval"],
          "--resolution 40 is not a multiple of 16 (the VAE factor 8 x FLUX's 2x2 latent packing); use 32 or 48")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
