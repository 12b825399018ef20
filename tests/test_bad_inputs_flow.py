"""Bad input specific to the flow-matching families (SD3, FLUX.1), in test_bad_inputs.py's
table style: one line on stderr, a non-zero exit, and a disk exactly as it was.

A table of its own (not rows of test_bad_inputs.CASES) because its workspace needs the tiny
SD3/FLUX pipelines and runs trained on them, which the main table's workspace does not build.
"""

from __future__ import annotations

import shutil

import pytest

from cli_runner import run_cli
from test_bad_inputs import Case, Workspace, _argv, _snapshot

TRAIN = ["--reward", "brightness", "--prompt", "a cat", "--num-inference-steps", "2", "--train-batch-size", "1",
         "--max-train-steps", "1", "--report-to", "none", "--truncation", "last:1", "--checkpointing-steps", "0"]


@pytest.fixture(scope="module")
def ws(tiny_sd, tiny_sd3, tiny_flux, test_rewards, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-flow-inputs")
    for name, source in (("sd", tiny_sd), ("sd3", tiny_sd3), ("flux", tiny_flux)):
        shutil.copytree(source, root / name)
    # Pipeline folders whose T5 encoder was lost (model_index.json still lists it).
    for name, t5 in (("sd3_no_t5", "text_encoder_3"), ("flux_no_t5", "text_encoder_2")):
        shutil.copytree(root / name.split("_")[0], root / name)
        shutil.rmtree(root / name / t5)
    (root / "negative.yaml").write_text("negative_prompt: blurry\n")
    # One finished run per family, for evaluation against another family's model.
    for name, extra in (("sd", ["--guidance-scale", "1"]), ("flux", [])):
        assert run_cli(["train", "--model", root / name, *TRAIN, *extra, "--output-dir", root / f"{name}_run"]) == 0
    return Workspace(root, root / "sd")  # ws.flux -> root/flux


def train(model, *extra):
    return lambda w: ["train", "--model", getattr(w, model), *TRAIN, "--output-dir", w.root / "out", *extra]


def evaluate(run, model):
    return lambda w: ["eval", getattr(w, run), "--model", getattr(w, model), "--seeds", "1", "--scales", "1",
                      "--rewards", "brightness", "--device", "cpu", "--output-dir", w.root / "eval-out"]


CASES = [
    Case("flux-resolution-not-16", train("flux", "--resolution", "40"),
         "--resolution 40 is not a multiple of 16 (the VAE factor 8 x FLUX's 2x2 latent packing); use 32 or 48"),
    Case("sd3-resolution-not-16", train("sd3", "--resolution", "24"), "is not a multiple of 16"),
    Case("flux-eta", train("flux", "--eta", "1"), "--eta 1: the flow-matching sampler of FluxPipeline is a "
         "deterministic ODE"),
    Case("sd3-eta", train("sd3", "--eta", "0.5"), "takes no eta; drop --eta or pass --eta 0"),
    Case("sd3-t5-missing", train("sd3_no_t5"), "its T5 text encoder folder"),
    Case("flux-t5-missing", train("flux_no_t5"), "text_encoder_2 is missing"),
    Case("flux-negative-prompt", train("flux", "--config", "{negative.yaml}"), "a negative prompt would be ignored"),
    Case("eval-sd-lora-on-flux", evaluate("sd_run", "flux"), "a LoRA of another model family?"),
    Case("eval-flux-lora-on-sd3", evaluate("flux_run", "sd3"), "a LoRA of another model family?"),
    Case("eval-flux-lora-on-sd", evaluate("flux_run", "sd"), "a LoRA of another model family?"),
    # FluxPipeline would silently resize a side of 40 to 32: eval checks train's size step.
    Case("eval-flux-resolution-not-16", lambda w: ["eval", w.flux_run, "--seeds", "1", "--scales", "1", "--rewards",
                                                   "brightness", "--device", "cpu", "--resolution", "40",
                                                   "--output-dir", w.root / "eval-out"],
         "--resolution 40 is not a multiple of 16 (the VAE factor 8 x FLUX's 2x2 latent packing); use 32 or 48"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_a_non_zero_exit_and_an_untouched_disk(case, ws, fails):
    argv = _argv(case, ws)
    before = _snapshot(ws.root)
    fails(argv, case.match)
    assert _snapshot(ws.root) == before
