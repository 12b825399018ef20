"""Run training recipes in parallel, each read by the judge (eval at eta 1 and eta 0), and
collect the figures into one JSON. Usage: run_sweep.py JOBS.json OUTDIR --parallel N --budget S."""

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

jobs = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])
args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
parallel = int(args.get("--parallel", 6))
budget = float(args.get("--budget", 480))
device = args.get("--device", "cuda")
eval_seeds = args.get("--seeds", "8")
eval_extra = args.get("--eval-extra", "")
runs = Path(args.get("--runs", "/tmp/sweep-runs"))
runs.mkdir(parents=True, exist_ok=True)
out.mkdir(parents=True, exist_ok=True)
py = sys.executable
t0 = time.time()


def script(job):
    run = runs / job["name"]
    lines = ["set -x", f"rm -rf {run}"]
    if job["kind"] == "train":
        lines.append(f"{py} -m alignkit train --output-dir {run} --checkpointing-steps 100000 --report-to none "
                     f"{job['args']}")
        src = f"{run}"
    else:
        lines.append(f"{py} benchmarks/recipes/raft_prototype.py --out {run} --device {device} {job['args']}")
        src = f"{run} --model toy --reward count --prompts toy_counting --num-inference-steps 20"
    # A flow model has no eta: its one eval is at the deterministic sampler users generate with.
    for eta in job.get("evals", ["1", "0"]):
        flag = f"--eta {eta}" if eta != "ode" else ""
        lines.append(f"{py} -m alignkit eval {src} --seeds {eval_seeds} --scales 1 {flag} --device {device} "
                     f"--batch-size 96 --output-dir {run}/eval-eta{eta} {eval_extra}")
    return "\n".join(lines)


def summarise(job):
    run = runs / job["name"]
    row = {"name": job["name"], "kind": job["kind"], "args": job["args"]}
    for eta in job.get("evals", ["1", "0"]):
        f = run / f"eval-eta{eta}" / "summary.json"
        if not f.is_file():
            row[f"eta{eta}"] = None
            continue
        s = json.loads(f.read_text())
        conds = {c["label"]: c["stats"] for c in s["conditions"]}
        tuned = [k for k in conds if k != "base"][-1]
        pick = lambda lab, m: conds[lab].get(m, {}).get("mean")  # noqa: E731
        gains = s["gains"].get(tuned, {})
        row[f"eta{eta}"] = {
            "n": conds["base"]["pixel_count_correct"]["n"],
            **{f"{m}": [pick("base", m), pick(tuned, m)] for m in
               ("pixel_count_correct", "pixel_colour_correct", "pixel_shape_correct", "toy_clip", "count_nms_correct",
                "pixel_ambiguous", "diversity/pixel", "diversity/embed", "reward")},
            "gain_count": gains.get("pixel_count_correct"), "gain_nms": gains.get("count_nms_correct"),
            "flags": s.get("flags"), "pick": s.get("pick", {}).get("condition")}
    for name in ("metrics.jsonl", "raft_log.json"):
        f = run / name
        if f.is_file():
            text = f.read_text()
            if name == "metrics.jsonl":
                rows = [json.loads(x) for x in text.splitlines() if x.strip()]
                n = max(1, len(rows) // 10)
                row["train"] = {"steps": len(rows), "reward_first": sum(r["reward"] for r in rows[:n]) / n,
                                "reward_last": sum(r["reward"] for r in rows[-n:]) / n,
                                "step_time": sum(r["step_time"] for r in rows) / len(rows)}
            else:
                row["train"] = json.loads(text)["rounds"]
    return row


pending = list(jobs)
active = {}
done = []
logdir = out / "logs"
logdir.mkdir(exist_ok=True)
while pending or active:
    while pending and len(active) < parallel and time.time() - t0 < budget * 0.6:
        job = pending.pop(0)
        log = open(logdir / f"{job['name']}.log", "w")
        env = dict(os.environ, OMP_NUM_THREADS=str(job.get("threads", 2)))
        proc = subprocess.Popen(["bash", "-c", script(job)], stdout=log, stderr=subprocess.STDOUT, env=env)
        active[job["name"]] = (proc, job, time.time())
        print(f"[{time.time() - t0:6.0f}s] start {job['name']}", flush=True)
    for name, (proc, job, start) in list(active.items()):
        if proc.poll() is not None or time.time() - t0 > budget:
            if proc.poll() is None:
                proc.kill()
            del active[name]
            row = summarise(job)
            row["wall_s"] = round(time.time() - start, 1)
            row["rc"] = proc.returncode
            done.append(row)
            figures = " | ".join(f"eta{e} {(row.get(f'eta{e}') or {}).get('pixel_count_correct')} "
                                 f"{(row.get(f'eta{e}') or {}).get('gain_count')}" for e in job.get("evals", ["1", "0"]))
            print(f"[{time.time() - t0:6.0f}s] done {name} rc={proc.returncode} {row['wall_s']}s {figures}", flush=True)
            (out / "results.json").write_text(json.dumps(done, indent=1))
    if not pending and not active:
        break
    if time.time() - t0 > budget and not active:
        break
    time.sleep(2)
for job in pending:
    print("never started:", job["name"])
with tarfile.open(out / "evals.tar", "w") as tar:
    for run in runs.iterdir():
        for f in list(run.glob("eval-eta*/grid.png")) + list(run.glob("eval-eta*/summary.json")) + \
                list(run.glob("metrics.jsonl")) + list(run.glob("raft_log.json")) + list(run.glob("*.safetensors")):
            tar.add(f, arcname=str(f.relative_to(runs)))
print("total", round(time.time() - t0), "s")
