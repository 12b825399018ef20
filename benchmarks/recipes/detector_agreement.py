"""How often a toy detector reads the pipeline's own samples as the world's rules do:
`python benchmarks/recipes/detector_agreement.py [DETECTOR_DIR]` (default: the bundled one).

256 fresh samples of every prompt (held-out ones included, seed 5151) at eta 1 and at eta 0,
read by the detector (NMS at the `count` reward's conf 0.25 / IoU 0.7) and by
`alignkit.toy.counter`; prints `toy_build.detector.counter_agreement` for each sampler. Run
from a source checkout (toy_build is not installed): PYTHONPATH=. python ...
"""

import sys
import time

import torch
from diffusers import StableDiffusionPipeline

from alignkit.toy import pipeline_path
from toy_build import detector
from toy_build.quality import balanced_prompts, sample

torch.set_num_threads(1)
net = detector.load_detector(sys.argv[1] if len(sys.argv) > 1 else None)
pipe = StableDiffusionPipeline.from_pretrained(pipeline_path(), dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
for eta in (1.0, 0.0):
    prompts = balanced_prompts(256, seed=5151)
    start = time.time()
    images = sample(pipe, prompts, seed=5151, eta=eta)
    print(f"eta {eta:g} ({time.time() - start:.0f} s to sample):", detector.counter_agreement(net, images, prompts),
          flush=True)
