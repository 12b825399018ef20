"""The toy trainers that build on the VAE and CLIP (flow and UNet), end to end on a few steps;
the flow trainer's attention shortcut; the saved folders as users load them."""

import json

import pytest
import torch

from toy_build import models
from toy_build.train import main
from toy_build.train_flow import T5_ZERO_TOKENS, RepeatedTokenAttention


def test_one_token_with_its_bias_equals_the_pipelines_zero_tokens():
    """Training attends to one zero token weighted by log 256; the shipped model sees the 256
    zero tokens StableDiffusion3Pipeline feeds without T5. Same outputs, not just similar."""
    torch.manual_seed(0)
    transformer = models.build_flow_transformer().eval()
    with torch.no_grad():
        for p in transformer.parameters():  # move biases off their zero init: the tokens then matter
            p.add_(0.02 * torch.randn_like(p))
    x, clip, pooled = torch.randn(2, 4, 16, 16), torch.randn(2, 16, 128), torch.randn(2, 128)
    t = torch.tensor([300.0, 800.0])

    def run(zero_tokens):
        context = torch.cat([clip, torch.zeros(2, zero_tokens, 128)], dim=1)
        with torch.no_grad():
            return transformer(hidden_states=x, timestep=t, encoder_hidden_states=context,
                               pooled_projections=pooled).sample

    full = run(T5_ZERO_TOKENS)
    transformer.set_attn_processor(RepeatedTokenAttention(T5_ZERO_TOKENS))
    torch.testing.assert_close(run(1), full, rtol=0, atol=1e-4)
    transformer.set_attn_processor(RepeatedTokenAttention(1))
    assert (run(1) - full).abs().max() > 1e-2  # the bias is what makes them equal


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-flow")
    main(["vae", "--steps", "1", "--eval-samples", "8", "--output-dir", str(out)])
    main(["clip", "--steps", "1", "--eval-samples", "32", "--output-dir", str(out)])
    main(["flow", "--steps", "2", "--eval-samples", "4", "--cache-size", "64", "--output-dir", str(out)])
    main(["unet", "--steps", "2", "--eval-samples", "4", "--cache-size", "64", "--output-dir", str(out)])
    return out


def test_unet_trainer_shares_the_latent_cache_and_saves_a_plain_sd_folder(trained):
    from diffusers import StableDiffusionPipeline

    log = json.loads((trained / "training_log.json").read_text())
    assert log["unet"]["steps"] == 2 and log["unet"]["cache_size"] == 64
    assert set(log) >= {"vae", "clip", "flow", "unet"}
    pipe = StableDiffusionPipeline.from_pretrained(trained / "pipeline")
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"


def test_flow_trainer_saves_a_plain_sd3_folder_without_t5(trained):
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import load_file

    log = json.loads((trained / "training_log.json").read_text())["flow"]
    assert log["steps"] == 2 and "--steps 2" in log["command"]
    assert set(log["quality"]) == {"euler20_cfg7.5", "euler20_cfg3"}
    folder = trained / "pipeline-flow"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None] and index["transformer"][1] == "SD3Transformer2DModel"
    weights = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float16}
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    # SD3's latent normalisation, measured on scenes; diffusers' own attention (the 256 zero tokens).
    assert pipe.vae.config.shift_factor == log["vae_shift_factor"] and pipe.vae.config.scaling_factor > 0
    assert {type(p).__name__ for p in pipe.transformer.attn_processors.values()} == {"JointAttnProcessor2_0"}
    # Both CLIP slots hold the same trained text tower.
    for (name, a), b in zip(pipe.text_encoder.state_dict().items(), pipe.text_encoder_2.state_dict().values()):
        assert torch.equal(a, b), name
    pipe.set_progress_bar_config(disable=True)
    images = pipe("two red circles on a white background", num_inference_steps=2, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 64, 64)


def test_flow_training_names_the_missing_part(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["flow", "--steps", "1", "--output-dir", str(tmp_path)])
    message = str(info.value.code)
    assert "\n" not in message and "flow training needs the vae first" in message


def test_bundled_toy_flow_trains_with_its_defaults_and_its_lora_loads_in_plain_diffusers(tmp_path):
    """`alignkit train --model toy-flow`: the shipped SD3-format toy, the count reward, the
    flow family's settings (eta 0, guidance 7.0) in config.yaml; one step, two sampler steps."""
    pytest.importorskip("ultralytics")
    import yaml
    from diffusers import StableDiffusion3Pipeline

    from alignkit.models import get_model
    from cli_runner import run_cli
    from alignkit.toy import flow_pipeline_path

    run = tmp_path / "run"
    assert run_cli(["train", "--model", "toy-flow", "--max-train-steps", "1", "--num-inference-steps", "2",
                    "--train-batch-size", "1", "--truncation", "last:1", "--checkpointing-steps", "0",
                    "--report-to", "none", "--output-dir", run]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    recommended = get_model("toy-flow").train_defaults()
    assert (config["reward"], config["prompts"]) == (recommended["reward"], recommended["prompts"]) == ("count", "toy_counting")
    assert (config["eta"], config["guidance_scale"]) == (0.0, 7.0)
    pipe = StableDiffusion3Pipeline.from_pretrained(flow_pipeline_path(), text_encoder_3=None, tokenizer_3=None)
    pipe.load_lora_weights(run)
    assert pipe.get_list_adapters()["transformer"]
