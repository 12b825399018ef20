#!/usr/bin/env bash
# GPU figures in one prepared run (about 8 minutes on one H100; parts 1-2 took 5.5 min on 26 Nov 2026):
#   1. alignkit vs trl 0.23.1 AlignPropTrainer on the full-size SD 1.5 architecture
#      (published configs, random weights, 512 px, T=20, K=2, batch 2 with CFG, bf16 weights,
#      LoRA in fp32 on both sides; alignkit with its defaults: step and VAE checkpointing)
#   2. the same with alignkit's --compile-unet (one pair: a compile costs a minute or so)
#   3. memory_scaling.py --gpu: K=1 and K=T=50 with checkpointing (~2 more minutes; see below)
#   4. the flow-matching families (issue 14), random weights in bf16, batch 1, T=28, K=1, with
#      --offload-t5: SD3.5-medium's architecture at 1024 px and FLUX.1-dev's at 512 px; peak
#      memory (allocated and reserved), s/step, and whether they fit 24 GB / 40 GB cards
#      (FLOW_GRID="28,1,1;28,28,1" adds K=T). Not yet run on a device: no figures exist.
#   PARTS=flow runs part 4 alone (it needs neither trl's environment nor the SD build).
# Each part has its own time limit; what finished is kept. Results, logs and the card's name
# go under $OUT (default benchmarks/results/gpu).
#
# Needs, from wheels with the repo's pins: alignkit's environment (PY, default .venv/bin/python)
# and the peer's (ALIGNKIT_TRL_PYTHON, default benchmarks/peers/.venv-trl/bin/python; made by
# benchmarks/peers/setup.sh). Nothing is downloaded: the SD 1.5 pipeline is built from configs.
#
#   bash benchmarks/gpu_check.sh
#   SMOKE=1 bash benchmarks/gpu_check.sh      # the same plumbing on CPU with the tiny pipeline
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PY="${PY:-$root/.venv/bin/python}"
export ALIGNKIT_TRL_PYTHON="${ALIGNKIT_TRL_PYTHON:-$root/benchmarks/peers/.venv-trl/bin/python}"
OUT="${OUT:-$root/benchmarks/results/gpu}"
WORK="${WORK:-${TMPDIR:-/tmp}/alignkit-gpu-check}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$WORK/yolo"
mkdir -p "$OUT" "$WORK"
start=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - start ))s] $*" | tee -a "$OUT/gpu_check.log"; }

PARTS="${PARTS:-all}"
if [ "$PARTS" = "flow" ]; then ALIGNKIT_TRL_PYTHON="$PY"; fi  # part 4 needs alignkit's env only
for python in "$PY" "$ALIGNKIT_TRL_PYTHON"; do
  if [ ! -x "$python" ]; then
    echo "error: no Python at $python; set PY (alignkit's env) and ALIGNKIT_TRL_PYTHON (trl's env)" >&2
    exit 2
  fi
done

if [ "${SMOKE:-0}" = "1" ]; then
  # CPU plumbing check: tiny pipeline, one short pair, fp32.
  # One thread a side: a 2-core CI-like machine with other work on it otherwise thrashes.
  arch=tiny; res=64; pairs=1; steps=3; skip=1; precision=no; per_run_timeout=600; suffix=smoke; threads=1
else
  arch=sd15; res=512; pairs="${PAIRS:-2}"; steps=5; skip=2; precision=bf16; per_run_timeout=150; suffix=sd15_512px; threads=""
fi

# The card and the software, first: they label every number that follows.
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; } \
  > "$OUT/card.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" >> "$OUT/card.txt" 2>&1
log "card: $(head -2 "$OUT/card.txt" | tail -1)"

status=0
# flow_families: part 4, one memory_scaling.py run per family, each with its own time limit;
# then a verdict per family against the card size users have (reserved memory + ~0.5 GB of
# CUDA context must fit).
flow_families() {
  if [ "${SMOKE:-0}" = "1" ]; then log "flow families: not run in SMOKE mode (they need CUDA)"; return; fi
  local family limit
  for family in sd3 flux; do
    limit=300
    log "memory_scaling.py --gpu --family $family (grid ${FLOW_GRID:-28,1,1})"
    if timeout "$limit" "$PY" benchmarks/memory_scaling.py --gpu --family "$family" --grid "${FLOW_GRID:-28,1,1}" \
         --results "$OUT" --logs "$WORK/memory_scaling_$family" > "$OUT/memory_scaling_$family.log" 2>&1; then
      log "memory_scaling $family: ok"
    else
      log "memory_scaling $family: FAILED or timed out (exit $?; see $OUT/memory_scaling_$family.log)"; status=1
    fi
  done
  "$PY" - "$OUT" <<'PYEOF' | tee -a "$OUT/gpu_check.log"
import json, sys
from pathlib import Path
for family, card_gb in (("sd3", 24), ("flux", 40)):
    path = Path(sys.argv[1]) / f"memory_scaling_{family}_gpu.json"
    for row in json.loads(path.read_text())["samples"] if path.is_file() else []:
        if "error" in row:
            print(f"{family}: {row['resolution']}px T={row['T']} K={row['K']}: error {row['error']}")
            continue
        need_gb = row["peak_reserved_mb"] / 1024 + 0.5
        print(f"{family}: {row['resolution']}px T={row['T']} K={row['K']} batch {row['batch']}: "
              f"{row['step_s']:.2f} s/step, peak {row['peak_mb'] / 1024:.1f} GB allocated, "
              f"{row['peak_reserved_mb'] / 1024:.1f} GB reserved -> "
              f"{'fits' if need_gb <= card_gb else 'does NOT fit'} a {card_gb} GB card")
PYEOF
}
if [ "$PARTS" = "flow" ]; then
  flow_families
  log "done (exit $status); results in $OUT"
  exit $status
fi

# Build once (1.07B parameters of random weights, ~4.3 GB fp32): every run then loads the same folder.
log "building the $arch pipeline at ${res} px in $WORK"
if ! timeout 120 "$PY" -m alignkit.testing "$arch" "$WORK/pipelines/$arch-${res}px-seed0" \
      --resolution "$res" >> "$OUT/gpu_check.log" 2>&1; then
  log "FAILED: building the pipeline (see $OUT/gpu_check.log)"; exit 1
fi

# vs_trl NAME PAIRS STEPS SKIP LIMIT [alignkit flags]: one comparison, its report into the log.
vs_trl() {
  local name="$1" n="$2" st="$3" sk="$4" limit="$5" extra="${6:-}"
  log "vs_trl_alignprop ($name): $arch, ${res} px, $n pair(s) x $st steps, $precision ${extra}"
  if timeout "$limit" "$PY" benchmarks/vs_trl_alignprop.py --pipeline "$arch" --resolutions "$res" --pairs "$n" \
       --warmup-pairs 0 --steps "$st" --skip-steps "$sk" --mixed-precision "$precision" \
       --timeout "$per_run_timeout" --cache "$WORK/pipelines" --work-dir "$WORK/runs-$name" \
       --results "$OUT" --name "$name" --alignkit-args="$extra" ${threads:+--threads "$threads"} \
       > "$OUT/$name.log" 2>&1; then
    log "$name: ok"
  else
    log "$name: FAILED or timed out (exit $?; see $OUT/$name.log; pairs finished: $OUT/$name.partial.json)"
    status=1
  fi
  tail -n 30 "$OUT/$name.log" >> "$OUT/gpu_check.log"  # the tables, for whoever reads $OUT
}
vs_trl "vs_trl_alignprop_$suffix" "$pairs" "$steps" "$skip" 260
# The compiled UNet needs a step or two to compile: two more steps, three left out.
vs_trl "vs_trl_alignprop_${suffix}_compile" 1 $((steps + 2)) $((skip + 1)) 200 "--compile-unet"
# memory_scaling: the two checkpointed configurations its targets read (K=1 and K=T=50, ~2 min);
# MEMORY_SCALING=full runs its whole GPU grid (4 configurations, ~4 min), MEMORY_SCALING=0 none.
mode="${MEMORY_SCALING:-targets}"
if [ "$mode" = "0" ]; then
  log "memory_scaling.py --gpu: not run (MEMORY_SCALING=0)"
elif [ "${SMOKE:-0}" = "1" ]; then
  log "memory_scaling.py --gpu: not run in SMOKE mode (it needs CUDA)"
else
  grid=""; [ "$mode" = "full" ] || grid="50,1,1;50,50,1"
  log "memory_scaling.py --gpu (${grid:-full grid})"
  if timeout 270 "$PY" benchmarks/memory_scaling.py --gpu ${grid:+--grid "$grid"} --results "$OUT" \
       --logs "$WORK/memory_scaling" > "$OUT/memory_scaling.log" 2>&1; then
    log "memory_scaling: ok"
  else
    log "memory_scaling: FAILED or timed out (exit $?; see $OUT/memory_scaling.log)"; status=1
  fi
fi

flow_families
log "done (exit $status); results in $OUT"
exit $status
