"""The output folder as a cache: images, scores and embeddings are reused on a re-run.

Each image is keyed by what made it, (base model, LoRA bytes, scale, prompt, seed, generation
settings), so a re-run with other settings never reuses a stale image. Scores are keyed by
the image and by the reward's spec and options; embeddings by the image and the embedder.
Everything is scored from the saved PNG (uint8), so a re-run sees exactly the same pixels.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from alignkit.errors import AlignkitError
from alignkit.evaluation.config import Condition, Settings, stable_hash

INDEX_FILE = "cache/index.json"
EMBEDDINGS_FILE = "cache/embeddings.safetensors"


class Store:
    def __init__(self, root: Path):
        self.root = root
        self.check_writable(root)
        self.index: dict[str, dict] = self._read_index()
        # Facts about rewards learnt once, e.g. which carry no image encoder (never an image key: those are hex).
        self.meta: dict = self.index.setdefault("__meta__", {"no_embedder": []})
        self.embeddings: dict[str, Tensor] = self._read_embeddings()
        self._dirty = False

    @staticmethod
    def check_writable(root: Path) -> None:
        """Refuse an output folder that could never be written, now, not after minutes of sampling.
        (Nothing is created here: a run that fails on its inputs leaves no empty folders behind.)"""
        if root.exists() and not root.is_dir():
            raise AlignkitError(f"output folder {root} is a file; pass --output-dir FOLDER")
        parent = next(p for p in (root, *root.parents) if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise AlignkitError(f"cannot create output folder {root}: {parent} is not a writable folder; pass another --output-dir")

    # -- images ---------------------------------------------------------------------------

    @staticmethod
    def image_key(model: str, condition: Condition, prompt: str, seed: int, settings: Settings) -> str:
        return stable_hash({"model": model, **condition.key(), "prompt": prompt, "seed": seed, **settings.key()})

    def image_path(self, key: str, condition: Condition, prompt: str, seed: int) -> Path:
        # A readable name for people browsing images/, made unique by the key.
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "prompt"
        return self.root / "images" / condition.label / f"{slug}_s{seed}_{key[:8]}.png"

    def has_image(self, key: str) -> bool:
        entry = self.index.get(key)
        return bool(entry) and (self.root / entry["path"]).is_file()

    def load_image(self, key: str) -> Tensor:
        """The saved PNG as a uint8 (3,H,W) tensor."""
        from alignkit.images import load_image

        return load_image(self.root / self.index[key]["path"]).mul(255).round().to(torch.uint8)

    def save_image(self, key: str, image: Tensor, path: Path) -> None:
        from alignkit.images import save_image

        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(image.float() / 255, path)
        # New pixels invalidate any scores a previous image under this key had.
        self.index[key] = {"path": str(path.relative_to(self.root)), "scores": {}}
        self._dirty = True

    def relpath(self, key: str) -> str:
        return self.index[key]["path"]

    # -- scores and embeddings -------------------------------------------------------------

    def scores(self, key: str, scorer_id: str) -> dict[str, float] | None:
        return self.index[key]["scores"].get(scorer_id)

    def set_scores(self, key: str, scorer_id: str, values: dict[str, float]) -> None:
        self.index[key]["scores"][scorer_id] = values
        self._dirty = True

    def embedding(self, key: str, embedder: str) -> Tensor | None:
        return self.embeddings.get(f"{embedder}/{key}")

    def set_embedding(self, key: str, embedder: str, value: Tensor) -> None:
        # A copy: a row of a batch shares its storage, which safetensors refuses to save.
        self.embeddings[f"{embedder}/{key}"] = value.detach().float().cpu().clone()
        self._dirty = True

    def mark(self) -> None:
        self._dirty = True

    def flush(self) -> None:
        """Write the index and embeddings atomically: an interrupted run leaves a valid cache."""
        if not self._dirty:
            return
        index = self.root / INDEX_FILE
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.index))
        os.replace(tmp, index)
        if self.embeddings:
            from safetensors.torch import save_file

            emb = self.root / EMBEDDINGS_FILE
            tmp = emb.with_suffix(".tmp")
            save_file(self.embeddings, str(tmp))
            os.replace(tmp, emb)
        self._dirty = False

    def _read_index(self) -> dict:
        path = self.root / INDEX_FILE
        if not path.is_file():
            return {}
        try:
            index = json.loads(path.read_text())
        except json.JSONDecodeError:
            # A corrupted cache costs a regeneration, not an error: it is ours, not the user's.
            return {}
        return index if isinstance(index, dict) else {}

    def _read_embeddings(self) -> dict[str, Tensor]:
        path = self.root / EMBEDDINGS_FILE
        if not path.is_file():
            return {}
        from alignkit.errors import CheckpointError
        from alignkit.hub import load_state_dict

        try:
            return dict(load_state_dict(path, what="embedding cache"))
        except CheckpointError:
            return {}
