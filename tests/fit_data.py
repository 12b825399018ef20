"""Data for `alignkit reward fit` tests: seeded images, a tiny CLIP backbone, and rows whose
scores are a known function of that backbone's embeddings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from alignkit.images import save_image

# A tiny CLIP's projection width: the features the heads read.
DIM = 16


def save_images(folder: Path, n: int, seed: int = 0, size: int = 32, prefix: str = "img") -> list[str]:
    """n seeded images (random colours and textures), as PNG files; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * torch.rand(n, 3, 1, 1, generator=g)
    names = []
    for i in range(n):
        names.append(f"{prefix}{i}.png")
        save_image(images[i], folder / names[-1])
    return names


def tiny_backbone(folder: Path) -> Path:
    from tiny_models import save_tiny_clip

    return save_tiny_clip(folder, projection_dim=DIM)


def embeddings(backbone: Path, folder: Path, names: list[str]) -> np.ndarray:
    """The backbone's unit-norm image embeddings of the files, as the fit computes them."""
    from alignkit.images import load_image
    from alignkit.rewards.fit.backbones import load_backbone

    embedder = load_backbone(str(backbone))
    with torch.no_grad():
        return embedder.embed_images(torch.stack([load_image(folder / n) for n in names])).numpy()


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Rows as CSV (header from the first row) or JSONL, by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
