"""The embedded default: what `alignkit train` with no flags runs is what the README says."""

import re
from pathlib import Path

from alignkit.aligner.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_default_run_is_the_toy_count_recipe():
    config = load_config()
    assert config.pretrained_model_name_or_path == "toy"
    assert (config.reward, config.prompts) == ("count", "toy_counting")
    assert (config.num_inference_steps, config.truncation, config.train_batch_size) == (20, "last:5", 8)
    assert (config.learning_rate, config.max_train_steps, config.checkpointing_steps) == (2e-3, 100, 25)


def test_readme_states_the_default_recipe():
    text = " ".join(README.read_text().split())
    recipe = re.search(r"toy's own settings \(`alignkit/toy/train_defaults.yaml`: (.*?)\)", text).group(1)
    config = load_config()
    for expected in (f"{config.num_inference_steps} DDIM steps", f"truncation `{config.truncation}`",
                     f"batch {config.train_batch_size}", f"learning rate {config.learning_rate:g}",
                     f"{config.max_train_steps} steps", f"a checkpoint every {config.checkpointing_steps}"):
        assert expected in recipe, (expected, recipe)
    assert f"aligns it to the `{config.reward}` reward" in text and f"`{config.prompts}`" in text


def test_a_real_model_keeps_alignprop_defaults():
    config = load_config(None, {"pretrained_model_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5"})
    assert (config.num_inference_steps, config.truncation) == (50, "gaussian:42,5")
    assert (config.reward, config.prompts) == ("aesthetic", "simple_animals")
    # Flags and config files win over the toy's own settings.
    assert load_config(None, {"max_train_steps": 3}).max_train_steps == 3
