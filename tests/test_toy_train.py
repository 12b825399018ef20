"""The toy trainers run end to end (one step each) and refuse bad input in one line."""

import json

import pytest
import torch

from toy_build.train import Budget, main


def test_vae_and_clip_train_save_and_log(tmp_path):
    out = str(tmp_path)
    main(["vae", "--steps", "1", "--eval-samples", "8", "--output-dir", out])
    main(["clip", "--steps", "1", "--eval-samples", "32", "--output-dir", out])
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert log["vae"]["steps"] == 1 and log["clip"]["steps"] == 1
    assert "--steps 1" in log["vae"]["command"]
    assert "## vae" in (tmp_path / "TRAINING.md").read_text()

    from diffusers import AutoencoderKL
    from safetensors.torch import load_file
    from transformers import CLIPModel, CLIPTokenizer

    weights = load_file(str(tmp_path / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float16}
    vae = AutoencoderKL.from_pretrained(tmp_path / "pipeline" / "vae")
    assert vae.config.scaling_factor == log["vae"]["scaling_factor"] and vae.config.latent_channels == 4
    clip = CLIPModel.from_pretrained(tmp_path / "clip")
    assert clip.dtype == torch.float32  # fp16 on disk, float32 declared (see declare_float32)
    assert len(CLIPTokenizer.from_pretrained(tmp_path / "clip").tokenize("four purple triangles")) == 3


def test_unet_training_names_the_missing_part(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["unet", "--steps", "1", "--output-dir", str(tmp_path)])
    message = str(info.value.code)
    assert "\n" not in message and "needs the vae first" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["vae", "--device", "cuda", "--steps", "1", "--output-dir", str(tmp_path)])
    assert "no CUDA device" in str(info.value.code)


def test_budget_stops_at_steps_or_time():
    budget = Budget(minutes=None, steps=3)
    while budget.running():
        budget.step += 1
    assert budget.step == 3 and budget.fraction == 1.0
    assert not Budget(minutes=0.0, steps=10).running()
    with pytest.raises(ValueError):
        Budget(minutes=None, steps=None)
