"""`grid.png` (base vs tuned, same seeds) and `curves.png` (metrics against step and scale)."""

from __future__ import annotations

from pathlib import Path

from alignkit.evaluation.evaluate import EvalResult
from alignkit.evaluation.report import metric_order

# A grid of every prompt and seed would be unreadable on a big run: cap it.
GRID_PROMPTS, GRID_SEEDS = 12, 4


def _pyplot():
    import matplotlib

    # Headless: no display on training machines.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tuned_label(result: EvalResult) -> str:
    """The tuned condition shown against the base: the final LoRA at scale 1."""
    return next(c.label for c in result.conditions if c.checkpoint is result.source.final and c.scale == 1.0)


def plot_grid(result: EvalResult, path: Path) -> None:
    """A row per prompt: its base images, then the tuned images of the same seeds."""
    plt = _pyplot()
    tuned = tuned_label(result)
    prompts, seeds = result.prompts[:GRID_PROMPTS], result.seeds[:GRID_SEEDS]
    images = {(r.condition.label, r.prompt, r.seed): r.image for r in result.records}
    cols = 2 * len(seeds)
    fig, axes = plt.subplots(len(prompts), cols, figsize=(1.6 * cols, 2.0 * len(prompts)), squeeze=False)
    for row, prompt in enumerate(prompts):
        for col in range(cols):
            label = "base" if col < len(seeds) else tuned
            seed = seeds[col % len(seeds)]
            ax = axes[row][col]
            ax.imshow(images[(label, prompt, seed)].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label} s{seed}", fontsize=7)
        axes[row][0].set_ylabel(prompt[:28], fontsize=7)
    fig.suptitle(f"base vs {tuned} (same seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(result: EvalResult, path: Path) -> None:
    """One row per metric: against training step (left), against LoRA scale (right)."""
    plt = _pyplot()
    names = [n for n in metric_order(result) if result.kinds[n] != "drift" or n == "drift/mse"]
    final = result.source.final
    # Left: base at step 0, every checkpoint and the final LoRA at scale 1.
    by_step = [c for c in result.conditions if c.checkpoint is None or c.scale == 1.0]
    # Right: the final LoRA across scales, with the base at scale 0 for reference.
    by_scale = [c for c in result.conditions if c.checkpoint is final]
    flagged = {f.condition for f in result.flags}
    fig, axes = plt.subplots(len(names), 2, figsize=(9, 2.2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for col, (conds, axis_name) in enumerate(((by_step, "step"), (by_scale, "scale"))):
            ax = axes[row][col]
            xs = [(c.step or 0) if axis_name == "step" else c.scale for c in conds]
            stats = [result.stats[c.label].get(name) for c in conds]
            points = [(x, s, c) for x, s, c in zip(xs, stats, conds) if s is not None]
            if points:
                ax.errorbar([p[0] for p in points], [p[1].mean for p in points],
                            yerr=[p[1].std / max(p[1].n, 1) ** 0.5 for p in points], marker="o", capsize=2)
                for x, s, c in points:
                    if c.label in flagged:
                        ax.plot([x], [s.mean], "rx", markersize=10)
                    if c.label == result.pick.condition:
                        ax.plot([x], [s.mean], "g*", markersize=12)
            if name == "reward" and axis_name == "step" and result.source.train_log:
                # The training log's own reward, for comparison with the held-out prompts.
                log = [(row_["step"], row_["reward"]) for row_ in result.source.train_log
                       if isinstance(row_.get("step"), (int, float)) and isinstance(row_.get("reward"), (int, float))]
                if log:
                    # Its own axis: training prompts and batches, not the held-out eval prompts.
                    twin = ax.twinx()
                    twin.plot(*zip(*log), color="gray", alpha=0.4, linewidth=1)
                    twin.set_ylabel("training log reward", fontsize=6, color="gray")
                    twin.tick_params(labelsize=6, colors="gray")
            ax.set_title(f"{name} ({result.kinds[name]})", fontsize=8)
            ax.set_xlabel("training step" if axis_name == "step" else "LoRA scale (final)", fontsize=7)
            ax.tick_params(labelsize=7)
    fig.suptitle("mean ± s.e.m.; red x: flagged, green *: kept", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
