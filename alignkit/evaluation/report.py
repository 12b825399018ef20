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
    """The report for a terminal, readable at 80 columns.

    Metrics are rows and conditions columns, so that a metric's name is printed whole once
    however many held-out rewards and judges there are; columns that do not fit the console go
    to a further table (the base column repeated in each), never squeezed into `…`. Then the
    paired gains with their 95% intervals, the flags and notes, and the verdict on its own line.
    """
    console = console or Console()
    names = metric_order(result)
    n = len(result.prompts) * len(result.seeds)
    console.print(f"[bold]alignkit eval[/] {result.source.root}, reward {result.reward_spec}", highlight=False)
    console.print(legend(result, n), highlight=False)
    for table in means_tables(result, names, console.width):
        console.print(table)
    gains = gains_table(result, names)
    if gains is not None:
        console.print(gains)
    for flag in result.flags:
        console.print(f"[red]flag[/] {flag.message}", highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note[/] {note}", highlight=False)
    console.print(f"[bold]verdict: {result.pick.reason}[/]", highlight=False)


def short_label(label: str) -> str:
    """A condition's column header: `checkpoint-200@1` is `200@1`; `base` and `final@S` stay."""
    return label.removeprefix("checkpoint-")


def legend(result: EvalResult, n: int) -> str:
    checkpoints = [c.label for c in result.conditions if c.checkpoint is not None and c.checkpoint.label != "final"]
    parts = ["columns: base = LoRA off"]
    if checkpoints:
        parts.append(f"STEP@SCALE = checkpoint-STEP at LoRA scale SCALE ({', '.join(dict.fromkeys(checkpoints))})")
    if any(c.checkpoint is not None and c.checkpoint.label == "final" for c in result.conditions):
        parts.append("final@SCALE = the final LoRA at that scale")
    return (f"{'; '.join(parts)}. Means over {n} images ({len(result.prompts)} prompts x "
            f"{len(result.seeds)} seeds); std and n in summary.json.")


# A table's outer border, and each column's padding and separator, in characters.
_EDGE, _PER_COLUMN = 1, 3


def means_tables(result: EvalResult, names: list[str], width: int) -> list[Table]:
    """The means, one row per metric grouped by kind, one column per condition; split into
    several tables (each repeating `base`) when the conditions do not fit `width`."""
    flagged = {f.condition for f in result.flags}
    cells = {c.label: [f"{result.stats[c.label][name].mean:.4g}" if name in result.stats[c.label] else "-"
                       for name in names] for c in result.conditions}
    # The pick is never a flagged candidate (see overopt.py).
    verdicts = {c.label: "flagged" if c.label in flagged else ("pick" if c.label == result.pick.condition else "")
                for c in result.conditions}
    widths = {label: max(len(short_label(label)), len(verdicts[label]), *(len(x) for x in column))
              for label, column in cells.items()}
    first = max([len("metric"), *(len(x) for x in names), *(len(result.kinds[x]) for x in names)])

    labels = [c.label for c in result.conditions]
    base, others = labels[0], labels[1:]
    room = width - _EDGE - (first + _PER_COLUMN) - (widths[base] + _PER_COLUMN)
    chunks = _split(others, [widths[x] + _PER_COLUMN for x in others], room)

    tables = []
    for chunk in chunks:
        columns = [base, *chunk]
        table = Table(show_edge=True, pad_edge=True)
        # Nothing folds: the tables are cut to fit, so no cell has to be squeezed.
        table.add_column("metric", no_wrap=True, min_width=first)
        for label in columns:
            table.add_column(short_label(label), justify="right", no_wrap=True, min_width=widths[label])
        kind = None
        for i, name in enumerate(names):
            if result.kinds[name] != kind:
                kind = result.kinds[name]
                table.add_row(f"[dim italic]{kind}[/]", *([""] * len(columns)))
            table.add_row(name, *(cells[label][i] for label in columns))
        marks = {"flagged": "[red]flagged[/]", "pick": "[green]pick[/]", "": ""}
        table.add_row("[bold]verdict[/]", *(marks[verdicts[label]] for label in columns), end_section=True)
        tables.append(table)
    return tables


def _split(labels: list[str], costs: list[int], room: int) -> list[list[str]]:
    """Consecutive groups of columns that each fit `room`: as few groups as filling them one by
    one gives, then evened out (9 columns as 5 + 4, not 8 + 1) when even groups fit too."""
    greedy, current, used = [], [], 0
    for label, cost in zip(labels, costs):
        if current and used + cost > room:
            greedy.append(current)
            current, used = [], 0
        current.append(label)
        used += cost
    greedy.append(current)
    size = -(-len(labels) // len(greedy))
    even = [list(range(i, min(i + size, len(labels)))) for i in range(0, len(labels), size)] or [[]]
    if len(even) == len(greedy) and all(sum(costs[i] for i in group) <= room for group in even):
        return [[labels[i] for i in group] for group in even]
    return greedy


def gains_table(result: EvalResult, names: list[str]) -> Table | None:
    """Paired gains over the base images, with 95% intervals, for the final LoRA at scale 1 and
    the pick; accuracies (0/1 per image) in percentage points."""
    final = next((c.label for c in reversed(result.conditions) if c.checkpoint is not None and c.scale == 1), None)
    labels = [x for x in dict.fromkeys((final, result.pick.condition)) if x and x != "base" and result.gains.get(x)]
    rows = [name for name in names if any(name in result.gains[label] for label in labels)]
    if not labels or not rows:
        return None
    table = Table(title="paired gain over base (95% interval)", title_justify="left")
    table.add_column("metric", no_wrap=True)
    for label in labels:
        table.add_column(label, justify="right", no_wrap=True)
    for name in rows:
        binary = all(v in (0.0, 1.0) for v in _values(result, name))
        table.add_row(name, *(_gain_cell(result.gains[label].get(name), binary) for label in labels))
    return table


def _gain_cell(gain, binary: bool) -> str:
    if gain is None:
        return "-"
    if binary:  # an accuracy: say it in percentage points
        text = f"{100 * gain.mean:+.1f} pts ({100 * gain.low:+.1f} to {100 * gain.high:+.1f})"
    else:
        text = f"{gain.mean:+.3g} ({gain.low:+.3g} to {gain.high:+.3g})"
    # Bold when the interval excludes 0: a change beyond noise, either way.
    return f"[bold]{text}[/]" if gain.low > 0 or gain.high < 0 else text


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
