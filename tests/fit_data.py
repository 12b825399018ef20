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


BAD_PLUGIN = '''
def wrong_shape():
    return lambda images, prompts: images.mean(dim=(1, 2))


def nograd():
    return lambda images, prompts: (images > 0.5).float().mean(dim=(1, 2, 3))


def fails():
    raise RuntimeError("no weights here")
'''


def write_bad_fit_inputs(root: Path) -> Path:
    """root/fit: the data files of every bad input to `alignkit reward fit`, a previous fit,
    a fitted folder whose backbone is nowhere, and a module of broken reward factories."""
    from safetensors.torch import save_file

    fit = root / "fit"
    names = save_images(fit / "images", 12, seed=5)
    img = [f"images/{n}" for n in names]
    (fit / "images" / "same.png").write_bytes((fit / "images" / names[0]).read_bytes())

    def ratings(scores, images=img):
        return [{"image": i, "score": s} for i, s in zip(images, scores)]

    write_rows(fit / "ok.csv", ratings(range(12)))
    write_rows(fit / "labels.jsonl", [{"image": i, "label": "good" if k % 2 else "bad"} for k, i in enumerate(img)])
    write_rows(fit / "missing_image.csv", ratings(range(12), img[:11] + ["images/nowhere.png"]))
    write_rows(fit / "unreadable.csv", ratings(range(12), img[:11] + ["../notimage.png"]))
    write_rows(fit / "no_score.csv", ratings([1, ""] + list(range(10))))
    write_rows(fit / "few.csv", ratings(range(4)))
    write_rows(fit / "constant.csv", ratings([3.5] * 12))
    write_rows(fit / "nan.csv", ratings(list(range(11)) + ["nan"]))
    write_rows(fit / "inf.csv", ratings(list(range(11)) + ["inf"]))
    write_rows(fit / "one_class.jsonl", [{"image": i, "label": "good"} for i in img])
    write_rows(fit / "unknown_columns.csv", [{"image": i, "rating": k} for k, i in enumerate(img)])
    pairs = [{"prompt": "a cat", "chosen": img[k], "rejected": img[k + 1]} for k in range(11)]
    write_rows(fit / "same_pair.jsonl", pairs + [{"prompt": "a cat", "chosen": img[3], "rejected": img[3]}])
    write_rows(fit / "same_content_pair.jsonl", pairs + [{"prompt": "a cat", "chosen": img[0], "rejected": "images/same.png"}])
    (fit / "notjson.jsonl").write_text('{"image": "images/img0.png", "score": 1}\n{"image": oops}\n')

    (fit / "prev_fit").mkdir()
    (fit / "prev_fit" / "reward.json").write_text('{"format": "alignkit.fitted_reward"}\n')
    bad = fit / "fitted_bad_backbone"
    bad.mkdir()
    (bad / "reward.json").write_text(json.dumps({
        "format": "alignkit.fitted_reward", "version": 1,
        "backbone": {"spec": str(root / "noclip"), "revision": "unknown"},
        "head": {"kind": "linear", "sizes": [DIM, 1], "output": "identity", "with_prompt": False}}))
    save_file({"layers.0.weight": torch.zeros(1, DIM), "layers.0.bias": torch.zeros(1)}, str(bad / "reward.safetensors"))
    (fit / "ak_badplug.py").write_text(BAD_PLUGIN)
    return fit
