"""LoRA on the denoiser (UNet or transformer) through peft, saved and loaded in diffusers' format.

Only the LoRA matrices train; every base weight keeps `requires_grad=False`. The file is
`pytorch_lora_weights.safetensors` with `unet.`- or `transformer.`-prefixed keys and the
adapter's LoraConfig as metadata (so `pipe.load_lora_weights(dir)` in plain diffusers restores
rank and alpha). UNet weights are in diffusers' key layout (`lora.down`/`lora.up`, as
train_text_to_image_lora.py writes them); transformer weights in peft's (`lora_A`/`lora_B`), as
diffusers' SD3 and FLUX LoRA scripts write them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from alignkit.errors import CheckpointError, first_line
from alignkit.hub import load_state_dict
from alignkit.runfolder import LORA_FILE



def add_lora(unet, rank: int, alpha: float, target_modules: list[str]) -> list[torch.nn.Parameter]:
    """Freeze the denoiser, add a gaussian-initialised LoRA adapter, return its (fp32) parameters."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))
    try:
        unet.add_adapter(config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise CheckpointError(f"--lora-target-modules {target_modules}: {first_line(exc)}") from None
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        # Frozen weights may be fp16/bf16; the trained ones stay fp32 so AdamW's updates are not lost.
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


@contextlib.contextmanager
def lora_disabled(model):
    """The base model, for a reference forward pass: the adapter switched off in place (diffusers'
    peft integration), so no second copy of the denoiser is ever held in memory."""
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()


def denoiser_prefix(model) -> str:
    """The key prefix diffusers' loaders expect for this denoiser: `unet` or `transformer`."""
    from diffusers import UNet2DConditionModel

    return "unet" if isinstance(model, UNet2DConditionModel) else "transformer"


def lora_state_dict(unet, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights in the layout diffusers' training scripts save (without the prefix)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return convert_state_dict_to_diffusers(state) if denoiser_prefix(unet) == "unet" else state


def save_lora(pipeline_cls, unet, directory: str | Path) -> Path:
    """Write `pytorch_lora_weights.safetensors` (+ adapter metadata) with the pipeline's own saver."""
    metadata = unet.peft_config["default"].to_dict()
    # LoraConfig holds sets (target_modules); the metadata is JSON.
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in metadata.items()}
    prefix = denoiser_prefix(unet)  # unet_lora_layers= / transformer_lora_layers=
    pipeline_cls.save_lora_weights(str(directory), **{f"{prefix}_lora_layers": lora_state_dict(unet),
                                                      f"{prefix}_lora_adapter_metadata": metadata},
                                   safe_serialization=True)
    return Path(directory) / LORA_FILE


def load_lora(unet, path: str | Path) -> None:
    """Load a saved LoRA file (or a folder holding one) into a denoiser that already has the adapter."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    path = Path(path)
    if path.is_dir():
        path = path / LORA_FILE
    state = load_state_dict(path, what="LoRA weights")
    prefix = denoiser_prefix(unet) + "."
    state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if prefix == "unet.":
        state = convert_unet_state_dict_to_peft(state)
    try:
        result = set_peft_model_state_dict(unet, state, adapter_name="default")
    except RuntimeError as exc:  # torch: "size mismatch for ...": another rank or model
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "shapes differ")
        raise CheckpointError(f"LoRA weights {path} do not fit this {prefix[:-1]} ({detail}); "
                              "was it trained with another --rank, model or --lora-target-modules?") from None
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected or not state:
        raise CheckpointError(f"LoRA weights {path} do not fit this {prefix[:-1]} (unexpected keys {unexpected[:3]}); "
                              "was it trained with another model or --lora-target-modules?")
