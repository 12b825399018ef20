"""The embedded default: what `alignkit train` with no flags runs."""

from alignkit.aligner.config import load_config


def test_default_run_is_the_toy_count_recipe():
    config = load_config()
    assert config.pretrained_model_name_or_path == "toy"
    assert (config.reward, config.prompts) == ("count", "toy_counting")
    assert (config.num_inference_steps, config.truncation, config.train_batch_size) == (20, "last:5", 8)
    assert (config.learning_rate, config.max_train_steps, config.checkpointing_steps) == (2e-3, 100, 25)


def test_the_toy_model_brings_its_own_defaults():
    """What the toy plugin recommends is exactly what an unflagged run uses, and flags win."""
    from alignkit.models import get_model

    recommended = get_model("toy").train_defaults()
    config = load_config().to_dict()
    assert recommended and all(config[key] == value for key, value in recommended.items())
    assert load_config(None, {"num_inference_steps": 7}).num_inference_steps == 7


def test_a_real_model_keeps_alignprop_defaults():
    config = load_config(None, {"pretrained_model_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5"})
    assert (config.num_inference_steps, config.truncation) == (50, "gaussian:42,5")
    assert (config.reward, config.prompts) == ("aesthetic", "simple_animals")
    # Flags and config files win over the toy's own settings.
    assert load_config(None, {"max_train_steps": 3}).max_train_steps == 3
