"""Embeddings of a data set's images (and prompts), computed once, batched, and cached on disk.

The cache is keyed by the backbone (its weights' revision and preprocessing) and by each
image's content hash, so a second fit on the same images (another head, another --folds, the
same pictures under new names) computes nothing. Entries are plain `.npy` float32 vectors,
read with `allow_pickle=False`, written atomically (temporary file, then rename), and only
after every embedding of the batch was computed.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from alignkit.images import load_image
from alignkit.rewards.fit.backbones import Embedder


def default_cache_dir() -> Path:
    root = os.environ.get("ALIGNKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "alignkit")
    return Path(root).expanduser() / "embeddings"


class EmbeddingCache:
    def __init__(self, root: Path, backbone_key: str):
        self.dir = Path(root) / hashlib.sha256(backbone_key.encode()).hexdigest()[:20]

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        path = self._path(digest)
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # absent, or a damaged entry: recompute it

    def put(self, entries: dict[str, np.ndarray]) -> None:
        for digest, vector in entries.items():
            path = self._path(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(vector, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)


def text_digest(prompt: str) -> str:
    return hashlib.sha256(("text\0" + prompt).encode()).hexdigest()


@torch.no_grad()
def embed_images(embedder: Embedder, paths: list[Path], hashes: list[str], cache: EmbeddingCache | None,
                 batch_size: int = 32, progress=None) -> tuple[np.ndarray, int]:
    """(N, D) embeddings of the files, in order, and how many were computed (not cached).
    Images of one size are batched together (no resize beyond the backbone's own)."""
    found = {h: cache.get(h) for h in hashes} if cache else {}
    todo = [i for i, h in enumerate(hashes) if found.get(h) is None]
    computed: dict[str, np.ndarray] = {}
    task = progress.add_task("embedding images", total=len(todo)) if progress and todo else None
    pending: dict[tuple, list[tuple[int, torch.Tensor]]] = defaultdict(list)

    def flush(shape: tuple) -> None:
        items = pending.pop(shape)
        batch = torch.stack([img for _, img in items])
        vectors = embedder.embed_images(batch).float().cpu().numpy()
        for (i, _), vector in zip(items, vectors):
            computed[hashes[i]] = vector
        if task is not None:
            progress.advance(task, len(items))

    for i in todo:
        image = load_image(paths[i])
        pending[tuple(image.shape)].append((i, image))
        if len(pending[tuple(image.shape)]) >= batch_size:
            flush(tuple(image.shape))
    for shape in list(pending):
        flush(shape)
    if cache and computed:
        cache.put(computed)
    found.update(computed)
    return np.stack([found[h] for h in hashes]).astype(np.float32), len(computed)


@torch.no_grad()
def embed_prompts(embedder: Embedder, prompts: list[str], cache: EmbeddingCache | None,
                  batch_size: int = 64) -> np.ndarray:
    """(N, D) text embeddings of the prompts (each distinct prompt computed once)."""
    unique = list(dict.fromkeys(prompts))
    found = {p: cache.get(text_digest(p)) for p in unique} if cache else {}
    todo = [p for p in unique if found.get(p) is None]
    computed = {}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        for prompt, vector in zip(chunk, embedder.embed_texts(chunk).float().cpu().numpy()):
            computed[prompt] = vector
    if cache and computed:
        cache.put({text_digest(p): v for p, v in computed.items()})
    found.update(computed)
    return np.stack([found[p] for p in prompts]).astype(np.float32)


def features(image_embeddings: np.ndarray, text_embeddings: np.ndarray | None) -> np.ndarray:
    """The head's input: the image embedding, or with a prompt [image, text, image * text]
    (the product lets a linear head score how well the image fits the prompt)."""
    if text_embeddings is None:
        return image_embeddings
    return np.concatenate([image_embeddings, text_embeddings, image_embeddings * text_embeddings], axis=1)


def features_torch(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor | None) -> torch.Tensor:
    """`features` in torch, differentiable in the image embeddings (the fitted reward's path)."""
    if text_embeddings is None:
        return image_embeddings
    return torch.cat([image_embeddings, text_embeddings, image_embeddings * text_embeddings], dim=1)
