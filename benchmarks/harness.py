"""What every benchmark script shares: child processes, the machine record, the report, results.

Each measured run is a fresh child process (so that one run's allocator, caches and imports
never help the next); its peak RSS comes from the kernel (`os.wait4`'s rusage of exactly that
child), which measures both sides of a comparison the same way whatever they log themselves.
Results go to `benchmarks/results/<name>.json` with the machine, versions and date beside the
raw samples, and the terminal gets one rich table per benchmark: figure, value, target, pass/miss.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
# The peer environment made by benchmarks/peers/setup.sh (ALIGNKIT_TRL_PYTHON overrides it).
PEER_VENV = Path("benchmarks") / "peers" / ".venv-trl"

from alignkit.errors import AlignkitError, debug_enabled


class BenchError(AlignkitError):
    """A benchmark that failed, explained in one line."""


class Unavailable(BenchError):
    """A benchmark that cannot run in this environment (no peer venv, a reward's weights absent)."""


# ---- the command line --------------------------------------------------------------------------

def preset_parser(doc: str, quick: str | None = None, full: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's command line: its module docstring as the help (the first paragraph, the
    rest as the epilog) and the two presets every benchmark has, --quick and --full
    (`args.preset`; run_all passes one of them)."""
    head, _, rest = doc.partition("\n\n")
    p = argparse.ArgumentParser(description=head, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=rest)
    p.add_argument("--quick", action="store_const", dest="preset", const="quick", help=quick)
    p.add_argument("--full", action="store_const", dest="preset", const="full", help=full)
    return p


# ---- processes ---------------------------------------------------------------------------------

@dataclass
class ChildRun:
    cmd: list[str]
    returncode: int
    wall_s: float
    # The child's peak resident set (its own, from the kernel), in MiB.
    peak_rss_mb: float
    log: Path
    timed_out: bool = False

    def tail(self, lines: int = 3) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines() if self.log.is_file() else []
        return " | ".join(line.strip() for line in text[-lines:])


def child_env(threads: int | None = None, extra: dict | None = None) -> dict:
    """Offline, quiet, the repo on PYTHONPATH, and the same thread count on both sides."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", YOLO_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
               PYTHONUNBUFFERED="1")
    env.setdefault("YOLO_CONFIG_DIR", "/tmp/alignkit-bench-yolo")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(extra or {})
    return env


def run_child(cmd: list[str], log: Path, env: dict, timeout_s: float | None = None, cwd: Path = ROOT) -> ChildRun:
    """Run `cmd` to completion with output to `log`; its own peak RSS comes from wait4."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start, timed_out = time.perf_counter(), False
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        while True:
            # WNOHANG polling keeps the timeout; wait4 (not waitpid) returns this child's rusage.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout_s and time.perf_counter() - start > timeout_s:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux.
    return ChildRun(cmd, proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024, log, timed_out)


def run_alignkit_train(train_args: list, out: Path, threads: int | None, timeout_s: float | None,
                       what: str = "alignkit train") -> tuple[ChildRun, list[dict]]:
    """`python -m alignkit train ARGS --output-dir OUT` in a fresh process; its metrics.jsonl rows."""
    cmd = [sys.executable, "-m", "alignkit", "train", *map(str, train_args), "--output-dir", str(out)]
    child = run_child(cmd, out.with_suffix(".log"), child_env(threads), timeout_s)
    metrics = out / "metrics.jsonl"
    if child.returncode != 0 or not metrics.is_file():
        raise BenchError(f"{what} failed (exit {child.returncode}{', timed out' if child.timed_out else ''}): "
                         f"{child.tail(2)} [log: {child.log}]")
    return child, [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def run_peer(python: Path, child: str, job: dict, out: Path, threads: int | None, timeout_s: float | None,
             what: str) -> tuple[ChildRun, dict]:
    """One peer run: `job` written to OUT/job.json, `benchmarks/peers/CHILD` run by the peer's
    `python` in its own process, its OUT/result.json read back. A result with an "error" (the
    child's own one-line reason) or none at all is a BenchError naming `what` and the log."""
    (out / "job.json").write_text(json.dumps(job))
    result_path = out / "result.json"
    run = run_child([str(python), str(BENCH / "peers" / child), str(out / "job.json"), str(result_path)],
                    out.with_suffix(".log"), child_env(threads), timeout_s)
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if "error" in result:
        raise BenchError(result["error"])
    if run.returncode != 0 or not result:
        raise BenchError(f"{what} failed (exit {run.returncode}{', timed out' if run.timed_out else ''}): "
                         f"{run.tail(2)} [log: {run.log}]")
    return run, result


def trl_python() -> Path:
    """The peer environment's interpreter, or one line saying how to make it."""
    override = os.environ.get("ALIGNKIT_TRL_PYTHON")
    # This checkout's, then the main worktree's (a git worktree shares the main one's venvs).
    roots = dict.fromkeys([ROOT, _main_worktree()] if not override else [])
    candidates = [Path(override)] if override else [r / PEER_VENV / "bin" / "python" for r in roots if r]
    for python in candidates:
        if python.is_file():
            return python
    raise Unavailable(f"trl's environment is missing (looked for {', '.join(map(str, candidates))}); "
                     "run `bash benchmarks/peers/setup.sh` or set ALIGNKIT_TRL_PYTHON")


def require_alignkit(reward_spec: str) -> None:
    """The reward must be registered here, or one line says which is missing."""
    from alignkit.rewards import get_entry, parse_spec

    try:
        for name, _ in parse_spec(reward_spec):
            get_entry(name)
    except AlignkitError as exc:
        raise Unavailable(f"reward '{reward_spec}' is not available: {exc}") from None


def _main_worktree() -> Path | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip()).parent if out.returncode == 0 and out.stdout.strip() else None


# ---- the machine and the software -----------------------------------------------------------

_VERSION_PROBE = """
import importlib.metadata as m, json, sys
out = {"python": sys.version.split()[0]}
for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "trl", "ultralytics"):
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def versions(python: str | Path = sys.executable) -> dict:
    """Package versions as `python` (an environment's interpreter) sees them."""
    try:
        out = subprocess.run([str(python), "-c", _VERSION_PROBE], capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, IndexError, json.JSONDecodeError, OSError):
        return {"error": f"could not query {python}"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where the numbers come from: CPU, cores, memory, GPU, and how busy the machine was."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(), "load_avg_1_5_15": list(os.getloadavg()),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        if gpus.returncode == 0 and gpus.stdout.strip():
            info["gpus"] = [line.strip() for line in gpus.stdout.strip().splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def busy_warning() -> str | None:
    """A warning when other work competes for the cores (timings are then noisy)."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > 0.75 * cores:
        return (f"load average {load:.1f} on {cores} cores: other work competes for the CPU, timings are noisy "
                "(--threads 1 keeps both sides from thrashing)")
    return None


# ---- statistics ------------------------------------------------------------------------------

def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def iqr(values: list[float]) -> tuple[float, float]:
    """25th and 75th percentiles (the spread shown beside a median)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


# ---- the report --------------------------------------------------------------------------------

@dataclass
class Check:
    """One figure of a report: its value, the target it is held to (if any), and the verdict."""

    figure: str
    value: float | None
    fmt: str = "{:.3g}"
    # e.g. ">= 1.5": the direction and the threshold; None for a figure shown without a target.
    target: Optional[str] = None
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        op, threshold = self.target.split()
        ops: dict[str, Callable[[float, float], bool]] = {
            ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
        return ops[op](self.value, float(threshold))

    def row(self) -> list[str]:
        verdict = {True: "[green]pass[/]", False: "[red]miss[/]", None: "-"}[self.passed]
        value = "n/a" if self.value is None else self.fmt.format(self.value)
        return [self.figure, value, self.target or "-", verdict, self.note]


def checks_table(title: str, checks: list[Check], caption: str | None = None):
    from rich.table import Table

    table = Table(title=title, caption=caption, title_justify="left")
    for column, style in (("figure", None), ("value", "bold"), ("target", None), ("", None), ("note", "dim")):
        table.add_column(column, style=style, justify="right" if column == "value" else "left")
    for check in checks:
        table.add_row(*check.row())
    return table


def console(stderr: bool = False):
    """The report goes to stdout; progress and warnings (`stderr=True`) go to stderr."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


# ---- results -----------------------------------------------------------------------------------

@dataclass
class Result:
    """What a benchmark writes: its settings, raw samples, summary figures and the context."""

    name: str
    settings: dict
    samples: Any
    checks: list[Check] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def figures(self) -> list[dict]:
        return [{**asdict(c), "passed": c.passed} for c in self.checks]

    def payload(self, peer_python: str | Path | None = None) -> dict:
        return {
            "benchmark": self.name,
            **stamp(),
            "git_commit": _git_commit(),
            "machine": machine(),
            "versions": {"alignkit_env": versions(), **({"peer_env": versions(peer_python)} if peer_python else {})},
            "settings": self.settings,
            "figures": self.figures(),
            **self.extra,
            "samples": self.samples,
        }


def stamp() -> dict:
    """When and by which command a result (or a recomputation of one) was written."""
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}


def write_result(result: Result, peer_python: str | Path | None = None, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_json(out_dir / f"{result.name}.json", result.payload(peer_python))


def write_json(path: Path, data: dict) -> Path:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated result
    return path


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def entry_point(main: Callable[[], int | None]) -> None:
    """Run a benchmark's main: user-facing failures become one line on stderr and exit 2."""
    try:
        sys.exit(main() or 0)
    except AlignkitError as exc:
        if debug_enabled():
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
