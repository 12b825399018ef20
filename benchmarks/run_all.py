"""Every benchmark, one report: `python benchmarks/run_all.py --quick` (what `make bench` runs).

    --quick   minutes on a 2-core CPU: each benchmark at its smallest meaningful size
    --full    the sizes the published figures come from (an hour or more on a CPU)

Each benchmark writes `benchmarks/results/<name>.json` (machine, versions, date, raw samples);
this script prints one terminal report at the end: a table per benchmark (figure, value,
target, pass/miss) and a summary of what ran, what was skipped and why, and how long each took.
A benchmark that cannot run here (no peer environment, a reward whose weights are absent) is
skipped with its one-line reason; the others still run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Run as `python benchmarks/NAME.py`: Python puts benchmarks/ first on sys.path, so the
# harness imports as a sibling; alignkit is the installed package (`make venv`).
import harness
from harness import BenchError, Unavailable


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
        peer = harness.trl_python() if getattr(module, "USES_PEER", True) else None
        path = harness.write_result(result, peer, args.results)
        (args.results / f"{args.name}.partial.json").unlink(missing_ok=True)
        return Outcome(module_name, "ok", 0.0, str(path.relative_to(harness.ROOT)), tables)

    return runner


# name -> runner(preset, options): the order they run in.
BENCHMARKS: dict[str, Callable[[str, argparse.Namespace], Outcome]] = {
    "memory_scaling": _in_process("memory_scaling"),
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
