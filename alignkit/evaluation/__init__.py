"""Evaluation: reward gains and over-optimisation of a tuned LoRA, `alignkit eval`.

    from alignkit.evaluation import EvalConfig, run
    result = run(EvalConfig(path="runs/hps"))
    print(result.pick.reason)
"""

from __future__ import annotations

from rich.console import Console

from alignkit.evaluation.config import DEFAULT_SCALES, EvalConfig, parse_scales
from alignkit.evaluation.evaluate import EvalResult, evaluate

__all__ = ["DEFAULT_SCALES", "EvalConfig", "EvalResult", "evaluate", "parse_scales", "run"]

OUTPUT_FILES = ("scores.jsonl", "summary.json", "grid.png", "curves.png")


def run(config: EvalConfig, console: Console | None = None) -> EvalResult:
    """Evaluate, then write scores.jsonl, summary.json, grid.png, curves.png and print the table."""
    from alignkit.evaluation.plots import plot_curves, plot_grid
    from alignkit.evaluation.report import print_table, write_scores, write_summary

    def write(result: EvalResult) -> None:
        # Under the output folder's lock, which `evaluate` holds until this returns.
        out = result.output_dir
        out.mkdir(parents=True, exist_ok=True)
        write_scores(result, out / "scores.jsonl")
        write_summary(result, out / "summary.json")
        plot_grid(result, out / "grid.png")
        plot_curves(result, out / "curves.png")

    console = console or Console()
    progress = Console(stderr=True)
    result = evaluate(config, log=lambda line: progress.print(line, style="dim", highlight=False, soft_wrap=True),
                      write=write)
    out = result.output_dir
    print_table(result, console)
    console.print(f"wrote {', '.join(OUTPUT_FILES)} and images/ to {out}", highlight=False, soft_wrap=True)
    return result
