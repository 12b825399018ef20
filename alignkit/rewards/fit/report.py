"""The fit's report: a rich table in the terminal, and fit.png (learning curve, calibration,
hackability). report.json is the same dict the table is printed from."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _pm(stat: dict) -> str:
    mean, std = stat.get("mean", float("nan")), stat.get("std", float("nan"))
    return f"{mean:.3f}" + (f" ± {std:.3f}" if math.isfinite(std) else "")


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    table = Table(title=f"reward fit: {report['data']['kind']}, {report['data']['rows']} rows, "
                        f"{report['folds']}-fold CV (mean ± std over folds)")
    table.add_column("head")
    names = list(next(iter(report["heads"].values())).keys())
    for name in names:
        table.add_column(name)
    for head, stats in report["heads"].items():
        mark = " (kept)" if head == report["chosen"] else ""
        table.add_row(head + mark, *(_pm(stats[n]) for n in names))
    console.print(table)
    curve = "  ".join(f"{int(p['fraction'] * 100)}%: {p['mean']:.3f}" for p in report["learning_curve"])
    console.print(f"learning curve ({report['primary']}, {report['chosen']} head): {curve}")
    for name, hack in report["hackability"].items():
        if "skipped" in hack:
            console.print(f"hackability of {name}: skipped ({hack['skipped']})")
        else:
            console.print(f"hackability of {name}: +{hack['gain_in_spreads']:.2f} spreads after {hack['steps']} PGD "
                          f"steps within L∞ {hack['epsilon'] * 255:.0f}/255 on {hack['images']} held-out images")


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    curve = report["learning_curve"]
    ax = axes[0]
    xs = [p["rows"] for p in curve]
    ax.errorbar(xs, [p["mean"] for p in curve],
                yerr=[0 if not math.isfinite(p["std"]) else p["std"] for p in curve], marker="o", capsize=3)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("training rows (10/25/50/100% of each fold)")
    ax.set_ylabel(f"held-out {report['primary']}")
    ax.set_title("learning curve")
    cal = report["calibration"]
    ax = axes[1]
    ax.plot(cal["x"], cal["y"], marker="o")
    lo, hi = min(cal["x"] + cal["y"]), max(cal["x"] + cal["y"])
    ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel(cal["x_label"])
    ax.set_ylabel(cal["y_label"])
    ax.set_title("calibration (out of fold)")
    ax = axes[2]
    hacks = {k: v for k, v in report["hackability"].items() if "gain_in_spreads" in v}
    ax.bar(range(len(hacks)), [v["gain_in_spreads"] for v in hacks.values()], color=["C1", "C2", "C3"][:len(hacks)])
    ax.set_xticks(range(len(hacks)), list(hacks), rotation=10)
    ax.set_ylabel("PGD gain / score spread")
    ax.set_title("hackability (10 steps, L∞ 4/255)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
