"""A reward fitted from data, end to end on the embedded toy world: "larger objects".

The toy prompts fix the number, shape and colour of the objects but not their size, so object
size is a preference the prompts do not control. This script

  label    draws base-model samples on the toy_counting training prompts (the training sampler:
           20 DDIM steps, eta 1, guidance 7.5) and rates each by a measurement of its pixels,
           the mean object area read by the world's own rules (alignkit.toy.counter), never by
           a model: ratings.csv for `alignkit reward fit`;
  measure  reads an `alignkit eval` folder and reports the same measurement on the base and
           tuned images of the same prompts and seeds: mean object area and the share of images
           whose objects are larger than the base samples' median, with 95% intervals of the
           paired gain.

    python benchmarks/toy_fitted_reward.py label --n 640 --out runs/toy-size/data
    alignkit reward fit runs/toy-size/data/ratings.csv --backbone reward:toy_clip --out runs/toy-size/reward
    alignkit train --reward fitted:path=runs/toy-size/reward --output-dir runs/toy-size/run
    alignkit eval runs/toy-size/run --seeds 4 --scales 1
    python benchmarks/toy_fitted_reward.py measure runs/toy-size/run/eval --data runs/toy-size/data
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch


def object_area(reading, image_area: int) -> float:
    """Mean area of the objects, in percent of the image (0 when none is drawn)."""
    if not reading.regions:
        return 0.0
    return 100.0 * float(np.mean([r.area for r in reading.regions])) / image_area


def label(n: int, out: Path, batch: int, seed: int) -> None:
    from diffusers import StableDiffusionPipeline

    from alignkit import toy
    from alignkit.images import save_image
    from alignkit.toy.counter import read_images
    from alignkit.toy.prompts import toy_counting

    prompts = toy_counting().train
    pipe = StableDiffusionPipeline.from_pretrained(str(toy.pipeline_path()), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, n, batch):
        texts = [prompts[(start + i) % len(prompts)] for i in range(min(batch, n - start))]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(texts))]
        images = pipe(texts, num_inference_steps=20, guidance_scale=7.5, eta=1.0, generator=generators,
                      output_type="pt").images
        for i, (image, reading) in enumerate(zip(images, read_images(images))):
            name = f"images/{start + i:05d}.png"
            save_image(image, out / name)
            rows.append({"image": name, "score": round(object_area(reading, image.shape[1] * image.shape[2]), 4),
                         "prompt": texts[i]})
        print(f"{len(rows)}/{n}", flush=True)
    import csv

    with open(out / "ratings.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "score", "prompt"])
        writer.writeheader()
        writer.writerows(rows)
    scores = np.array([r["score"] for r in rows])
    meta = {"n": n, "seed": seed, "median_area": float(np.median(scores)), "mean_area": float(scores.mean()),
            "sampler": {"num_inference_steps": 20, "guidance_scale": 7.5, "eta": 1.0},
            "measurement": "mean object area, % of the image, by alignkit.toy.counter"}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta))


def interval(diffs: np.ndarray) -> tuple[float, float, float]:
    """Mean of paired differences and its 95% t-interval (normal quantile: n is large)."""
    mean = float(diffs.mean())
    half = 1.96 * float(diffs.std(ddof=1)) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def measure(eval_dir: Path, data: Path, tuned: str) -> dict:
    from alignkit.images import load_image
    from alignkit.toy.counter import read_images

    threshold = json.loads((data / "meta.json").read_text())["median_area"]
    rows = [json.loads(line) for line in (eval_dir / "scores.jsonl").read_text().splitlines()]

    def condition(row) -> str:
        return "base" if row["checkpoint"] == "base" else f"{row['checkpoint']}@{row['scale']:g}"

    by_key: dict[str, dict] = {}
    for row in rows:
        by_key.setdefault(condition(row), {})[(row["prompt"], row["seed"])] = row
    base, after = by_key["base"], by_key[tuned]
    keys = sorted(set(base) & set(after))

    def read(side):
        images = torch.stack([load_image(eval_dir / side[k]["image"]) for k in keys])
        readings = read_images(images)
        return (np.array([object_area(r, images.shape[2] * images.shape[3]) for r in readings]),
                np.array([float(r.ambiguous) for r in readings]))

    (a0, doubt0), (a1, doubt1) = read(base), read(after)
    large0, large1 = (a0 > threshold).astype(float), (a1 > threshold).astype(float)
    report = {"samples": len(keys), "tuned": tuned, "threshold_area": threshold,
              "area_base": float(a0.mean()), "area_tuned": float(a1.mean()),
              "area_gain_ci95": interval(a1 - a0),
              "larger_share_base": float(large0.mean()), "larger_share_tuned": float(large1.mean()),
              "larger_share_gain_ci95": interval(large1 - large0),
              # Images the world's rules cannot read cleanly (objects run together, stray blots):
              # there the "object area" is the area of whatever blotch the reader found.
              "ambiguous_share_base": float(doubt0.mean()), "ambiguous_share_tuned": float(doubt1.mean())}
    # toy_clip is a held-out column, or a part of the trained reward ("reward/toy_clip").
    for column in ("pixel_count_correct", "pixel_colour_correct", "pixel_shape_correct", "reward", "toy_clip",
                   "reward/toy_clip", "reward/fitted:path=" + str(data.parent / "reward")):
        if column in rows[0]:
            v0 = np.array([float(base[k][column]) for k in keys])
            v1 = np.array([float(after[k][column]) for k in keys])
            report[column] = {"base": float(v0.mean()), "tuned": float(v1.mean()), "gain_ci95": interval(v1 - v0)}
    (eval_dir / f"object_size_{tuned}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("label")
    p.add_argument("--n", type=int, default=640)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=1000)
    p = sub.add_parser("measure")
    p.add_argument("eval_dir", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--tuned", default="final@1")
    args = parser.parse_args()
    if args.command == "label":
        label(args.n, args.out, args.batch, args.seed)
    else:
        measure(args.eval_dir, args.data, args.tuned)


if __name__ == "__main__":
    main()
