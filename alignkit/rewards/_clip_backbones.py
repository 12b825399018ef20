"""CLIP backbones shared by the CLIP-family rewards (aesthetic, hps, pickscore, clip).

Two model formats are in use: transformers `CLIPModel` folders (config.json + weights +
tokenizer files) and open_clip architectures filled from a checkpoint. Both are built here
the same way: on the meta device (no random initialisation of weights the checkpoint is
about to replace), then filled from a state dict that `alignkit.hub.load_state_dict` read,
so every load is safetensors or `torch.load(weights_only=True)` and every failure one line.

Both are wrapped as "towers" with one interface, `encode_images(pixels)` and
`encode_texts(prompts)`, so that a reward only states its preprocessing and its formula. The
towers take the backbone's input (resized, normalised pixels); a reward's public
`embed_images(images)` takes [0,1] images and applies its preprocessing first.
"""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.errors import AlignkitError, CheckpointError, MissingWeightsError, first_line
from alignkit.hub import hub_reachable, is_hub_id, load_into, load_state_dict, resolve_file, unreachable_reason
from alignkit.rewards.base import Resize, Reward, clip_pixels

# A transformers model folder holds one of these; safetensors first, as transformers does.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# --------------------------------------------------------------------------- sources

def split_source(name_or_path: str, what: str, option: str) -> tuple[str | None, Path | None]:
    """A `from_pretrained`-style argument as (hub repo id, None) or (None, local folder)."""
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        return None, path
    if path.exists():
        raise MissingWeightsError(f"{what}: {path} is a file; pass {option}= a model folder or a hub id")
    text = str(name_or_path)
    if not is_hub_id(text):
        raise MissingWeightsError(f"{what}: no folder at {text}; pass {option}= an existing model folder or a hub id")
    return text, None


def fetch(source: str, filename: str, *, what: str, option: str) -> Path:
    """One file of a model, from a local folder or the hub repo (through the HF cache)."""
    repo, folder = split_source(source, what, option)
    return resolve_file(repo, filename, local=folder, what=what, option=option)


def fetch_weights(source: str, *, what: str, option: str) -> Path:
    """The weights file of a transformers model folder or hub repo (see WEIGHT_FILES)."""
    repo, folder = split_source(source, what, option)
    if folder is not None:
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                return folder / name
        raise MissingWeightsError(f"{what}: {folder} has none of {', '.join(WEIGHT_FILES)}; "
                                  f"pass {option}= a folder saved with save_pretrained")
    from huggingface_hub import try_to_load_from_cache

    # Whichever format is already cached wins, so offline use works with either download.
    for name in WEIGHT_FILES:
        cached = try_to_load_from_cache(repo, name)
        if isinstance(cached, str):
            return Path(cached)
    either = " or ".join(WEIGHT_FILES)
    if not hub_reachable():
        raise MissingWeightsError(f"{what}: neither {either} of {repo} is in the Hugging Face cache and "
                                  f"{unreachable_reason()}; run `hf download {repo}` where there is network, "
                                  f"or pass {option}= a local model folder")
    for name in WEIGHT_FILES:
        try:
            return resolve_file(repo, name, what=what, option=option)
        except MissingWeightsError:
            continue  # the repo may ship the other format (PickScore_v1: pytorch_model.bin only)
    raise MissingWeightsError(f"{what}: {repo} has neither {either} (on the hub or in the cache); "
                              f"pass {option}= a transformers model hub id or folder")


# --------------------------------------------------------------------------- building

def materialize(build: Callable[[], nn.Module], state_dict: dict, what: str) -> nn.Module:
    """Build a module on the meta device and fill every parameter from `state_dict`.

    Buffers are created for real (the causal masks and position ids that checkpoints do not
    carry); parameters are assigned the checkpoint's tensors, and a missing or wrongly
    shaped one is a one-line `CheckpointError`.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        module = build()
    expected = set(module.state_dict())
    # Checkpoints saved by older transformers still carry the position_ids buffers, which
    # are non-persistent now: drop those, and only those.
    state_dict = {k: v for k, v in state_dict.items() if k in expected or not k.endswith("position_ids")}
    load_into(module, state_dict, what, assign=True)
    return module


def _as_state_dict(checkpoint, path: Path, what: str) -> dict[str, Tensor]:
    if not isinstance(checkpoint, dict) or not checkpoint or \
            not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{what}: {path} does not hold a state dict of tensors")
    return checkpoint


def load_hf_clip(source: str, *, what: str, option: str, vision_only: bool = False) -> nn.Module:
    """A transformers `CLIPModel` (or only its image tower and projection, as a
    `CLIPVisionModelWithProjection`) from a model folder or hub id."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

    config_path = fetch(source, "config.json", what=what, option=option)
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{what}: {config_path} is not a readable config ({first_line(exc)})") from None
    if raw.get("model_type") != "clip":
        raise CheckpointError(f"{what}: {config_path} describes a '{raw.get('model_type')}' model, not CLIP; "
                              f"pass {option}= a transformers CLIP model")
    config = CLIPConfig.from_dict(raw)
    weights = fetch_weights(source, what=what, option=option)
    state = _as_state_dict(load_state_dict(weights, what), weights, what)
    if vision_only:
        vision_config = config.vision_config
        # The projection width lives on the joint config; the vision sub-config's default differs.
        vision_config.projection_dim = config.projection_dim
        state = {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))}
        return materialize(lambda: CLIPVisionModelWithProjection(vision_config), state, what)
    return materialize(lambda: CLIPModel(config), state, what)


# The files a CLIP tokenizer may be saved as (slow: vocab + merges; fast: tokenizer.json).
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "special_tokens_map.json", "added_tokens.json")


def tokenizer_folder(source: str, *, what: str, option: str) -> Path:
    """A local folder holding the tokenizer files of a model folder or hub id: for a hub id,
    its snapshot in the HF cache, each file resolved through the cache first, so that a cached
    tokenizer loads without a single network request."""
    repo, folder = split_source(source, what, option)
    if folder is not None:
        return folder
    config = resolve_file(repo, "tokenizer_config.json", what=what, option=option)  # a clear line if absent
    for name in TOKENIZER_FILES:
        try:
            resolve_file(repo, name, what=what, option=option)
        except MissingWeightsError:
            pass  # optional, or the repo uses the other layout: from_pretrained says if none fits
    return config.parent


def load_hf_tokenizer(source: str, *, what: str, option: str):
    """The CLIP tokenizer of a model folder or hub id."""
    from transformers import CLIPTokenizer

    folder = tokenizer_folder(source, what=what, option=option)
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise MissingWeightsError(f"{what}: no usable CLIP tokenizer in {source} ({first_line(exc)}); "
                                  f"pass {option}= a folder with vocab.json and merges.txt or tokenizer.json") from None


def open_clip_config(model_name: str, *, what: str) -> dict:
    """The architecture config open_clip knows by `model_name`, ready to build without
    fetching any pretrained tower weights."""
    import open_clip

    # Only configs by name (built in, or added with add_model_config): an `hf-hub:` name
    # would fetch a config outside the checkpoint loading path.
    model_name = str(model_name)
    config = None if ":" in model_name else open_clip.get_model_config(model_name)
    if config is None:
        raise AlignkitError(f"{what}: open_clip has no model config '{model_name}' (e.g. ViT-H-14); "
                            "register one with open_clip.add_model_config(path)")
    config = deepcopy(config)
    if "multimodal_cfg" in config:
        raise AlignkitError(f"{what}: '{model_name}' is a CoCa model; a contrastive CLIP config is needed")
    # Towers from timm or transformers would otherwise fetch their own pretrained weights.
    if "timm_model_name" in config["vision_cfg"]:
        config["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in config["text_cfg"]:
        config["text_cfg"]["hf_model_pretrained"] = False
    return config


def load_open_clip(model_name: str, checkpoint: Path, *, what: str) -> nn.Module:
    """An open_clip architecture, by config name, with every weight from `checkpoint` (a dict
    whose `state_dict` replaces the model's, as open_clip's training saves it). Nothing is
    downloaded: neither pretrained tags nor tower weights are ever fetched."""
    import open_clip

    config = open_clip_config(model_name, what=what)
    custom_text = config.pop("custom_text", False) or "hf_model_name" in config["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP

    loaded = load_state_dict(checkpoint, what)
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    state = _as_state_dict(loaded, checkpoint, what)
    # Checkpoints written from DistributedDataParallel prefix every key with `module.`.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return materialize(lambda: cls(**config), state, what)


# --------------------------------------------------------------------------- towers

class HFClipTowers(nn.Module):
    """A transformers CLIPModel and its tokenizer behind the towers interface."""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        # A tiny test model may use a smaller input than the real 224.
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = min(int(tokenizer.model_max_length), int(model.config.text_config.max_position_embeddings))

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale

    def encode_images(self, pixels: Tensor) -> Tensor:
        # transformers >= 5 returns an output object whose pooler_output is the projected embedding.
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    def encode_texts(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.model.device)
        return self.model.get_text_features(input_ids=tokens["input_ids"],
                                            attention_mask=tokens["attention_mask"]).pooler_output


class OpenClipTowers(nn.Module):
    """An open_clip CLIP and its tokenizer (which ships its vocabulary) behind the towers interface."""

    def __init__(self, model: nn.Module, model_name: str):
        super().__init__()
        import open_clip

        self.model = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        height, width = model.visual.image_size
        if height != width:
            raise AlignkitError(f"open_clip model '{model_name}' takes {height}x{width} inputs; a square one is needed")
        self.image_size = int(height)

    def encode_images(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels)

    def encode_texts(self, texts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(texts).to(device))


# --------------------------------------------------------------------------- scoring

def encode_prompts(encode: Callable[[list[str]], Tensor], prompts: list[str]) -> Tensor:
    """Text features for each prompt, encoding every distinct prompt once and without a graph
    (rewards are differentiated with respect to the images only)."""
    unique = list(dict.fromkeys(prompts))
    with torch.no_grad():
        features = encode(unique)
    index = {prompt: i for i, prompt in enumerate(unique)}
    return features[torch.tensor([index[p] for p in prompts], device=features.device)]


class ContrastiveReward(Reward):
    """`scale * cos(image_i, prompt_i)`: image i is scored with prompt i (the diagonal).

    HPS uses scale 1, the CLIP score 100, PickScore the model's own `logit_scale.exp()`.
    """

    def __init__(self, towers: nn.Module, resize: Resize, scale: float | Tensor):
        super().__init__()
        self.towers = towers
        self.resize = resize
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).detach().clone())

    def embed_images(self, images: Tensor) -> Tensor:
        return self.towers.encode_images(clip_pixels(images, self.towers.image_size, self.resize, self.dtype))

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        image_features = F.normalize(self.embed_images(images).float(), dim=-1)
        text_features = F.normalize(encode_prompts(self.towers.encode_texts, prompts).float(), dim=-1)
        return self.scale.float() * (image_features * text_features).sum(dim=-1)


def place(reward: Reward, device, dtype) -> Reward:
    """Move a reward to `device`; weights in `dtype` (default float32, whatever the checkpoint's)."""
    return reward.to(device=device or "cpu", dtype=dtype or torch.float32)
