"""`alignkit reward fit DATA --out DIR`: data -> embeddings -> heads by cross-validation ->
a saved, differentiable reward and its report.

The order is the order in which a user would want to hear about problems: the output folder
and every data row and image file are checked before any model loads, and nothing is written
to DIR until the whole fit succeeded (it is built in a temporary sibling folder and renamed
into place).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignkit.errors import AlignkitError
from alignkit.rewards.fit import crossval
from alignkit.rewards.fit.backbones import DEFAULT_BACKBONE, load_backbone
from alignkit.rewards.fit.data import Dataset, check_folds, read_dataset
from alignkit.rewards.fit.embed import EmbeddingCache, default_cache_dir, embed_images, embed_prompts, features
from alignkit.rewards.fit.heads import HEADS, Head, Problem, head_module
from alignkit.rewards.fitted import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, FittedReward

REPORT_FILE = "report.json"
PLOT_FILE = "fit.png"
# The shipped reward whose hackability is shown beside the fitted one's, by backbone.
COMPARE_DEFAULTS = {DEFAULT_BACKBONE: "aesthetic"}


@dataclass
class FitConfig:
    data: Path
    out: Path
    # ratings | pairs | labels; None: detected from the file's columns.
    kind: str | None = None
    # A backbone spec (see rewards/fit/backbones.py); None: openai/clip-vit-large-patch14.
    backbone: str | None = None
    # Also feed the prompt's text embedding to the head (image, text, image * text).
    with_prompt: bool = False
    # labels: the class the reward prefers (its log-probability is the reward).
    positive: str | None = None
    overwrite: bool = False
    folds: int = 5
    heads: tuple[str, ...] = ("linear", "mlp")
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 32
    # Embedding cache; None: $ALIGNKIT_CACHE/embeddings or ~/.cache/alignkit/embeddings.
    cache_dir: Path | None = None
    no_cache: bool = False
    # A reward spec to attack beside the fitted one; "auto": by backbone; "none": skip.
    compare_reward: str = "auto"
    # Held-out images attacked for the hackability figure.
    hack_images: int = 16
    command: str = ""
    warnings: list[str] = field(default_factory=list)


def check_output(out: Path, overwrite: bool) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AlignkitError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a previous fit" if (out / CONFIG_FILE).exists() else "files"
        raise AlignkitError(f"--out {out} already holds {what}; pass --overwrite to replace it, or choose another folder")


def fit_reward(config: FitConfig, console=None) -> dict:
    from rich.console import Console
    from rich.progress import Progress

    console = console or Console(stderr=True)
    started = time.time()
    if config.folds < 2:
        raise AlignkitError(f"--folds must be at least 2, got {config.folds}")
    unknown = [h for h in config.heads if h not in HEADS]
    if unknown or not config.heads:
        raise AlignkitError(f"--heads: unknown head {unknown[0] if unknown else '(none)'}; choose from {', '.join(HEADS)}")
    check_output(config.out, config.overwrite)
    data = read_dataset(config.data, config.kind, config.positive)
    check_folds(data, config.folds)
    if data.duplicates:
        warn(config, console, f"{data.duplicates} rows repeat an image already in the data (same bytes); "
                              "cross-validation splits by image, so no image is on both sides of a split")
    if config.with_prompt and not any(data.prompts):
        raise AlignkitError(f"--with-prompt: {data.source} has no 'prompt' column values")

    embedder = load_backbone(config.backbone, with_text=config.with_prompt, device=config.device)
    cache = None if config.no_cache else EmbeddingCache(config.cache_dir or default_cache_dir(), embedder.key)
    with Progress(console=console, transient=True) as progress:
        z, computed = embed_images(embedder, data.paths, data.hashes, cache, config.batch_size, progress)
        t = embed_prompts(embedder, data.prompts, cache) if config.with_prompt else None
    console.print(f"embeddings: {len(data.paths)} images, {computed} computed, {len(data.paths) - computed} from the cache")
    problem = make_problem(data, z, t)

    splits = crossval.fold_splits(problem, config.folds, config.seed)
    results = {}
    with Progress(console=console, transient=True) as progress:
        for head in config.heads:
            task = progress.add_task(f"cross-validating {head}", total=config.folds)
            results[head] = crossval.cross_validate(problem, head, splits, config.seed,
                                                    lambda task=task: progress.advance(task))
        chosen = max(results, key=lambda h: results[h].primary(data.kind))
        task = progress.add_task(f"learning curve ({chosen})", total=len(crossval.FRACTIONS) * config.folds)
        curve = crossval.learning_curve(problem, chosen, splits, config.seed, lambda: progress.advance(task))
        final = HEADS[chosen](problem, seed=config.seed)

    hack = hackability(config, data, embedder, results[chosen].fold_heads[0], splits[0][1], console)
    report = {
        "data": {"file": str(Path(config.data).resolve()), "kind": data.kind, "rows": len(data),
                 "images": len(data.paths), "duplicate_rows": data.duplicates, "sha256": data.digest,
                 "classes": data.classes or None},
        "backbone": embedder.describe(),
        "embeddings": {"images": len(data.paths), "computed": computed, "cache": None if cache is None else str(cache.dir)},
        "folds": config.folds, "primary": crossval.PRIMARY[data.kind], "chosen": chosen,
        "heads": {h: r.summary() for h, r in results.items()},
        "per_fold": {h: r.per_fold for h, r in results.items()},
        "learning_curve": curve, "calibration": crossval.calibration(problem, results[chosen].oof),
        "hackability": hack, "warnings": config.warnings, "seconds": round(time.time() - started, 1),
        "command": config.command,
    }
    write_outputs(config, data, embedder, final, report)
    from alignkit.rewards.fit.report import print_report

    print_report(report, console)
    console.print(f"wrote {config.out}/{{{WEIGHTS_FILE}, {CONFIG_FILE}, {REPORT_FILE}, {PLOT_FILE}}}; "
                  f"use it with --reward fitted:path={config.out}")
    return report


def warn(config: FitConfig, console, message: str) -> None:
    config.warnings.append(message)
    console.print(f"[yellow]warning:[/] {message}", highlight=False)


def make_problem(data: Dataset, z: np.ndarray, t: np.ndarray | None) -> Problem:
    """Features per row from the per-image (and per-row prompt) embeddings."""
    groups = data.groups()
    if data.kind == "pairs":
        return Problem("pairs", features(z[data.images[:, 0]], t), np.ones(len(data)), groups,
                       features(z[data.images[:, 1]], t), pair_images=data.images)
    return Problem(data.kind, features(z[data.images[:, 0]], t), data.targets, groups,
                   n_classes=len(data.classes))


def held_out_images(data: Dataset, rows: np.ndarray, limit: int) -> tuple[torch.Tensor, list[str]] | None:
    """Up to `limit` distinct held-out images of the most common size, with a prompt each."""
    from collections import Counter

    from alignkit.images import load_image

    seen, picks = set(), []
    for row in rows:
        for image in data.images[row]:
            if image not in seen:
                seen.add(int(image))
                picks.append((int(image), data.prompts[row]))
    loaded = [(load_image(data.paths[i]), prompt) for i, prompt in picks[:4 * limit]]
    if len(loaded) < 2:
        return None
    shape = Counter(tuple(img.shape) for img, _ in loaded).most_common(1)[0][0]
    same = [(img, p) for img, p in loaded if tuple(img.shape) == shape][:limit]
    return torch.stack([img for img, _ in same]), [p for _, p in same]


def hackability(config: FitConfig, data: Dataset, embedder, fold_head: Head, held_rows: np.ndarray, console) -> dict:
    """PGD on the images of the first fold's validation split: against the head fitted without
    them, and against a shipped reward on the same images."""
    from alignkit.rewards.fit.hack import pgd_gain

    picked = held_out_images(data, held_rows, config.hack_images)
    if picked is None:
        return {"fitted": {"skipped": "fewer than 2 held-out images"}}
    images, prompts = picked
    images = images.to(config.device)
    reward = FittedReward(embedder, head_module(fold_head).to(config.device), config.with_prompt).freeze()
    out = {"fitted": pgd_gain(reward, images, prompts)}
    spec = config.compare_reward
    if spec == "auto":
        spec = COMPARE_DEFAULTS.get(config.backbone or DEFAULT_BACKBONE)
        if spec is None and (config.backbone or "").startswith("reward:"):
            spec = config.backbone.partition(":")[2]
    if spec and spec != "none":
        from alignkit.rewards import load_reward

        try:
            shipped = load_reward(spec, device=config.device)
            out[spec] = pgd_gain(shipped, images, prompts)
        except AlignkitError as exc:
            out[spec] = {"skipped": str(exc)}
            warn(config, console, f"hackability beside '{spec}' skipped: {exc}")
    return out


def write_outputs(config: FitConfig, data: Dataset, embedder, head: Head, report: dict) -> None:
    """Everything into a temporary sibling folder, then renamed into place."""
    from safetensors.torch import save_file

    from alignkit import __version__
    from alignkit.rewards.fit.report import plot_report

    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(head.state_dict(), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        reward_json = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "backbone": embedder.describe(),
            "head": {"kind": head.kind, "sizes": head.sizes, "activation": "relu", "output": head.output,
                     "with_prompt": config.with_prompt, "data_kind": data.kind,
                     "classes": data.classes or None, "positive": data.classes[-1] if data.classes else None,
                     "score": SCORE_MEANING[data.kind]},
            "data": report["data"],
            "metrics": report["heads"][report["chosen"]],
            "hackability": report["hackability"],
            "alignkit": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(_finite(reward_json), indent=2, default=_jsonable) + "\n")
        (tmp / REPORT_FILE).write_text(json.dumps(_finite(report), indent=2, default=_jsonable) + "\n")
        plot_report(report, tmp / PLOT_FILE)
        stale = None
        if out.exists():
            stale = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, stale)
        os.replace(tmp, out)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SCORE_MEANING = {
    "ratings": "the predicted rating, in the data's units",
    "pairs": "a Bradley-Terry utility: P(a preferred to b) = sigmoid(r(a) - r(b))",
    "labels": "the log-probability of the wanted class",
}


def _finite(value):
    """NaN and infinities as null: strict JSON has no literal for them (a one-fold spread, an
    AUC on a one-class fold)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def command_line() -> str:
    return " ".join(["alignkit", *sys.argv[1:]])
