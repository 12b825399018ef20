"""Scoring image files with a reward: what `alignkit score` runs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from alignkit.errors import AlignkitError, read_text
from alignkit.images import load_image
from alignkit.rewards.registry import get_entry
from alignkit.rewards.spec import load_reward, parse_spec


def read_prompts(n_images: int, prompt: str | None, prompts_file: Path | None) -> list[str]:
    if (prompt is None) == (prompts_file is None):
        raise AlignkitError("give exactly one of --prompt TEXT or --prompts-file FILE")
    if prompt is not None:
        return [prompt] * n_images
    lines = [line.strip() for line in read_text(prompts_file, "--prompts-file").splitlines() if line.strip()]
    if len(lines) != n_images:
        raise AlignkitError(f"{prompts_file} has {len(lines)} prompts for {n_images} images; give one per image")
    return lines


@torch.no_grad()
def score_files(spec: str, paths: list[Path], prompts: list[str], device: str, batch_size: int,
                overrides: dict) -> list[dict]:
    """Score each file; images of the same size are batched together."""
    for name, _ in parse_spec(spec):
        get_entry(name)  # a bad spec fails before any file is read
    images = [load_image(p) for p in paths]  # every file is read before any model loads
    reward = load_reward(spec, device=device, **overrides)
    by_size: dict[tuple, list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        by_size[tuple(img.shape)].append(i)
    rows: list[dict | None] = [None] * len(images)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch = torch.stack([images[i] for i in chunk]).to(device)
            texts = [prompts[i] for i in chunk]
            total, parts = reward.with_parts(batch, texts)
            targets = reward.targets(batch, texts)
            for j, i in enumerate(chunk):
                row = {"image": str(paths[i]), "prompt": prompts[i], "reward": float(total[j])}
                if len(parts) > 1 or next(iter(parts)) != reward.name:
                    row.update({name: float(v[j]) for name, v in parts.items()})
                row.update({name: float(v[j]) for name, v in targets.items()})
                rows[i] = row
    return rows
