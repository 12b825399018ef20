"""Every benchmark, one report: `python benchmarks/run_all.py --quick` (what `make bench` runs).

    --quick   minutes on a 2-core CPU: each benchmark at its smallest meaningful size
    --full    the sizes the published figures come from (an hour or more on a CPU)

Each benchmark writes `benchmarks/results/<name>.json` (machine, versions, date, raw samples);
this script prints one terminal report at the end: a table per benchmark (figure, value,
target, pass/miss) and a summary of what ran, what was skipped and why, and how long each took.
A benchmark that cannot run here (no toy world yet, no peer environment) is skipped with its
one-line reason; the others still run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import BenchError, Check, Unavailable  # noqa: E402


@dataclass
class Outcome:
    name: str
    status: str  # "ok", "skipped" or "failed"
    seconds: float
    detail: str = ""
    tables: list = field(default_factory=list)


def _in_process(module_name: str) -> Callable[[str, argparse.Namespace], Outcome]:
    """A benchmark module with parse_args/run/report, run in this process."""

    def runner(preset: str, opts: argparse.Namespace) -> Outcome:
        import importlib

        module = importlib.import_module(module_name)
        argv = [f"--{preset}", *(["--threads", str(opts.threads)] if opts.threads else [])]
        args = module.parse_args(argv)
        result = module.run(args)
        tables = _capture(module.report, result)
        result.extra.pop("runs_table", None)  # live objects; the JSON holds the same data
        path = harness.write_result(result, harness.trl_python(), args.results)
        (args.results / f"{args.name}.partial.json").unlink(missing_ok=True)
        return Outcome(module_name, "ok", 0.0, str(path.relative_to(harness.ROOT)), tables)

    return runner


# memory_scaling.py's own targets (its docstring): peak memory at K=T over K=1 with
# checkpointing, and the slowest configuration's step time over its compute floor.
MEMORY_SCALING_TARGETS = {"memory_K=T_over_K=1": ("peak memory K=T / K=1 (checkpointing)", "<= 1.25"),
                          "worst_over_floor": ("slowest step time / compute floor", "<= 1.15")}


def _memory_scaling(preset: str, opts: argparse.Namespace) -> Outcome:
    """memory_scaling.py (the aligner's benchmark) through its own CLI.

    Its default run is its CPU quick mode, for --quick and --full alike; it writes
    results/memory_scaling.json as {device: {..., "summary": {resolution: {figure: value}}}}.
    """
    script = harness.BENCH / "memory_scaling.py"
    log = Path(opts.logs) / "memory_scaling.log"
    result = harness.RESULTS / "memory_scaling.json"
    child = harness.run_child([sys.executable, str(script), "--out", str(result)], log,
                              harness.child_env(opts.threads))
    if child.returncode != 0 or not result.is_file():
        return Outcome("memory_scaling", "failed", 0.0, f"exit {child.returncode}: {child.tail(1)} [log: {log}]")
    summary = json.loads(result.read_text()).get("cpu", {}).get("summary", {})
    checks = [Check(f"{res} px: {label}", value, "{:.2f}x", target)
              for res, figures in summary.items()
              for key, (label, target) in MEMORY_SCALING_TARGETS.items()
              if (value := figures.get(key)) is not None]
    tables = [harness.checks_table("memory and time vs T and K (memory_scaling, CPU)", checks)] if checks else []
    return Outcome("memory_scaling", "ok", 0.0, str(result.relative_to(harness.ROOT)), tables)


# name -> runner(preset, options): the order they run in.
BENCHMARKS: dict[str, Callable[[str, argparse.Namespace], Outcome]] = {
    "memory_scaling": _memory_scaling,
    "vs_trl_alignprop": _in_process("vs_trl_alignprop"),
    "vs_ddpo": _in_process("vs_ddpo"),
}


class _Collector:
    """Stands in for a console: keeps a benchmark's report tables for the single final report."""

    def __init__(self):
        self.items: list = []

    def print(self, *renderables, **_):
        self.items.extend(renderables)


def _capture(report: Callable, result) -> list:
    collector = _Collector()
    report(result, collector)
    return collector.items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_const", dest="preset", const="quick")
    mode.add_argument("--full", action="store_const", dest="preset", const="full")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    parser.add_argument("--threads", type=int, help="OMP/MKL threads for every measured process")
    parser.add_argument("--logs", default=str(Path("/tmp") / "alignkit-bench" / "logs"))
    opts = parser.parse_args(argv)

    progress = harness.console(stderr=True)
    if warning := harness.busy_warning():
        progress.print(f"[yellow]warning:[/] {warning}")
    outcomes, start_all = [], time.perf_counter()
    for name, runner in BENCHMARKS.items():
        if opts.only and name not in opts.only:
            continue
        progress.print(f"[bold]{name}[/] ({opts.preset}) ...")
        start = time.perf_counter()
        try:
            outcome = runner(opts.preset, opts)
        except Unavailable as exc:
            # One benchmark that cannot run here must not hide the others' figures.
            outcome = Outcome(name, "skipped", 0.0, str(exc))
        except BenchError as exc:
            outcome = Outcome(name, "failed", 0.0, str(exc))
        outcome.seconds = time.perf_counter() - start
        outcomes.append(outcome)
        progress.print(f"  {name}: {outcome.status} in {outcome.seconds:.0f} s")

    from rich.table import Table

    con = harness.console()
    for outcome in outcomes:
        for table in outcome.tables:
            con.print(table)
    summary = Table(title=f"alignkit benchmarks ({opts.preset}): {time.perf_counter() - start_all:.0f} s in all, "
                          f"on {harness.cpu_model()}", title_justify="left")
    for column in ("benchmark", "status", "time", "results / reason"):
        summary.add_column(column, overflow="fold")
    colour = {"ok": "green", "skipped": "yellow", "failed": "red"}
    for o in outcomes:
        summary.add_row(o.name, f"[{colour[o.status]}]{o.status}[/]", f"{o.seconds:.0f} s", o.detail)
    con.print(summary)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    harness.entry_point(main)
