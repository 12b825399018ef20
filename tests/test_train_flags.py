"""`alignkit train`'s flags are derived from TrainConfig: they cannot drift from it."""

import dataclasses

import pytest
import typer

import alignkit.aligner
from alignkit.aligner.config import FLAGS, TrainConfig, train_flags
from alignkit.cli import app
from cli_runner import run_cli


def train_options() -> dict[str, list[str]]:
    command = typer.main.get_command(app).commands["train"]
    return {p.name: [*p.opts, *p.secondary_opts] for p in command.params if p.name != "help"}


def test_every_field_is_a_flag_or_file_only():
    options = train_options()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(options) == FLAGS | {"config", "reward_option"}
    assert FLAGS < fields
    # The expert knobs and the non-scalar fields are set in config files.
    assert {"adam_beta1", "max_grad_norm", "reward_options", "lora_target_modules"} <= fields - FLAGS
    assert options["pretrained_model_name_or_path"] == ["--pretrained-model-name-or-path", "--model"]
    assert options["overwrite"] == ["--overwrite", "--no-overwrite"]
    # Every flag is helped by the comment above its field, cut to its first sentence.
    helps = {flag.name: flag.help for flag in train_flags()}
    assert all(helps.values())
    assert helps["num_inference_steps"] == "Number of DDIM denoising steps T per sample."
    assert helps["lora_alpha"] == helps["rank"]


@pytest.fixture
def resolved(monkeypatch):
    """The config `alignkit train ARGS` would train, without training."""
    seen = []
    monkeypatch.setattr(alignkit.aligner, "train", seen.append)

    def resolve(*args) -> TrainConfig:
        assert run_cli(["train", *map(str, args)]) == 0
        return seen.pop()

    return resolve


def test_flags_reach_the_config(resolved, tmp_path):
    config = resolved("--model", "toy", "--no-gradient-checkpointing", "--rank", "3", "--learning-rate", "0.5",
                      "--output-dir", tmp_path / "run")
    assert (config.gradient_checkpointing, config.rank, config.learning_rate) == (False, 3, 0.5)
    assert config.checkpoint_vae is True and config.output_dir == str(tmp_path / "run")


def test_reward_options_read_against_the_files_reward(resolved, tmp_path):
    """--reward-option without --reward names a part of the reward the config file set, read once."""
    (tmp_path / "c.yaml").write_text("reward: compress+count\nreward_options: {count: {threshold: 0.3}}\n")
    config = resolved("--config", tmp_path / "c.yaml", "--reward-option", "compress.quality=90")
    assert config.reward_options == {"count": {"threshold": 0.3}, "compress": {"quality": 90}}


def test_a_resolved_config_does_not_change():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().rank = 8
