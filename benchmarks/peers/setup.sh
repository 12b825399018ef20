#!/usr/bin/env bash
# Create the peers' own virtual environment (trl 0.23.1) from pinned versions.
# Usage: bash benchmarks/peers/setup.sh [VENV_DIR]   (default: benchmarks/peers/.venv-trl)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$here/.venv-trl}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# The same pins as alignkit's tests where the packages overlap, so both sides run the same
# torch/diffusers/peft/transformers and the comparison measures the trainers alone.
"$venv/bin/pip" install -q -c "$root/requirements/constraints.txt" -r "$here/trl-requirements.txt"
"$venv/bin/python" -c "import trl, diffusers; from trl import AlignPropTrainer, DDPOTrainer; print('trl', trl.__version__, 'diffusers', diffusers.__version__)"
