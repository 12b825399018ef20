"""Generation for evaluation: the plain diffusers pipeline, the base model and its LoRAs.

Each LoRA checkpoint is loaded once as its own adapter; a condition switches adapters and
their scale (`set_adapters`), or turns LoRA off for the base model, so no weights are ever
merged or reloaded between conditions. Noise comes from one CPU `torch.Generator` per image,
seeded from the image's seed alone: base and tuned images of a (prompt, seed) start from the
same latents on any device and in any batch.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from alignkit.errors import AlignkitError, CheckpointError, first_line
from alignkit.evaluation.config import Condition, Settings
from alignkit.evaluation.source import LoraCheckpoint
from alignkit.families import takes_eta
from alignkit.hub import quiet_loading
from alignkit.pipelines import check_resolution, inspect_model, load_pipeline, sampling_dtype


class PipelineGenerator:
    """A diffusers pipeline loaded on first use, with every LoRA as a named adapter."""

    def __init__(self, model: str, device: str, batch_size: int = 8):
        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._pipe = None
        self._loaded: set[str] = set()
        # How many times the pipeline ran: re-runs on a cached folder must not add to it.
        self.calls = 0

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = self._load_pipeline()
        return self._pipe

    def _load_pipeline(self):
        # The aligner's loader; any pipeline class that takes LoRA adapters is evaluated.
        info = inspect_model(self.model, what="base model", flag=None, require_family=False)
        pipe = load_pipeline(info, sampling_dtype(self.device, info.family), self.model, what="base model")
        if not hasattr(pipe, "load_lora_weights"):
            raise AlignkitError(f"base model '{self.model}' ({type(pipe).__name__}) does not support LoRA adapters")
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def check_resolution(self, resolution: int | None) -> None:
        """One line, before anything is generated, for a side this pipeline cannot generate
        (FLUX's pipeline would silently resize it; SD3's would fail after a traceback)."""
        check_resolution(resolution, self.pipe)

    def load_lora(self, checkpoint: LoraCheckpoint) -> None:
        """Load one LoRA file as its own adapter, through alignkit's safe loader."""
        if checkpoint.adapter_name in self._loaded:
            return
        from alignkit.hub import load_state_dict

        state = load_state_dict(checkpoint.path, what=f"LoRA {checkpoint.path}")
        foreign = _foreign_module(self.pipe, state)
        if foreign is not None:
            # diffusers would load the keys that happen to match and skip the rest with a warning.
            raise CheckpointError(
                f"LoRA {checkpoint.path} does not fit the base model '{self.model}' ({type(self.pipe).__name__}): "
                f"its module {foreign} is not in that model (a LoRA of another model family?); "
                "pass the --model it was trained on")
        try:
            with quiet_loading():
                self.pipe.load_lora_weights(state, adapter_name=checkpoint.adapter_name)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"LoRA {checkpoint.path} does not fit the base model '{self.model}' ({_mismatch(exc)}); "
                "pass the --model it was trained on"
            ) from None
        adapters = {name for names in self.pipe.get_list_adapters().values() for name in names}
        if checkpoint.adapter_name not in adapters:
            raise CheckpointError(f"LoRA {checkpoint.path} holds no weights that match the base model '{self.model}'; "
                                  "pass the --model it was trained on")
        self._loaded.add(checkpoint.adapter_name)

    def activate(self, condition: Condition) -> None:
        pipe = self.pipe
        if condition.checkpoint is None:
            if self._loaded:
                pipe.disable_lora()
            return
        self.load_lora(condition.checkpoint)
        pipe.enable_lora()
        # One adapter at a time; the scale multiplies its update (0 = base, >1 extrapolates).
        pipe.set_adapters([condition.checkpoint.adapter_name], adapter_weights=[condition.scale])

    @torch.no_grad()
    def generate(self, condition: Condition, prompt: str, seeds: list[int], settings: Settings) -> Tensor:
        """uint8 images (len(seeds),3,H,W) for one prompt, one per seed."""
        self.activate(condition)
        # Unset: the native size the aligner trains at (the VAE's sample_size). SD/SDXL pipelines
        # default to it already; FLUX's would default to 1024 px whatever the model.
        side = settings.resolution or (self.pipe.vae.config.sample_size if hasattr(self.pipe, "transformer") else None)
        kwargs = {"height": side, "width": side} if side else {}
        # Flow-matching pipelines (SD3, FLUX) are deterministic and take no eta.
        if takes_eta(self.pipe):
            kwargs["eta"] = settings.eta
        chunks = []
        for start in range(0, len(seeds), self.batch_size):
            chunk = seeds[start:start + self.batch_size]
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in chunk]
            self.calls += 1
            out = self.pipe(prompt=prompt, num_images_per_prompt=len(chunk), generator=generators,
                            num_inference_steps=settings.num_inference_steps,
                            guidance_scale=settings.guidance_scale, output_type="pt", **kwargs)
            # Quantise as the saved PNGs will be, so fresh and cached images score the same.
            chunks.append(out.images.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu())
        return torch.cat(chunks)


# A LoRA key in diffusers' layouts: COMPONENT.MODULE.lora_A.weight (peft) or COMPONENT.MODULE.lora.down.weight.
_LORA_KEY = re.compile(r"^(unet|transformer|text_encoder|text_encoder_2)\.(.+?)\.lora(?:_[AB]|\.down|\.up|_magnitude_vector)\b")


def _foreign_module(pipe, state: dict) -> str | None:
    """The first LoRA module (as COMPONENT.MODULE) that the pipeline lacks, or None. Keys in
    other layouts (kohya, ...) are left to diffusers' converters."""
    for key in state:
        match = _LORA_KEY.match(key)
        if match is None:
            continue
        component, module = match.groups()
        owner = getattr(pipe, component, None)
        try:
            if owner is None or owner.get_submodule(module) is None:
                return f"{component}.{module}"
        except AttributeError:  # get_submodule: no such submodule
            return f"{component}.{module}"
    return None


def _mismatch(exc: BaseException) -> str:
    # torch lists every mismatched tensor; the first one says enough.
    for line in str(exc).splitlines():
        if "size mismatch" in line:
            return line.strip().rstrip(".")
    return first_line(exc)
