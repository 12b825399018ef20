"""Reading and loading a diffusers pipeline: the one loader of the aligner and of evaluation.

`inspect_model` resolves `--model` (a named model, a folder or a hub id), reads its
`model_index.json` before any weight loads, finds its family (`alignkit.families`) and checks
the components that family needs (T5 for SD3 / FLUX). `load_pipeline` then loads it in one
dtype, with the safety checker off (a post-filter that blacks out images: neither training nor
evaluation wants it) and the components the index leaves out passed as None. A model that
cannot be read or loaded is one line (`PipelineError`), never a library's traceback.

The aligner prepares the loaded pipeline for its sampler (`aligner/pipeline.py`); evaluation
samples with it as it is (`evaluation/generate.py`), in `sampling_dtype`. Both check
`--resolution` with `check_resolution` (the family's size step, `families.size_multiple`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.errors import AlignkitError, MissingWeightsError, first_line
from alignkit.families import Family, family_of, flux_guidance_embeds, resolution_error, size_multiple, supported
from alignkit.hub import dropped_components, hub_reachable, quiet_loading
from alignkit.models import resolve_model


class PipelineError(AlignkitError):
    """A model that cannot be read or loaded, or does not fit the sampler."""


@dataclass
class ModelInfo:
    """What model_index.json (and the denoiser's config) say, read without loading weights."""

    source: str
    # None only for a pipeline class of no known family (evaluation samples it all the same).
    family: Family | None
    # FLUX.1-dev embeds the guidance scale; FLUX.1-schnell does not (it ignores one).
    guidance_embeds: bool = True
    # A hub id read from the HF cache alone (the hub cannot be reached).
    local_only: bool = False
    # Components model_index.json leaves out ([null, null]), passed as None to from_pretrained.
    dropped: tuple[str, ...] = ()
    # The pipeline class model_index.json names.
    class_name: str = "?"
    revision: str | None = field(default=None)


def inspect_model(name_or_path: str, revision: str | None = None, what: str = "model",
                  flag: str | None = "--model", require_family: bool = True) -> ModelInfo:
    """The model's family from its model_index.json, and its components checked: one line for
    a folder or index that cannot be read, an unsupported pipeline (unless `require_family` is
    False) or a component (such as T5) that the folder lacks. `what` names the model in
    messages; `flag` is the option that gave it (added to a missing model's message)."""
    from diffusers import DiffusionPipeline

    try:
        source = resolve_model(name_or_path, what=what)
    except MissingWeightsError as exc:
        if not flag:
            raise
        raise PipelineError(f"{exc} ({flag})") from None
    # A hub id whose files are cached loads from the cache alone when the hub cannot be reached,
    # instead of retrying it for every file.
    local_only = not Path(source).exists() and not hub_reachable()
    index_file = Path(source) / "model_index.json" if Path(source).is_dir() else f"{source}'s model_index.json"
    try:
        index = DiffusionPipeline.load_config(source, revision=revision, local_files_only=local_only)
    except (OSError, ValueError, TypeError) as exc:
        if "valid JSON" in str(exc):  # diffusers: "... is not a valid JSON file."
            raise PipelineError(f"{what} '{name_or_path}': {index_file} is not valid JSON; fix the file or "
                                "download the model again") from None
        raise PipelineError(f"{what} '{name_or_path}': cannot read {index_file} ({first_line(exc)})") from None
    if not isinstance(index, dict):
        raise PipelineError(f"{what} '{name_or_path}': {index_file} holds no JSON object of components; fix the "
                            "file or download the model again")
    class_name = str(index.get("_class_name", "?"))
    family = family_of(class_name)
    if family is None and require_family:
        raise PipelineError(f"{what} '{name_or_path}' is a {class_name}; the aligner supports {supported()}")
    t5 = family.t5 if family is not None else None
    if t5 is not None:
        entry = index.get(t5)
        # SD3 may drop T5 on purpose (model_index lists it as null: diffusers then uses zeros);
        # FLUX's only prompt sequence comes from T5.
        dropped = not entry or entry[0] is None
        if dropped and family.name == "flux":
            raise PipelineError(f"{what} '{name_or_path}': FLUX needs its T5 text encoder ({t5}), which its "
                                "model_index.json leaves out")
        if not dropped and Path(source).is_dir() and not (Path(source) / t5).is_dir():
            raise PipelineError(f"{what} '{name_or_path}': its T5 text encoder folder {Path(source) / t5} is missing; "
                                "copy it from the original model (or download the model again)")
        if not dropped and local_only and not _cached(source, f"{t5}/config.json", revision):
            raise PipelineError(f"{what} '{name_or_path}': its T5 text encoder ({t5}/) is not in the Hugging Face "
                                f"cache and the hub cannot be reached; download the whole model (hf download {source})")
    guidance_embeds = True
    if family is not None and family.name == "flux":
        try:
            guidance_embeds = flux_guidance_embeds(source, revision=revision, local_files_only=local_only)
        except (OSError, ValueError, TypeError) as exc:
            raise PipelineError(f"{what} '{name_or_path}': cannot read transformer/config.json "
                                f"({first_line(exc)}); fix the file or download the model again") from None
    return ModelInfo(source, family, guidance_embeds, local_only, tuple(dropped_components(index)), class_name,
                     revision)


def _cached(repo_id: str, filename: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)


def load_pipeline(info: ModelInfo, dtype: torch.dtype, name: str, what: str = "model"):
    """The diffusers pipeline `inspect_model` read, loaded in `dtype` (one line if it cannot be)."""
    from diffusers import DiffusionPipeline

    # The safety checker is a non-differentiable post-filter that blacks out images.
    extra = {"safety_checker": None}
    if info.family is not None and info.family.name == "sd":
        extra["requires_safety_checker"] = False
    extra.update({component: None for component in info.dropped})
    try:
        with quiet_loading():
            return DiffusionPipeline.from_pretrained(info.source, revision=info.revision, dtype=dtype,
                                                     local_files_only=info.local_only, **extra)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise PipelineError(f"{what} '{name}' could not be loaded as a diffusers pipeline: {first_line(exc)}") from None


def sampling_dtype(device: torch.device, family: Family | None) -> torch.dtype:
    """The dtype to sample in without training: half precision on CUDA (as users sample), bf16
    for FLUX (its activations overflow fp16: black images), full precision on CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if family is not None and family.name == "flux" else torch.float16


def check_resolution(resolution: int | None, pipe=None, multiple: int | None = None, reason: str = "") -> None:
    """The image side must be a multiple of the model's size step: `size_multiple(pipe)` (the
    VAE factor, times SD3's patch size or FLUX's 2x2 packing), or the `multiple` given.
    None (the model's native side) passes."""
    if resolution is None:
        return
    if multiple is None:
        multiple, reason = size_multiple(pipe)
    message = resolution_error(resolution, multiple, reason)
    if message:
        raise PipelineError(message)
