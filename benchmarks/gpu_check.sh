#!/usr/bin/env bash
# GPU figures in one prepared run (well under 10 minutes on one H100):
#   1. alignkit vs trl 0.23.1 AlignPropTrainer on the full-size SD 1.5 architecture
#      (published configs, random weights, 512 px, T=20, K=2, batch 2 with CFG, bf16 weights:
#      both trainers keep LoRA in fp32; alignkit also keeps the VAE in fp32, as diffusers'
#      `force_upcast` asks, trl casts it to bf16)
#   2. memory_scaling.py --gpu (if this checkout has it)
# Expected: under a minute to build the pipeline, ~3 min for the comparison (4 fresh
# processes), ~4 min for memory_scaling; each part has its own time limit (630 s at worst).
# Results, logs and the card's name go under $OUT (default benchmarks/results/gpu).
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

for python in "$PY" "$ALIGNKIT_TRL_PYTHON"; do
  if [ ! -x "$python" ]; then
    echo "error: no Python at $python; set PY (alignkit's env) and ALIGNKIT_TRL_PYTHON (trl's env)" >&2
    exit 2
  fi
done

if [ "${SMOKE:-0}" = "1" ]; then
  # CPU plumbing check: tiny pipeline, one short pair, fp32.
  arch=tiny; res=64; pairs=1; steps=3; skip=1; precision=no; per_run_timeout=600; suffix=smoke
else
  arch=sd15; res=512; pairs=2; steps=5; skip=2; precision=bf16; per_run_timeout=110; suffix=sd15_512px
fi

# The card and the software, first: they label every number that follows.
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; } \
  > "$OUT/card.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" >> "$OUT/card.txt" 2>&1
log "card: $(head -2 "$OUT/card.txt" | tail -1)"

# Build once (1.07B parameters of random weights, ~4.3 GB fp32): every run then loads the same folder.
log "building the $arch pipeline at ${res} px in $WORK"
if ! timeout 120 "$PY" benchmarks/tiny_pipeline.py "$arch" "$WORK/pipelines/$arch-${res}px-seed0" \
      --resolution "$res" >> "$OUT/gpu_check.log" 2>&1; then
  log "FAILED: building the pipeline (see $OUT/gpu_check.log)"; exit 1
fi

status=0
log "vs_trl_alignprop: $arch, ${res} px, $pairs pairs x $steps steps, $precision"
if timeout 240 "$PY" benchmarks/vs_trl_alignprop.py --pipeline "$arch" --resolutions "$res" --pairs "$pairs" \
     --warmup-pairs 0 --steps "$steps" --skip-steps "$skip" --mixed-precision "$precision" \
     --timeout "$per_run_timeout" --cache "$WORK/pipelines" --work-dir "$WORK/runs" \
     --results "$OUT" --name "vs_trl_alignprop_$suffix" > "$OUT/vs_trl_alignprop.log" 2>&1; then
  log "vs_trl_alignprop: ok"
else
  log "vs_trl_alignprop: FAILED or timed out (exit $?; see $OUT/vs_trl_alignprop.log; pairs finished so far: \
$OUT/vs_trl_alignprop_$suffix.partial.json)"; status=1
fi
# The report itself (tables) for whoever reads $OUT without a terminal.
tail -n 40 "$OUT/vs_trl_alignprop.log" >> "$OUT/gpu_check.log"
if [ "${SMOKE:-0}" = "1" ]; then
  log "memory_scaling.py --gpu: not run in SMOKE mode (it needs CUDA)"
elif [ -f benchmarks/memory_scaling.py ]; then
  log "memory_scaling.py --gpu"
  # Its GPU plan: 4 configurations of SD 1.5 at 512 px, T=50, bf16, each in a fresh process (~1 min each).
  if timeout 270 "$PY" benchmarks/memory_scaling.py --gpu --out "$OUT/memory_scaling.json" \
       > "$OUT/memory_scaling.log" 2>&1; then
    log "memory_scaling: ok"
  else
    log "memory_scaling: FAILED or timed out (exit $?; see $OUT/memory_scaling.log)"; status=1
  fi
else
  log "memory_scaling.py is not in this checkout: skipped"
fi

log "done (exit $status); results in $OUT"
exit $status
