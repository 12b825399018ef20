"""Tiny CLIP-family backbones built from configs, saved in the exact layouts of the real
checkpoints, and a fake Hugging Face cache to put them in.

- a transformers CLIP folder as on the hub: config.json, model.safetensors (with the legacy
  position_ids buffers that checkpoints from older transformers carry), and the tokenizer
  files vocab.json / merges.txt / tokenizer_config.json / special_tokens_map.json. The
  vocabulary is CLIP's real BPE (49408 tokens), rebuilt from the copy open_clip ships, so
  tokenisation is the real one and transformers 5's tokenizer accepts it.
- an open_clip architecture registered under a tiny name, and an HPS-style checkpoint:
  torch.save({'state_dict': ...}) under the real file name.
- the aesthetic v2 MLP head as a plain state dict (`layers.{0,2,4,6,7}`).
"""

from __future__ import annotations

import functools
import gzip
import json
import pathlib
import shutil
from pathlib import Path

import torch

TINY_OPEN_CLIP = "alignkit-tiny-ViT"
EMBED_DIM = 768  # the aesthetic heads read 768-d embeddings; a projection this wide is cheap


@functools.lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges, built exactly as open_clip's SimpleTokenizer builds them."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_bpe_tokenizer(folder: Path) -> None:
    """The tokenizer files of openai/clip-vit-large-patch14 (slow-tokenizer layout)."""
    vocab, merges = clip_bpe()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}))


def tiny_clip_config(image_size: int = 32, projection_dim: int = EMBED_DIM):
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, projection_dim=projection_dim)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=8, projection_dim=projection_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


# An ultralytics DetectionModel config (the count reward's detector) for the toy world's three
# shapes.
TINY_YAML = {
    "nc": 3,
    "names": ["circle", "square", "triangle"],
    # yolov8's layout at a tiny width: a few hundred k parameters, built in a second.
    "scales": {"n": [0.33, 0.0625, 256]},
    "scale": "n",
    "backbone": [
        [-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 1, "C2f", [128, True]],
        [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "C2f", [256, True]], [-1, 1, "Conv", [512, 3, 2]],
        [-1, 1, "C2f", [512, True]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 1, "C2f", [1024, True]],
        [-1, 1, "SPPF", [1024, 5]],
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 6], 1, "Concat", [1]], [-1, 1, "C2f", [512]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 4], 1, "Concat", [1]], [-1, 1, "C2f", [256]],
        [-1, 1, "Conv", [256, 3, 2]], [[-1, 12], 1, "Concat", [1]], [-1, 1, "C2f", [512]],
        [-1, 1, "Conv", [512, 3, 2]], [[-1, 9], 1, "Concat", [1]], [-1, 1, "C2f", [1024]],
        [[15, 18, 21], 1, "Detect", ["nc"]],
    ],
}


def small_clip_model(seed: int = 0):
    """A transformers `CLIPModel`, random weights, 16 px input, 6-d projection, never saved:
    for tests that only need a CLIP inside a reward."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tower = {"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1}
    config = CLIPConfig(text_config={**tower, "vocab_size": 50},
                        vision_config={**tower, "image_size": 16, "patch_size": 8}, projection_dim=6)
    return CLIPModel(config).eval()


def save_tiny_clip(folder: Path, seed: int = 0, logit_scale: float | None = None, **config_kwargs) -> Path:
    """A transformers CLIP folder (config + model.safetensors + tokenizer), seeded."""
    from safetensors.torch import save_file
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(**config_kwargs)).eval()
    if logit_scale is not None:
        model.logit_scale.data.fill_(logit_scale)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # Real checkpoints saved by transformers 4.x still carry these (now non-persistent) buffers.
    state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    n_patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    state["vision_model.embeddings.position_ids"] = torch.arange(n_patches + 1).unsqueeze(0)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    write_clip_bpe_tokenizer(folder)
    return folder


def load_reference_clip(folder: Path):
    """The same model through transformers' own loader, as an independent reference."""
    from transformers import CLIPModel, CLIPTokenizer

    return CLIPModel.from_pretrained(folder).eval(), CLIPTokenizer.from_pretrained(folder)


def register_tiny_open_clip(folder: Path) -> str:
    """A ViT-H-14-shaped open_clip config, tiny, registered by name with open_clip."""
    import open_clip

    if TINY_OPEN_CLIP not in open_clip.list_models():
        config = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{TINY_OPEN_CLIP}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    return TINY_OPEN_CLIP


def save_hps_checkpoint(path: Path, model_name: str, seed: int = 0) -> Path:
    """An HPS-format checkpoint: {'state_dict': ...} of a seeded open_clip model."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def aesthetic_mlp_state(seed: int = 0) -> dict:
    from alignkit.rewards.aesthetic import AestheticMLP

    torch.manual_seed(seed)
    return AestheticMLP().state_dict()


def put_in_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], revision: str = "0" * 40) -> Path:
    """Lay files out as huggingface_hub's cache does: models--ORG--NAME/snapshots/REV/FILE and refs/main."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    for name, source in files.items():
        if source.is_dir():
            shutil.copytree(source, snapshot / name, dirs_exist_ok=True)
        else:
            shutil.copy(source, snapshot / name)
    return snapshot


class _TouchOnLoad:
    """Unpickling this calls Path.touch: the stand-in for a checkpoint that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def write_code_pickle(path: Path, marker: Path, wrap: str | None = None) -> Path:
    """A torch checkpoint that would create `marker` if it were ever unpickled unsafely."""
    payload = {"weight": _TouchOnLoad(marker), "bias": torch.zeros(1)}
    torch.save({wrap: payload} if wrap else payload, path)
    return path


def assert_code_pickle_refused(path: Path, load, *fragments: str, wrap: str | None = None) -> None:
    """Write a code-carrying checkpoint at `path`; `load()` must fail with one line naming every
    fragment, and the payload must never have run."""
    import pytest

    from alignkit.errors import CheckpointError

    marker = path.with_name(path.name + ".pwned")
    write_code_pickle(path, marker, wrap)
    with pytest.raises(CheckpointError) as info:
        load()
    assert_one_line(info, *fragments)
    assert not marker.exists()


def write_corrupt(path: Path, source: Path | None = None) -> Path:
    """A truncated copy of `source` (or garbage bytes): what an interrupted download leaves."""
    data = source.read_bytes()[: max(16, source.stat().st_size // 3)] if source else b"not a checkpoint" * 8
    path.write_bytes(data)
    return path


def use_hub_cache(monkeypatch, cache: Path) -> Path:
    """Point huggingface_hub (and transformers, which reads the same constants) at `cache`, offline."""
    import huggingface_hub.constants as constants

    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def clip_inputs(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP normalisation written out, for references independent of alignkit's helpers."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (pixels - mean) / std


def reference_cosines(model, tokenizer, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """cos(image i, prompt j) for all i, j with transformers' own CLIPModel (images already at
    the model's input size)."""
    with torch.no_grad():
        tokens = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")
        text = model.get_text_features(**tokens).pooler_output
        image = model.get_image_features(pixel_values=clip_inputs(images)).pooler_output
    text = text / text.norm(dim=-1, keepdim=True)
    image = image / image.norm(dim=-1, keepdim=True)
    return image @ text.T


def assert_pixel_gradient(reward, size: tuple[int, int], prompts: list[str]):
    """Score images of `size` (any size: resized inside): a (B,) score with a finite, non-zero
    gradient at the pixels, and no trainable parameter in the reward. Returns the scores."""
    x = torch.rand(len(prompts), 3, *size, requires_grad=True)
    scores = reward(x, prompts)
    assert scores.shape == (len(prompts),)
    scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in reward.parameters())
    return scores


def assert_bfloat16_close(load, images: torch.Tensor, prompts: list[str], atol: float, rtol: float = 0.05):
    """`load(dtype)` builds a reward. With bfloat16 weights it scores half-precision images in
    float32, close to its float32 twin (`load(None)`), with a finite, non-zero gradient at the
    pixels. Returns the bfloat16 reward."""
    reward = load(torch.bfloat16)
    x = images.half().requires_grad_(True)
    scores = reward(x, prompts)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, load(None)(images, prompts), atol=atol, rtol=rtol)
    scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    return reward


def assert_one_line(exc_info, *fragments: str) -> str:
    """The error is one line and names every fragment; returns the message."""
    message = str(exc_info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message
