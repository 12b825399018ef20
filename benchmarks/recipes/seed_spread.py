"""What a recipe does, over its training runs: `python benchmarks/recipes/seed_spread.py EVAL_DIR...`.

Each EVAL_DIR is an `alignkit eval` folder of one training run of the recipe (different
`--seed`s), all read on the same held-out prompts and seeds (the same base images; checked).
Prints, for the world's count (`pixel_count_correct`), each run's paired gain of its final
LoRA over the base with a 95% interval, then the gain of the runs' mean (per (prompt, seed), the
mean over runs of tuned minus base, paired over the samples) and the spread between runs. One
run's reading, even on fresh seeds, mixes the recipe's effect with its training run's luck;
on the toy's count that luck was as large as any gain read (docs/experiments, §8).
"""

import json
import statistics
import sys
from pathlib import Path

METRIC = "pixel_count_correct"


def read(folder: Path) -> tuple[dict, dict]:
    rows = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    pick = lambda cond: {(r["prompt"], r["seed"]): r[METRIC] for r in rows if r["condition"] == cond}  # noqa: E731
    return pick("base"), pick("final@1")


def interval(diffs: list[float]) -> tuple[float, float, float]:
    mean = statistics.mean(diffs)
    half = 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def main(folders: list[str]) -> None:
    if not folders:
        sys.exit("usage: seed_spread.py EVAL_DIR... (alignkit eval folders of one recipe's runs)")
    runs = [read(Path(f)) for f in folders]
    base = runs[0][0]
    if any(b != base for b, _ in runs) or any(set(t) != set(base) for _, t in runs):
        sys.exit("error: the folders were not read on the same prompts and seeds (their base images differ)")
    keys = sorted(base)
    gains = []
    for folder, (_, tuned) in zip(folders, runs):
        mean, lo, hi = interval([tuned[k] - base[k] for k in keys])
        gains.append(mean)
        print(f"{folder}: {len(keys)} samples, {100 * statistics.mean(base.values()):.1f}% -> "
              f"{100 * statistics.mean(tuned.values()):.1f}%, {100 * mean:+.1f} points ({100 * lo:+.1f} to {100 * hi:+.1f})")
    if len(runs) > 1:
        mean, lo, hi = interval([statistics.mean(t[k] for _, t in runs) - base[k] for k in keys])
        print(f"mean of the {len(runs)} runs' LoRAs: {100 * mean:+.1f} points ({100 * lo:+.1f} to {100 * hi:+.1f}); "
              f"sd between runs {100 * statistics.stdev(gains):.1f} points")


if __name__ == "__main__":
    main(sys.argv[1:])
