"""The evaluation's outputs: a rich table, `scores.jsonl`, `summary.json`."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table

from alignkit.evaluation.evaluate import EvalResult

# Column order in the table and in summary.json.
KIND_ORDER = ("trained reward", "reward part", "held-out reward", "true target", "proxy target", "diversity", "drift")


def metric_order(result: EvalResult) -> list[str]:
    present = {name for stats in result.stats.values() for name in stats}
    ordered = sorted((n for n in result.kinds if n in present),
                     key=lambda n: (KIND_ORDER.index(result.kinds[n]), n))
    return ordered


def write_scores(result: EvalResult, path: Path) -> None:
    """One JSON line per image: where it came from, every score, its PNG."""
    with _atomic(path) as handle:
        for r in result.records:
            c = r.condition
            row = {"prompt": r.prompt, "seed": r.seed, "condition": c.label,
                   "checkpoint": c.checkpoint.label if c.checkpoint else "base",
                   "step": c.step, "scale": c.scale, "image": result.image_paths[r.key]}
            row.update(r.scores)
            handle.write(json.dumps(row) + "\n")


def write_summary(result: EvalResult, path: Path) -> dict:
    import diffusers
    import torch

    import alignkit

    flagged = {}
    for flag in result.flags:
        flagged.setdefault(flag.condition, []).append(flag.as_dict())
    summary = {
        "command": result.config.command,
        "versions": {"alignkit": alignkit.__version__, "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "python": platform.python_version()},
        "source": str(result.source.root),
        "model": result.source.model,
        "reward": result.reward_spec,
        "settings": result.settings.key(),
        "prompts": result.prompts,
        "seeds": result.seeds,
        "embedder": result.embedder,
        "tolerance": {"std": result.config.tolerance, "relative": result.config.rel_tolerance},
        "metrics": {name: result.kinds[name] for name in metric_order(result)},
        "watched": [{"metric": w.metric, "direction": w.direction, "kind": w.kind} for w in result.watches],
        "conditions": [
            {"label": c.label, "checkpoint": c.checkpoint.label if c.checkpoint else "base",
             "step": c.step, "scale": c.scale,
             "stats": {name: result.stats[c.label][name].as_dict() for name in metric_order(result)
                       if name in result.stats[c.label]},
             "flags": flagged.get(c.label, [])}
            for c in result.conditions
        ],
        "judges": result.judges,
        "gains": {label: {name: g.as_dict() for name, g in gains.items()} for label, gains in result.gains.items()},
        "flags": [f.as_dict() for f in result.flags],
        "pick": result.pick.as_dict(),
        "notes": result.notes,
    }
    with _atomic(path) as handle:
        json.dump(summary, handle, indent=2)
    return summary


def print_table(result: EvalResult, console: Console | None = None) -> None:
    console = console or Console()
    names = metric_order(result)
    flagged = {f.condition for f in result.flags}
    n = len(result.prompts) * len(result.seeds)
    table = Table(title=f"alignkit eval: {result.source.root} (reward {result.reward_spec})",
                  caption=f"means over {n} images ({len(result.prompts)} prompts x {len(result.seeds)} seeds); "
                          "std and n in summary.json")
    # Labels stay whole on a narrow terminal; the numbers fold instead.
    table.add_column("condition", no_wrap=True, min_width=max(len(c.label) for c in result.conditions))
    table.add_column("step", justify="right")
    table.add_column("scale", justify="right")
    for name in names:
        # Numbers never break; a long header folds instead (min_width = the widest number).
        widest = max(len(f"{result.stats[c][name].mean:.4g}") for c in result.stats if name in result.stats[c])
        table.add_column(name, justify="right", overflow="fold", min_width=widest)
    table.add_column("flag")
    for c in result.conditions:
        stats = result.stats[c.label]
        # Means only, so that a column a metric fits a terminal; the spread is in summary.json.
        cells = [f"{stats[name].mean:.4g}" if name in stats else "-" for name in names]
        # The pick is never a flagged candidate (see overopt.py).
        mark = "[red]over-opt[/]" if c.label in flagged else ("[green]pick[/]" if c.label == result.pick.condition else "")
        table.add_row(c.label, "-" if c.step is None else str(c.step), f"{c.scale:g}", *cells, mark)
    console.print(table)
    for line in gain_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    for flag in result.flags:
        console.print(f"[red]flag[/] {flag.message}", highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"[bold]{result.pick.reason}[/]", highlight=False, soft_wrap=True)


def gain_lines(result: EvalResult) -> list[str]:
    """The gains that decide whether alignment worked: the independent true targets that stand
    for the trained reward, for the final LoRA and the pick, with 95% intervals."""
    if not result.confirms:
        return []
    final = next((c.label for c in reversed(result.conditions) if c.checkpoint is not None and c.scale == 1), None)
    lines = []
    for label in dict.fromkeys(x for x in (final, result.pick.condition) if x and x != "base"):
        for metric in result.confirms:
            gain = result.gains.get(label, {}).get(metric)
            if gain is None:
                continue
            base, cur = result.stats["base"][metric].mean, result.stats[label][metric].mean
            binary = all(v in (0.0, 1.0) for v in _values(result, metric))
            if binary:  # an accuracy: say it in percentage points
                text = f"{100 * base:.1f}% -> {100 * cur:.1f}%, {gain.text(100, ' points')}"
            else:
                text = f"{base:.4g} -> {cur:.4g}, {gain.text()}"
            lines.append(f"[bold]true target[/] {metric} ({result.kinds.get(metric, '')}), base -> {label}: {text}")
    return lines


def _values(result: EvalResult, metric: str) -> list[float]:
    return [r.scores[metric] for r in result.records if metric in r.scores]


class _atomic:
    """Write to a temporary file, then rename: a crash never leaves a half-written report."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")

    def __enter__(self):
        self.handle = open(self.tmp, "w")
        return self.handle

    def __exit__(self, exc_type, *_):
        self.handle.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
