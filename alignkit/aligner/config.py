"""`TrainConfig`: every knob of a training run, typed and documented, and its resolver.

The dataclass is the one list of settings: each field is a key of config files and of the
run's config.yaml, and, unless declared `file_only`, a flag of `alignkit train` whose help
text is the comment above the field (`train_flags`; the CLI builds its options from it).

Resolution, in two calls, each returning a new config (a `TrainConfig` is frozen):
`load_config` layers the dataclass defaults, then the model's own defaults (the toy's
train_defaults.yaml), then `--config FILE` (YAML or TOML, a flat mapping of field names), then
the flags, and validates the result without reading the model; `with_family` then fills the
fields left unset with the model family's defaults (once the trainer has inspected the model)
and refuses what the family cannot do. The result is written to `OUTPUT_DIR/config.yaml` as a
flat mapping with exactly these field names (the evaluation reads it).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from alignkit.errors import AlignkitError, read_text
from alignkit.rewards.spec import check_reward_options

logger = logging.getLogger(__name__)


class ConfigError(AlignkitError, ValueError):
    """A config file or value that does not fit `TrainConfig`."""


# --stochastic-steps: which sampling steps of a GRPO rollout draw noise.
STOCHASTIC_STEPS = ("all", "trained")


def file_only(default: Any = None, default_factory: Any = None) -> Any:
    """A field set in config files only: `alignkit train` has no flag for it (expert knobs,
    and values that are not scalars)."""
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"flag": False})
    return field(default=default, metadata={"flag": False})


@dataclass(frozen=True)
class TrainConfig:
    # Model: a diffusers folder or hub id (SD 1.x/2.x, SDXL, SD3/3.5 or FLUX.1), or "toy" for the embedded toy model.
    pretrained_model_name_or_path: str = "toy"
    # Hub revision of the model (branch, tag or commit); None = main.
    revision: Optional[str] = file_only()
    # Reward spec, `name[:weight](+name[:weight])*`, e.g. "hps+aesthetic:0.5" (the toy model: count).
    reward: str = "aesthetic"
    # Options for the reward factories: {reward name: {option: value}}.
    reward_options: dict = file_only(default_factory=dict)
    # Prompt source: a built-in set name or a file with one prompt a line (its `train` split is used).
    prompts: str = "simple_animals"
    # A single prompt for every sample; overrides `prompts` when set.
    prompt: Optional[str] = None
    # Negative prompt for the unconditional half of classifier-free guidance ("" = empty prompt).
    negative_prompt: str = file_only("")
    # Image side in pixels; None = the pipeline's native size (vae sample_size).
    resolution: Optional[int] = None
    # Number of DDIM denoising steps T per sample.
    num_inference_steps: int = 50
    # Classifier-free guidance scale; <= 1 disables guidance (one UNet batch instead of two).
    # FLUX.1-dev: the guidance embedding's value (no second batch); schnell takes none.
    # None = the model family's default (SD/SDXL 7.5, SD3 7.0, FLUX.1-dev 3.5: alignkit/families.py).
    guidance_scale: Optional[float] = None
    # DDIM eta: 0 = deterministic DDIM, 1 = DDPM-like noise at every step. The flow-matching
    # sampler (SD3, FLUX) is a deterministic ODE: 0 only. None = the family's (1.0 DDIM, 0 flow).
    eta: Optional[float] = None
    # Truncated backprop policy: full, last:K, uniform:LO-HI, gaussian:MEAN,STD, draft-lv:N.
    truncation: str = "gaussian:42,5"
    # Training algorithm: alignprop (backpropagate a differentiable reward through the chain) or
    # grpo (group-relative policy optimisation: any reward, its value only; aligner/grpo.py).
    algorithm: str = "alignprop"
    # GRPO: images per prompt in a group (default 8); each image's advantage is its reward
    # against its group's, (r - mean) / (std + 1e-4). Groups of 8 x 4 prompts moved the toy's
    # count, and 8 keeps the toy's 8-image batch one group; Flow-GRPO used 24 on SD3.5 (6 and 12
    # collapsed in its ablation), so raise it where memory and time allow. The samples of a step,
    # train_batch_size x processes x gradient_accumulation_steps, must be a multiple of it.
    group_size: int = 8
    # GRPO: beta, the weight of the KL penalty to the base model (closed form per trained step,
    # summed over the latent, in nats); 0 disables it and its reference forward passes. Flow-GRPO
    # used 0.04 (GenEval): without it, image quality fell at the same reward.
    kl_beta: float = 0.04
    # GRPO: PPO's clip range of the probability ratio (exact per-step Gaussian log-probabilities,
    # so the ratio is 1 at the first update of each sample batch).
    clip_range: float = 0.2
    # GRPO: which denoising steps the policy gradient trains, 0 the first (highest-noise) one:
    # first:K (the first K; a fraction 0 < K < 1 of T, rounded up), all, or a list 0,2,4.
    # Default the early quarter: Flow-GRPO's FAQ found training the high-noise steps only better,
    # and the count and layout are set there.
    grpo_steps: str = "first:0.25"
    # GRPO: optimizer updates per sample batch (each a pass over its samples, ratio clipped);
    # 1 = on-policy. One of max_train_steps is one sample batch and its updates.
    inner_epochs: int = 1
    # GRPO: start every image of a group from the same initial noise x_T (DanceGRPO's
    # init_same_noise). The count and layout are largely set by x_T, which the policy does not
    # choose; with one x_T per group, the group's rewards differ only through the sampler's
    # per-step noise (the policy's actions), so the advantages credit those. Off: one x_T per image.
    same_initial_noise: bool = False
    # GRPO: the sampling steps that draw noise: all (DDPO, Flow-GRPO) or trained (MixGRPO, Li et
    # al. 2025: the SDE inside the trained window, the ODE outside): the other steps are DDIM
    # eta 0 / the flow ODE, so that a group's rewards differ only through the trained steps' noise,
    # and the untrained steps are those of the deterministic sampler users generate with.
    stochastic_steps: str = "all"
    # GRPO: the exploration noise's patch, in latent pixels: each value of a step's noise is
    # shared by a P x P patch (drawn on a grid P times coarser, upsampled), and each step's
    # policy is a Gaussian over the latents' P x P patch means (the KL to the base model stays
    # over the whole latent). 1 = white noise (DDPO, Flow-GRPO). The toy's count is set by low
    # frequencies: noise on 2 x 2 patches changes it as often as white noise, with a quarter of
    # the random dimensions (it did not raise the judged count: docs/experiments/2026-12-04-early-steps.md, §8).
    noise_patch: int = 1
    # SD3 / FLUX: noise level a of Flow-GRPO's SDE sampler, std_t = a sqrt(sigma / (1 - sigma));
    # 0 = the deterministic ODE users sample with. None = the algorithm's: 0 for alignprop, 0.7
    # for grpo (whose steps must be Gaussians). SD/SDXL take --eta instead.
    noise_level: Optional[float] = None
    # Checkpoint each denoising step with gradients (recompute in backward): memory flat in K.
    gradient_checkpointing: bool = True
    # Also checkpoint the VAE decode: its activations at full resolution are most of what a
    # checkpointed step keeps (-85 MB of 1.4 GB on the tiny 256 px pipeline, more at 512 px),
    # for one more decode in backward (a few % of a step).
    checkpoint_vae: bool = True
    # torch.compile the UNet for the denoising steps before the cut (no gradients: most of each
    # step's work). Costs a compile at the first step (about a minute), then each of those steps
    # runs faster; the steps with gradients stay eager (checkpointed recompute and LoRA grads as is).
    compile_unet: bool = False
    # Samples per process per micro-batch.
    train_batch_size: int = 2
    # Micro-batches accumulated per optimizer step (global batch = train_batch_size x processes x this).
    gradient_accumulation_steps: int = 1
    # AdamW learning rate (constant after warm-up).
    learning_rate: float = 1e-3
    # Linear warm-up of the learning rate, in optimizer steps.
    lr_warmup_steps: int = file_only(0)
    # AdamW betas, weight decay and epsilon.
    adam_beta1: float = file_only(0.9)
    adam_beta2: float = file_only(0.999)
    adam_weight_decay: float = file_only(1e-4)
    adam_epsilon: float = file_only(1e-8)
    # Clip the global gradient norm to this before each optimizer step; <= 0 disables clipping.
    max_grad_norm: float = file_only(1.0)
    # LoRA rank r and alpha (the update is scaled by alpha / r).
    rank: int = 4
    lora_alpha: float = 4.0
    # Denoiser module names LoRA wraps (peft `target_modules`). None = those of diffusers' LoRA
    # training script for the family (UNet attention; SD3 joint attention; FLUX attention + FF).
    lora_target_modules: Optional[list] = file_only()
    # SD3 / FLUX: keep the T5 text encoder in CPU memory, moved to the accelerator only for each
    # batch's encode (T5-XXL is 9.5 GB in bf16: what 24 GB cards cannot spare). No effect without T5.
    offload_t5: bool = False
    # Number of optimizer steps to train.
    max_train_steps: int = 100
    # no, fp16 or bf16: autocast for the forward pass; frozen weights are stored in that dtype, LoRA in fp32.
    mixed_precision: str = "no"
    # Where the run writes config.yaml, metrics.jsonl, the LoRA, checkpoints and logs.
    output_dir: str = "alignkit-run"
    # Seed of the weights' init, the prompts, the noise and the truncation draws.
    seed: int = 0
    # Save a checkpoint every N optimizer steps (0 = only the final LoRA).
    checkpointing_steps: int = 50
    # Keep at most this many checkpoints (oldest removed first); None = keep all.
    checkpoints_total_limit: Optional[int] = None
    # Resume from "latest" (in output_dir) or a checkpoint folder path.
    resume_from_checkpoint: Optional[str] = None
    # Trackers: tensorboard, wandb, all or none.
    report_to: str = "tensorboard"
    # Log sample images of fixed prompts and seeds every N optimizer steps (0 = never).
    sample_every: int = file_only(25)
    # Number of fixed sample images logged each time.
    num_samples: int = file_only(4)
    # Replace a previous run in output_dir (its config, metrics, LoRA and checkpoints).
    overwrite: bool = False
    # Optimizer steps in a row whose loss or gradients are not finite (each is skipped: no
    # update) before training stops with an error, keeping the last finite checkpoint.
    max_nonfinite_steps: int = file_only(3)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check every field's range without touching the disk or loading anything; raise one
        line naming the flag. (Checks that need the model or the reward come later, but still
        before the output folder is written: see `trainer.train`.)"""
        for name, low in (("num_inference_steps", 1), ("train_batch_size", 1), ("gradient_accumulation_steps", 1),
                          ("max_train_steps", 1), ("rank", 1), ("num_samples", 1), ("max_nonfinite_steps", 1),
                          ("checkpointing_steps", 0), ("lr_warmup_steps", 0), ("sample_every", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"{_flag(name)} must be at least {low}, got {getattr(self, name)}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError(f"--checkpoints-total-limit must be at least 1 (or unset to keep all), "
                              f"got {self.checkpoints_total_limit}")
        # torch, numpy and random all take this seed (numpy only below 2**32, per process).
        if not 0 <= self.seed < 2 ** 31:
            raise ConfigError(f"--seed must be between 0 and {2 ** 31 - 1}, got {self.seed}")
        for name in ("learning_rate", "lora_alpha", "adam_epsilon"):
            _require_finite(name, getattr(self, name), positive=True)
        for name in ("guidance_scale", "max_grad_norm"):
            if getattr(self, name) is not None:  # None: the model family's default, filled in later
                _require_finite(name, getattr(self, name))
        _require_finite("adam_weight_decay", self.adam_weight_decay)
        if self.adam_weight_decay < 0:
            raise ConfigError(f"adam_weight_decay must be at least 0, got {self.adam_weight_decay}")
        for name, low in (("group_size", 2), ("inner_epochs", 1), ("noise_patch", 1)):
            if getattr(self, name) < low:
                why = "; a group of one image has no mean to compare it with" if name == "group_size" else ""
                raise ConfigError(f"{_flag(name)} must be at least {low}, got {getattr(self, name)}{why}")
        for name in ("kl_beta", "noise_level"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{_flag(name)} must be a finite number of at least 0, got {value}")
        _require_finite("clip_range", self.clip_range, positive=True)
        if self.stochastic_steps not in STOCHASTIC_STEPS:
            raise ConfigError(f"--stochastic-steps '{self.stochastic_steps}' is not one of {', '.join(STOCHASTIC_STEPS)}")
        if self.eta is not None and not 0 <= self.eta <= 1:  # False for NaN too
            raise ConfigError(f"--eta must be between 0 (DDIM) and 1 (DDPM-like), got {self.eta}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        # diffusers' pipelines (and so `alignkit eval`) generate only sides that are multiples of 8.
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 8):
            hint = f"; use {self.resolution // 8 * 8} or {(self.resolution // 8 + 1) * 8}" if self.resolution > 8 else ""
            raise ConfigError(f"--resolution must be a positive multiple of 8, got {self.resolution}{hint}")
        targets = self.lora_target_modules
        if targets is not None and (not targets or not all(isinstance(m, str) and m for m in targets)):
            raise ConfigError(f"lora_target_modules must be a non-empty list of module names, got {self.lora_target_modules!r}")
        if not str(self.output_dir).strip():
            raise ConfigError("--output-dir is empty")
        check_output_dir(Path(self.output_dir).expanduser())
        if self.resume_from_checkpoint is not None and not self.resume_from_checkpoint.strip():
            raise ConfigError("--resume-from-checkpoint is empty; give 'latest' or a checkpoint folder")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}" if name in FLAGS else name


def _require_finite(name: str, value: float, positive: bool = False) -> None:
    if not math.isfinite(value) or (positive and value <= 0):
        need = "a finite number above 0" if positive else "a finite number"
        raise ConfigError(f"{_flag(name)} must be {need}, got {value}")


def check_output_dir(path: Path) -> None:
    """The run folder must be a folder (or creatable as one) that this user can write to."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--output-dir {path} is a file; pass a folder")
    # The nearest existing ancestor decides whether the folder can be created and written.
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"--output-dir {path}: {existing} is a file, so no folder can be made under it")
    if not existing.exists() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output-dir {path}: {existing} is not writable by this user; pass a folder you can write to")


def _base_type(hint: Any) -> Any:
    """`Optional[X]` -> X; any other annotation as is."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return hint


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Fields that `alignkit train` has a flag for: every scalar field not declared `file_only` (the
# others are set in a config file).
FLAGS = {name for name, f in FIELDS.items() if f.metadata.get("flag", True)
         and _base_type(typing.get_type_hints(TrainConfig)[name]) in (str, int, float, bool)}
# Aliases accepted in config files and as flags (diffusers' and our flag spellings).
ALIASES = {"model": "pretrained_model_name_or_path"}


@dataclass(frozen=True)
class Flag:
    """One option of `alignkit train`, derived from a TrainConfig field."""

    name: str
    # The field's type without Optional (str, int, float or bool).
    type: type
    # "--flag-name" and its aliases ("--model").
    names: tuple[str, ...]
    help: str


def train_flags() -> list[Flag]:
    """The flags of `alignkit train`, in field order: every field not declared `file_only`,
    helped by the first sentence of the comment above it (a field without one shares the
    comment of the group it follows, e.g. `lora_alpha` under `rank`'s)."""
    comments = _field_comments()
    hints = typing.get_type_hints(TrainConfig)
    flags = []
    for name in FIELDS:
        if name not in FLAGS:
            continue
        names = (f"--{name.replace('_', '-')}", *(f"--{a}" for a, target in ALIASES.items() if target == name))
        flags.append(Flag(name, _base_type(hints[name]), names, _first_sentence(comments.get(name, ""))))
    return flags


def _first_sentence(text: str) -> str:
    # A sentence ends at a period before a capital ("e.g. 'hps'" and "1.4 GB" do not end one).
    match = re.search(r"\.\s+(?=[A-Z])", text)
    return text[:match.start() + 1] if match else text


def _field_comments() -> dict[str, str]:
    """{field: the comment lines above it, joined}, read from this class's source."""
    import inspect
    import tokenize

    comments: dict[str, str] = {}
    block: list[str] = []
    last = ""
    for token in tokenize.generate_tokens(io.StringIO(inspect.getsource(TrainConfig)).readline):
        if token.type == tokenize.COMMENT and token.start[1] == 4:  # a comment line of the class body
            block.append(token.string.lstrip("#").strip())
        elif token.type == tokenize.NAME and token.start[1] == 4 and token.string in FIELDS \
                and token.string not in comments:
            last = " ".join(block) or last
            comments[token.string] = last
            block = []
        elif token.type == tokenize.NAME and token.start[1] == 4 and token.string == "def":
            break
    return comments


def _coerce(name: str, value: Any) -> Any:
    """Check a value from a file or flag against the field's annotation, converting int->float."""
    hint = typing.get_type_hints(TrainConfig)[name]
    optional = type(None) in typing.get_args(hint)
    base = _base_type(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config: '{name}' cannot be empty")
    origin = typing.get_origin(base) or base
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is bool and not isinstance(value, bool) or origin is not bool and isinstance(value, bool) \
            or not isinstance(value, origin):
        raise ConfigError(f"config: '{name}' must be {origin.__name__}, got {value!r}")
    return value


def read_config_file(path: str | Path) -> dict:
    """A flat mapping of TrainConfig fields from a YAML (.yaml/.yml) or TOML (.toml) file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = read_text(path, "--config")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # yaml and tomllib raise their own error types
        raise ConfigError(f"--config {path} does not parse ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of TrainConfig fields")
    return data


def load_config(config_file: str | Path | None = None, overrides: dict | None = None,
                reward_options: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The resolver: the dataclass defaults, then the model's own defaults, then the file, then
    `overrides` (flags; None values mean "not given"), then `reward_options` (`--reward-option
    NAME.OPTION=VALUE` items, read against the resolved reward spec); validated.

    The model family's defaults come later, from `with_family`, once the model is inspected."""
    from alignkit.models import model_defaults

    values: dict[str, Any] = {}
    layers = [read_config_file(config_file) if config_file else {}, overrides or {}]
    for layer in layers:
        for key, value in layer.items():
            name = ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
            if name not in FIELDS:
                import difflib

                close = difflib.get_close_matches(name, FIELDS, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"config: unknown field '{key}'{hint}")
            if layer is overrides and value is None:
                continue
            if name == "reward_options" and isinstance(value, dict):
                value = _merge_options(values.get(name, {}), check_reward_options(value, "config"))
            values[name] = _coerce(name, value)
    model = values.get("pretrained_model_name_or_path", TrainConfig.pretrained_model_name_or_path)
    # Settings a named model recommends for itself (the toy's train_defaults.yaml: TrainConfig's
    # defaults are AlignProp's for SD 1.5, far too slow for a CPU), applied over the dataclass's.
    options_from_model = "reward_options" not in values
    for name, value in model_defaults(model).items():
        values.setdefault(name, _coerce(name, value))
    if options_from_model and values.get("reward_options"):
        # The model's options are for the rewards of its own recipe: with another reward spec
        # (`--reward jpeg` on the toy), those of rewards it does not name are dropped.
        from alignkit.rewards import parse_spec

        named = {name for name, _ in parse_spec(values.get("reward", TrainConfig.reward))}
        values["reward_options"] = {k: v for k, v in values["reward_options"].items() if k in named}
    if reward_options:
        from alignkit.rewards import parse_reward_options

        parsed = parse_reward_options(list(reward_options), values.get("reward", TrainConfig.reward))
        values["reward_options"] = _merge_options(values.get("reward_options", {}), parsed)
    config = TrainConfig(**values)
    config.validate()
    return config


def _merge_options(base: dict, new: dict) -> dict:
    """Flags add to the file's reward options per reward instead of replacing them."""
    merged = {k: dict(v) for k, v in base.items()}
    for reward, opts in new.items():
        merged.setdefault(reward, {}).update(opts)
    return merged


def with_family(config: TrainConfig, model, flow_noise_level: float = 0.0) -> TrainConfig:
    """The family layer: `config` with its unset (None) family-dependent fields filled with the
    defaults of the inspected `model`'s family (so config.yaml records what trains); refuses
    what the family's sampler cannot do. `model`: an `aligner.pipeline.ModelInfo`;
    `flow_noise_level`: the algorithm's noise level for the flow sampler when unset."""
    from alignkit.families import family_defaults

    family = model.family
    flux_schnell = family.name == "flux" and not model.guidance_embeds
    if flux_schnell and config.guidance_scale not in (None, 0.0):
        logger.warning("--guidance-scale %g is ignored: this FLUX model (schnell-like) has no guidance embedding "
                       "and the aligner runs no classifier-free batch for FLUX", config.guidance_scale)
    unset = {name: value for name, value in family_defaults(family, model.guidance_embeds).items()
             if getattr(config, name) is None}
    if family.sampler == "flow" and config.noise_level is None:
        unset["noise_level"] = flow_noise_level
    config = dataclasses.replace(config, **unset)
    if family.sampler == "flow" and config.eta > 0:
        raise AlignkitError(f"--eta {config.eta:g}: the flow-matching sampler of {family.pipeline} is a deterministic "
                            "ODE (Euler over the scheduler's sigmas) and takes no eta; drop --eta or pass --eta 0 "
                            "(its stochastic form takes --noise-level)")
    if family.sampler != "flow" and config.noise_level not in (None, 0.0):
        raise AlignkitError(f"--noise-level {config.noise_level:g} is the flow-matching sampler's (SD3, FLUX); "
                            f"{family.pipeline} samples with DDIM: set its noise with --eta")
    if family.name == "flux" and config.negative_prompt:
        raise AlignkitError("negative_prompt: FLUX.1 is guidance-distilled and the aligner runs no classifier-free "
                            "batch for it, so a negative prompt would be ignored; leave it empty")
    return config


# Fields that may change when a run resumes: they do not alter its trajectory (compile_unet
# changes floating-point rounding only).
RESUMABLE_CHANGES = {"max_train_steps", "resume_from_checkpoint", "overwrite", "report_to", "checkpointing_steps",
                     "checkpoints_total_limit", "sample_every", "num_samples", "output_dir",
                     "compile_unet", "max_nonfinite_steps", "offload_t5"}
