"""Which denoising steps decide the toy's count? The probe behind GRPO's trained steps:
`python benchmarks/recipes/where_count_is_decided.py [N] [DRAWS] [ETA] [PATCH]` (default 32 4 1 1).

N (prompt, x_T) pairs of the `toy_counting` training prompts. For each probed step k, every
pair is sampled DRAWS times with noise at step k alone (DDIM at ETA there, eta 0 everywhere
else, 20 steps, guidance 7.5), and the world's rules (`toy_rules`) read each image's count.
Printed per k: the count accuracy, and the share of pairs whose correctness differs across the
draws, i.e. the share of GRPO groups (one x_T each, `--same-initial-noise`) that get a
non-zero advantage from step k's noise alone. A step whose noise never changes the count gives
a policy gradient nothing to learn the count from, and its noise in the other steps' groups is
noise in their advantages. With PATCH > 1 the noise is GRPO's `--noise-patch PATCH` (one value
per PATCH x PATCH latent patch): how much of the count's randomness is low-frequency. Also
writes the figures to where_count_is_decided.json in the working directory.
"""

import json
import sys
import time

import torch

from alignkit.aligner.pipeline import load_pipeline
from alignkit.aligner.sampler import DDIMSampler, patch_noise
from alignkit.prompts import load_prompt_set
from alignkit.toy.judge import toy_rules

STEPS = 20
PROBED = (0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def main(n: int = 32, draws: int = 4, eta: float = 1.0, patch: int = 1,
         out: str = "where_count_is_decided.json") -> None:
    loaded = load_pipeline("toy")
    sampler = DDIMSampler(loaded, loaded.native_resolution, STEPS, 7.5, eta=eta, gradient_checkpointing=False,
                          checkpoint_vae=False)
    unet, judge = loaded.pipe.unet, toy_rules({}, "cpu")
    prompts = load_prompt_set("toy_counting").train
    g = torch.Generator().manual_seed(1)
    picks = [prompts[i] for i in torch.randint(len(prompts), (n,), generator=g)]
    x_T = torch.randn(sampler.latent_shape(n), generator=g)
    cond = sampler.encode(picks, torch.device("cpu"))

    @torch.no_grad()
    def correct(noise) -> torch.Tensor:
        x = x_T.clone()
        for i in range(STEPS):
            x = sampler.step(unet, x, i, cond, noise(i))
        return judge.read(sampler.images(x).clamp(0, 1), picks)["pixel_count_correct"]

    start = time.time()
    sampler.stochastic_steps = frozenset()  # every step deterministic: DDIM eta 0
    result = {"pairs": n, "draws": draws, "eta": eta, "patch": patch, "steps": STEPS,
              "deterministic_accuracy": correct(lambda i: None).mean().item(), "by_step": {}}
    print(f"{n} pairs, {draws} draws, eta {eta:g} at the probed step (noise patch {patch}); DDIM eta 0 accuracy "
          f"{result['deterministic_accuracy']:.3f}")
    for k in PROBED:
        sampler.stochastic_steps = frozenset({k})
        # A step's noise as GRPO draws it: white, or one value per latent patch.
        reads = torch.stack([correct(lambda i: patch_noise(x_T.shape, patch, g)) for _ in range(draws)])
        mixed = (reads.amin(0) != reads.amax(0)).float().mean().item()
        result["by_step"][k] = {"accuracy": reads.mean().item(), "mixed_groups": mixed}
        print(f"step {k:2d}: accuracy {reads.mean():.3f}, groups with mixed rewards {mixed:.3f} "
              f"({time.time() - start:.0f} s)", flush=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(int(a) for a in args[:2]), *(float(a) for a in args[2:3]), *(int(a) for a in args[3:4]))
