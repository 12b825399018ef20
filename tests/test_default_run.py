"""The embedded default: what `alignkit train` with no flags runs."""

from alignkit.aligner.config import load_config


def test_default_run_is_the_toy_count_recipe():
    config = load_config()
    assert config.pretrained_model_name_or_path == "toy"
    # GRPO on the detector's exact count: 4 prompts x groups of 8, the early quarter of 20 steps.
    assert (config.algorithm, config.reward, config.prompts) == ("grpo", "count", "toy_counting")
    assert config.reward_options == {"count": {"objective": "exact"}}
    assert (config.num_inference_steps, config.train_batch_size, config.group_size) == (20, 32, 8)
    assert (config.grpo_steps, config.inner_epochs, config.kl_beta) == ("first:0.25", 2, 0.04)
    assert (config.learning_rate, config.max_train_steps, config.checkpointing_steps) == (2e-3, 90, 30)
    # Each group's images start from one x_T; every sampling step draws noise, at half DDPM's (eta 0.5).
    assert (config.same_initial_noise, config.stochastic_steps, config.eta) == (True, "all", 0.5)


def test_the_previous_alignprop_recipe_is_one_flag_away():
    config = load_config(None, {"algorithm": "alignprop"}, ["count.objective=error"])
    assert (config.algorithm, config.truncation, config.reward_options) == (
        "alignprop", "last:5", {"count": {"objective": "error"}})


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


def test_the_toy_recipe_options_follow_the_reward():
    """The toy's count options are for its own recipe: another reward spec drops them."""
    assert load_config(None, {"reward": "jpeg", "algorithm": "grpo"}).reward_options == {}
    assert load_config(None, {"reward": "count+jpeg:0.5"}).reward_options == {"count": {"objective": "exact"}}


def test_alignprop_on_the_toy_names_the_option_that_removed_the_gradient(tmp_path, capsys):
    from cli_runner import run_cli

    run = tmp_path / "run"
    assert run_cli(["train", "--algorithm", "alignprop", "--output-dir", run]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "count.objective=exact" in err and "--algorithm grpo" in err, err
    assert not run.exists()
