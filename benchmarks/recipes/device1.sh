#!/bin/bash
# One device call: install the carried wheels, check the stack, run the recipe sweep.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolo PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import torch,diffusers,transformers,peft,accelerate,ultralytics;print(torch.__version__,diffusers.__version__,transformers.__version__,peft.__version__,accelerate.__version__,ultralytics.__version__,torch.cuda.get_device_name())" 2>&1 | tail -2
python3 benchmarks/recipes/run_sweep.py benchmarks/recipes/${1:-jobs1}.json $OUT --parallel ${2:-8} --budget ${3:-470} --device cuda --seeds 8 2>&1 | tee $OUT/sweep.log
