"""One training run of trl 0.23.1's DDPOTrainer, in the peer environment (.venv-trl).

Launched by `benchmarks/vs_ddpo.py`. The reward is alignkit's, served by
`benchmarks/reward_bridge.py` under alignkit's interpreter (DDPO treats the reward as a black
box, so it may live in another process; the peer environment stays as trl ships it). Every
`checkpoint_every` epochs the LoRA is saved in diffusers' format, outside the timed region,
for the shared evaluation. Reads a JSON job, writes a JSON result:

    python trl_ddpo_child.py JOB.json RESULT.json
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
import warnings


def main(job_path: str, result_path: str) -> None:
    job = json.loads(open(job_path).read())
    # The peer's venv has neither alignkit nor benchmarks/ on its path: the bridge's client is
    # imported from the folder above this script (the server side runs under alignkit's python).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reward_bridge import RewardClient

    from accelerate import PartialState
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    warnings.filterwarnings("ignore")
    PartialState()  # accelerate's logger, used by trl, needs the state first
    out = job["output_dir"]
    config = DDPOConfig(
        exp_name="bench", seed=job["seed"], log_with=None, num_epochs=job["epochs"],
        save_freq=10**9,  # we save LoRAs ourselves, outside the timed step
        mixed_precision=job["mixed_precision"], sample_num_steps=job["num_inference_steps"],
        sample_eta=job["eta"], sample_guidance_scale=job["guidance_scale"],
        sample_batch_size=job["sample_batch_size"], sample_num_batches_per_epoch=job["sample_num_batches_per_epoch"],
        train_batch_size=job["train_batch_size"], train_learning_rate=job["learning_rate"],
        # How many of the T steps of each trajectory are trained: trl trains the first
        # int(T * fraction) of a random permutation of them (its default fraction: 1.0, every step).
        train_num_inner_epochs=job.get("inner_epochs", 1),
        train_timestep_fraction=job.get("train_timestep_fraction", 1.0), train_cfg=True,
        per_prompt_stat_tracking=job["per_prompt_stat_tracking"],
        project_kwargs={"project_dir": out, "logging_dir": os.path.join(out, "logs")},
    )
    try:
        bridge = RewardClient(job["alignkit_python"], job["reward"], judge=job.get("judge"))
    except RuntimeError as exc:
        with open(result_path, "w") as f:
            json.dump({"error": f"reward '{job['reward']}' could not be served to trl: {exc}"}, f)
        sys.exit(3)

    prompts, rng = job["prompts"], random.Random(job["seed"])
    seen: list[dict] = []

    def prompt_fn():
        return rng.choice(prompts), {}

    def reward_fn(images, batch_prompts, metadata):
        scored = bridge(images, list(batch_prompts))
        seen.append({k: v.tolist() for k, v in scored.items()})
        # DDPO is given either the soft count (the same objective alignkit differentiates) or the
        # independent truth the evaluation reads (a judge's column, served by the bridge), signed
        # so that higher is better; both are black boxes to it.
        return job.get("reward_sign", 1.0) * scored[job["reward_key"]].numpy(), {}

    pipeline = DefaultDDPOStableDiffusionPipeline(job["model"], use_lora=True)
    pipeline.set_progress_bar_config(disable=True)
    trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipeline)
    trainer.sd_pipeline.set_progress_bar_config(disable=True)
    per_epoch = job["sample_batch_size"] * job["sample_num_batches_per_epoch"]
    records, global_step = [], 0
    for epoch in range(job["epochs"]):
        seen.clear()
        start = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        elapsed = time.perf_counter() - start
        record = {"epoch": epoch + 1, "samples": (epoch + 1) * per_epoch, "step_time": elapsed,
                  "optimizer_steps": global_step}
        for key in seen[0] if seen else ():
            values = [v for batch in seen for v in batch[key]]
            record[f"train_{key}"] = sum(values) / len(values)
        if (epoch + 1) % job["checkpoint_every"] == 0 or epoch + 1 == job["epochs"]:
            folder = os.path.join(out, f"checkpoint-{epoch + 1}")
            trainer.sd_pipeline.save_checkpoint([trainer.sd_pipeline.unet], None, folder)
            record["checkpoint"] = folder
        records.append(record)
        print(json.dumps(record), flush=True)
    bridge.close()  # waits for the bridge: its peak is then this process's largest child's
    with open(result_path, "w") as f:
        json.dump({"side": "ddpo", "epochs": records, "trained_timesteps": trainer.num_train_timesteps,
                   "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "bridge_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
