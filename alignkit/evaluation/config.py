"""What `alignkit eval` was asked to do, and the settings and conditions it resolves to."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.evaluation.source import EvalSource, LoraCheckpoint

# DRaFT's trick: scaling the adapter trades reward against drift without retraining.
DEFAULT_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
# StableDiffusionPipeline's default guidance: a bare LoRA's whose base model is of no known family.
DIFFUSERS_GUIDANCE = 7.5


@dataclass
class EvalConfig:
    """Every option of `alignkit eval`; None means "take it from the run's config.yaml"."""

    # A run folder written by `alignkit train`, or a bare diffusers LoRA folder.
    path: Path
    # The base model (hub id, local folder, or "toy"); required for a bare LoRA folder.
    model: str | None = None
    # The reward the LoRA was trained on, as a spec; required for a bare LoRA folder.
    reward: str | None = None
    # Held-out rewards as a spec ("hps+pickscore"); None picks them from the HELDOUT table.
    heldout: str | None = None
    # NAME.OPTION=VALUE overrides for any reward factory, trained or held out.
    reward_options: list[str] = field(default_factory=list)
    # Independent judges of the trained reward's true target (evaluation/judges.py); empty:
    # the defaults (the toy world's rules on toy models).
    judges: list[str] = field(default_factory=list)
    # [JUDGE.]KEY=VALUE options of the judges, e.g. count.detector=PATH.
    judge_options: list[str] = field(default_factory=list)
    # A prompt set name or file (its held-out `eval` split is used), or one prompt.
    prompts: str | None = None
    prompt: str | None = None
    # Keep only the first N prompts (None: all).
    num_prompts: int | None = None
    # Seeds per prompt; base and tuned images share them, so their noise is identical.
    seeds: int = 4
    # The first of them (None: the run's training seed). Another first seed reads the same
    # models on fresh samples: a replication, not a re-read of the images a choice was made on.
    first_seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    eta: float | None = None
    # Image side in pixels (None: the run's, else the pipeline's native size).
    resolution: int | None = None
    # LoRA scales swept on the final LoRA.
    scales: tuple[float, ...] = DEFAULT_SCALES
    # Over-optimisation tolerance: a watched metric may fall this many base stds ...
    tolerance: float = 0.5
    # ... or, where the base std is zero or unknown (one prompt, one seed), this fraction.
    rel_tolerance: float = 0.05
    # Default: RUN/eval.
    output_dir: Path | None = None
    device: str | None = None
    # Images per pipeline call and per reward forward.
    batch_size: int = 8
    # The command line, recorded in summary.json.
    command: str = ""

    def validate(self) -> None:
        if self.seeds < 1:
            raise AlignkitError(f"--seeds must be at least 1 (seeds per prompt), got {self.seeds}")
        if self.first_seed is not None and self.first_seed < 0:
            raise AlignkitError(f"--first-seed must be 0 or more, got {self.first_seed}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise AlignkitError(f"--num-prompts must be at least 1, got {self.num_prompts}")
        if self.batch_size < 1:
            raise AlignkitError(f"--batch-size must be at least 1, got {self.batch_size}")
        if any(s < 0 for s in self.scales):
            raise AlignkitError(f"--scales must be non-negative LoRA scales, got {list(self.scales)}")
        if self.tolerance < 0 or self.rel_tolerance < 0:
            raise AlignkitError("--tolerance must be non-negative (in base standard deviations)")
        if self.prompt is not None and self.prompts is not None:
            raise AlignkitError("give at most one of --prompt TEXT and --prompts SET_OR_FILE")
        if not all(math.isfinite(s) for s in self.scales) or not math.isfinite(self.tolerance):
            raise AlignkitError("--scales and --tolerance must be finite numbers")
        check_generation(self.num_inference_steps, self.guidance_scale, self.eta, self.resolution)
        from alignkit.devices import resolve_device

        resolve_device(self.device)


def check_generation(steps: int | None, guidance: float | None, eta: float | None, resolution: int | None) -> None:
    """Settings a diffusers pipeline can generate with (None: not set)."""
    if steps is not None and steps < 1:
        raise AlignkitError(f"--num-inference-steps must be at least 1, got {steps}")
    if guidance is not None and not math.isfinite(guidance):
        raise AlignkitError(f"--guidance-scale must be a finite number, got {guidance}")
    if eta is not None and not 0 <= eta <= 1:
        raise AlignkitError(f"--eta must be between 0 and 1, got {eta}")
    # diffusers' pipelines refuse sides that are not multiples of 8 (after a long traceback).
    if resolution is not None and (resolution <= 0 or resolution % 8):
        raise AlignkitError(f"--resolution must be a positive multiple of 8, got {resolution}")


def parse_scales(text: str) -> tuple[float, ...]:
    """'0,0.5,1,1.5' -> (0.0, 0.5, 1.0, 1.5)."""
    try:
        scales = tuple(sorted({float(item) for item in text.split(",") if item.strip()}))
    except ValueError:
        raise AlignkitError(f"--scales '{text}' must be comma-separated numbers, e.g. 0,0.5,1,1.5") from None
    if not scales:
        raise AlignkitError("--scales is empty; give comma-separated numbers, e.g. 0,0.5,1")
    return scales


@dataclass(frozen=True)
class Settings:
    """Generation settings: part of every image's cache key."""

    num_inference_steps: int
    guidance_scale: float
    eta: float
    # None: the pipeline's native size.
    resolution: int | None

    def key(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Condition:
    """One way of generating: the base model, or a LoRA at a scale."""

    checkpoint: LoraCheckpoint | None
    scale: float

    @property
    def label(self) -> str:
        if self.checkpoint is None:
            return "base"
        return f"{self.checkpoint.label}@{self.scale:g}"

    @property
    def step(self) -> int | None:
        return 0 if self.checkpoint is None else self.checkpoint.step

    def key(self) -> dict:
        return {"lora": self.checkpoint.sha256 if self.checkpoint else None,
                "scale": self.scale if self.checkpoint else 0.0}


def resolve_settings(config: EvalConfig, source: EvalSource) -> Settings:
    run = source.config

    def pick(flag, key, default):
        return flag if flag is not None else run.get(key) if run.get(key) is not None else default

    # The defaults for a bare LoRA: 50 steps (diffusers' SD default) and the guidance of the
    # base model's family (SD/SDXL 7.5, SD3 7.0, FLUX.1-dev 3.5, FLUX.1-schnell 0). A run
    # keeps what it trained with (its config.yaml has the family's default written in).
    guidance = pick(config.guidance_scale, "guidance_scale", None)
    if guidance is None:
        guidance = DIFFUSERS_GUIDANCE if source.is_run else bare_lora_guidance(source.model)
    resolution = pick(config.resolution, "resolution", None)
    settings = Settings(
        num_inference_steps=int(pick(config.num_inference_steps, "num_inference_steps", 50)),
        guidance_scale=float(guidance),
        eta=float(pick(config.eta, "eta", 0.0)),
        resolution=None if resolution is None else int(resolution),
    )
    # The run's own settings too: one trained before train checked them may hold any side.
    check_generation(settings.num_inference_steps, settings.guidance_scale, settings.eta, settings.resolution)
    return settings


def bare_lora_guidance(model: str) -> float:
    """The default guidance for a LoRA without a run config: its base model family's, read from
    model_index.json (and FLUX's transformer config) before any weight loads; diffusers' 7.5
    for another pipeline or a model that cannot be read here (its loading then says why)."""
    from alignkit.families import family_guidance
    from alignkit.models import resolve_model

    try:
        source = resolve_model(model, what="base model")
    except AlignkitError:
        return DIFFUSERS_GUIDANCE
    guidance = family_guidance(source)
    return DIFFUSERS_GUIDANCE if guidance is None else guidance


def resolve_prompts(config: EvalConfig, source: EvalSource) -> list[str]:
    """The held-out `eval` split of the run's prompt set, falling back to the run's prompt."""
    from alignkit.prompts import load_prompt_set, single_prompt

    if config.prompt is not None:
        prompts = single_prompt(config.prompt).eval
    elif config.prompts is not None:
        prompts = load_prompt_set(config.prompts).eval
    elif source.config.get("prompts"):
        prompts = load_prompt_set(str(source.config["prompts"])).eval
    elif source.config.get("prompt"):
        prompts = single_prompt(str(source.config["prompt"])).eval
    else:
        raise AlignkitError(f"{source.root} names no prompts; pass --prompts SET_OR_FILE or --prompt TEXT")
    return list(prompts[: config.num_prompts] if config.num_prompts else prompts)


def resolve_seeds(config: EvalConfig, source: EvalSource) -> list[int]:
    first = config.first_seed if config.first_seed is not None else int(source.config.get("seed") or 0)
    return [first + i for i in range(config.seeds)]


def plan_conditions(source: EvalSource, scales: tuple[float, ...]) -> list[Condition]:
    """The base model, every checkpoint at scale 1, and the final LoRA at every scale."""
    conditions = [Condition(None, 0.0)]
    conditions += [Condition(c, 1.0) for c in source.checkpoints[:-1]]
    conditions += [Condition(source.final, float(s)) for s in sorted(set(scales) | {1.0})]
    return conditions


def stable_hash(payload: dict, length: int = 16) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
