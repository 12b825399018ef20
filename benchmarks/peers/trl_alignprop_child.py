"""One timed run of trl 0.23.1's AlignPropTrainer, in the peer environment (.venv-trl).

Launched by `benchmarks/vs_trl_alignprop.py` in a fresh process per run, with the repo root
on PYTHONPATH so that the reward is alignkit's own (`alignkit.rewards.load_reward`, which
only needs torch for the model-free rewards). Reads a JSON job, writes a JSON result:

    python trl_alignprop_child.py JOB.json RESULT.json

Fixed truncation: trl's `pipeline_step_with_grad` detaches the UNet output of every step
`i < truncated_backprop_timestep` (i counts from 0 at the noisiest step), so with
`truncated_backprop_rand=False` exactly the last K = T - truncated_backprop_timestep steps
carry gradients. Every step still runs through `torch.utils.checkpoint` with autograd on:
that cost is part of what is measured. The child checks the mapping as it runs: checkpointing
recomputes in backward exactly the steps that carry gradients, so it counts UNet calls per
optimizer step (T + K) and reports K.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings


def load_shared_reward(spec: str, device, result_path: str):
    """alignkit's reward, built in this environment; a package it drags in that trl's environment
    lacks is reported by name (in the result file) instead of a traceback."""
    try:
        from alignkit.rewards import load_reward

        return load_reward(spec, device=device)
    except ModuleNotFoundError as exc:
        message = (f"importing alignkit's '{spec}' reward needs package '{exc.name}', which the trl environment "
                   "lacks; install it there or pick a model-free reward")
    except Exception as exc:  # an AlignkitError (unknown reward, missing weights) is already one line
        if not hasattr(exc, "exit_code"):
            raise
        message = f"alignkit reward '{spec}' in the trl environment: {exc}"
    with open(result_path, "w") as f:
        json.dump({"error": message}, f)
    sys.exit(3)


def main(job_path: str, result_path: str) -> None:
    job = json.loads(open(job_path).read())
    import torch
    from accelerate import PartialState
    from trl import AlignPropConfig, AlignPropTrainer, DefaultDDPOStableDiffusionPipeline

    warnings.filterwarnings("ignore")
    # accelerate's logger (used by trl at import and in __init__) needs the state first.
    PartialState()
    steps, k = job["num_inference_steps"], job["k"]
    config = AlignPropConfig(
        exp_name="bench", seed=job["seed"], log_with=None, num_epochs=job["steps"],
        # Never checkpoint inside the timed loop (trl saves every `save_freq` epochs by default).
        save_freq=10**9, mixed_precision=job["mixed_precision"], sample_num_steps=steps,
        sample_eta=job["eta"], sample_guidance_scale=job["guidance_scale"], train_batch_size=job["batch_size"],
        train_learning_rate=job["learning_rate"], train_gradient_accumulation_steps=1,
        truncated_backprop_rand=False, truncated_backprop_timestep=steps - k,
        project_kwargs={"project_dir": job["output_dir"], "logging_dir": os.path.join(job["output_dir"], "logs")},
    )
    pipeline = DefaultDDPOStableDiffusionPipeline(job["model"], use_lora=True)
    pipeline.set_progress_bar_config(disable=True)
    reward = load_shared_reward(job["reward"], PartialState().device, result_path)
    prompt = job["prompt"]

    def reward_fn(images, prompts, metadata):
        return reward(images, list(prompts)), {}

    trainer = AlignPropTrainer(config, reward_fn, lambda: (prompt, {}), pipeline)
    trainer.sd_pipeline.set_progress_bar_config(disable=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # Non-reentrant checkpointing recomputes a step's UNet forward in backward only for the
    # steps that carry gradients: calls per optimizer step = T + K, which checks the mapping.
    calls: list[int] = []
    trainer.sd_pipeline.unet.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    times, unet_calls, global_step = [], [], 0
    for epoch in range(job["steps"]):
        calls.clear()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        unet_calls.append(len(calls))
    result = {
        "side": "trl",
        "step_times": times,
        "k_effective": [n - steps for n in unet_calls],
        "trainable_params": sum(p.numel() for p in trainer.trainable_layers),
        # ru_maxrss is in KiB on Linux.
        "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
