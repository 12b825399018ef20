"""Quality of the toy world's models, measured against the world's ground truth.

- `vae_reconstruction`: MSE of the autoencoder on fresh scenes.
- `clip_retrieval`: how often the toy CLIP picks an image's own prompt among 32.
- `scene_metrics`: what a generated image shows, read by the world's rules (count, shape,
  colour, background: `alignkit.toy.counter`), compared with its prompt; the detector's NMS
  count (the `count` reward's proxy) beside it.
- `pipeline_quality`: `scene_metrics` over samples of a pipeline: the base model's figures,
  and the same function scores an aligned model in evaluation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from alignkit.rewards.base import clip_pixels
from alignkit.toy import world


@torch.no_grad()
def vae_reconstruction(vae, n: int = 512, seed: int = 0, batch_size: int = 64) -> dict:
    rng = np.random.default_rng(seed)
    device = next(vae.parameters()).device
    errors = []
    for start in range(0, n, batch_size):
        x = world.generate(min(batch_size, n - start), rng=rng).tensor().to(device).mul(2).sub(1)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        errors.append(((recon - x) ** 2).mean(dim=(1, 2, 3)))
    mse = torch.cat(errors)
    return {"recon_mse_[-1,1]": round(mse.mean().item(), 5), "samples": n}


@torch.no_grad()
def clip_retrieval(model, tokenizer, trials: int = 16, candidates: int = 32, seed: int = 0) -> dict:
    """Top-1 retrieval of the right prompt among `candidates` distinct prompts, both ways."""
    rng = np.random.default_rng(seed)
    specs = world.all_specs()
    hits_i2t = hits_t2i = total = 0
    for _ in range(trials):
        chosen = [specs[i] for i in rng.choice(len(specs), candidates, replace=False)]
        batch = world.render(chosen, rng)
        ids = tokenizer(batch.prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        param = next(model.parameters())
        pixels = clip_pixels(batch.tensor().to(param.device), world.IMAGE_SIZE, dtype=param.dtype)
        logits = model(input_ids=ids.to(param.device), pixel_values=pixels).logits_per_image.cpu()
        target = torch.arange(candidates)
        hits_i2t += (logits.argmax(dim=1) == target).sum().item()
        hits_t2i += (logits.argmax(dim=0) == target).sum().item()
        total += candidates
    return {"top1_image_to_prompt_among_32": round(hits_i2t / total, 4),
            "top1_prompt_to_image_among_32": round(hits_t2i / total, 4), "images": total}


def scene_metrics(images: Tensor, prompts: list[str], net=None, conf: float = 0.25) -> dict:
    """Compare what images (B,3,H,W in [0,1]) show with what their toy prompts ask for.

    Count, shape, colour and background are read by the world's rules (`alignkit.toy.counter`),
    which share nothing with any reward. With `net`, the detector's NMS count of the prompted
    class (the `count` reward's proxy) is reported beside it as `detector_count_accuracy`.
    """
    from alignkit.toy.counter import read_images

    specs = [world.parse_prompt(p) for p in prompts]
    readings = read_images(images)
    count_ok, shape_ok, colour_ok, bg_ok, errors, sure = [], [], [], [], [], []
    by_count: dict[int, list[bool]] = {}
    for spec, reading in zip(specs, readings):
        count_ok.append(reading.count == spec.count)
        errors.append(reading.count - spec.count)
        sure.append(not reading.ambiguous)
        by_count.setdefault(spec.count, []).append(reading.count == spec.count)
        # The majority shape and colour of the objects; no object is a wrong shape and colour.
        shape_ok.append(reading.shape == spec.shape)
        colour_ok.append(reading.colour == spec.colour)
        bg_ok.append(reading.background == spec.background)
    errors = np.array(errors)
    out = {
        "count_accuracy": round(float(np.mean(count_ok)), 4),
        "count_mean_abs_error": round(float(np.abs(errors).mean()), 4),
        "count_error_histogram": {int(k): int(v) for k, v in zip(*np.unique(errors, return_counts=True))},
        "count_accuracy_by_prompted_count": {k: round(float(np.mean(v)), 3) for k, v in sorted(by_count.items())},
        "unambiguous": round(float(np.mean(sure)), 4),
        "shape_accuracy": round(float(np.mean(shape_ok)), 4),
        "colour_accuracy": round(float(np.mean(colour_ok)), 4),
        "background_accuracy": round(float(np.mean(bg_ok)), 4),
        "images": len(prompts),
    }
    if net is not None:
        from toy_build import detector

        detections = detector.detect(net, images, conf=conf, iou=0.7)
        out["detector_count_accuracy"] = round(float(np.mean(
            [int((d["classes"] == s.shape_id).sum()) == s.count for d, s in zip(detections, specs)])), 4)
    return out


def balanced_prompts(n: int, seed: int = 0, specs: list | None = None) -> list[str]:
    """n prompts cycling through every (count, shape, colour, background), shuffled by seed."""
    specs = specs if specs is not None else world.all_specs()
    order = np.random.default_rng(seed).permutation(len(specs))
    return [specs[order[i % len(specs)]].prompt for i in range(n)]


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int = 0, steps: int = 20, guidance_scale: float = 7.5,
           batch_size: int = 64, eta: float = 0.0) -> Tensor:
    """Images (B,3,64,64) in [0,1] from a pipeline, batch by batch, each batch seeded.

    `eta` is DDIM's; a flow-matching pipeline (no eta) samples deterministically and takes only 0."""
    from alignkit.families import takes_eta

    has_eta = takes_eta(pipe)
    if eta and not has_eta:
        raise ValueError(f"{type(pipe).__name__} has no eta; its sampler is deterministic (eta 0)")
    extra = {"eta": eta} if has_eta else {}
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gen = torch.Generator().manual_seed(seed + start)
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen,
                      output_type="pt", **extra).images
        out.append(images.float().clamp(0, 1))
    return torch.cat(out)


def pipeline_quality(pipe, n: int = 256, seed: int = 0, steps: int = 20, guidance_scales=(7.5, 3.0),
                     net=None) -> dict:
    """The pipeline's count, shape, colour and background accuracy on balanced prompts."""
    import time

    from alignkit.families import takes_eta

    prompts = balanced_prompts(n, seed)
    # DDIM for the UNet pipeline, the Euler flow sampler for SD3-format ones (which take no eta).
    sampler = "ddim" if takes_eta(pipe) else "euler"
    result = {}
    for scale in guidance_scales:
        start = time.monotonic()
        images = sample(pipe, prompts, seed=seed, steps=steps, guidance_scale=scale)
        seconds = time.monotonic() - start
        metrics = scene_metrics(images, prompts, net=net)
        if net is not None:
            from toy_build.detector import counter_agreement

            metrics["detector_counter_agreement"] = counter_agreement(net, images, prompts)["agreement_where_unambiguous"]
        metrics["sampling_seconds_per_64"] = round(seconds * 64 / n, 2)
        result[f"{sampler}{steps}_cfg{scale:g}"] = metrics
    return result


def measure_bundled(n: int = 512, seed: int = 4242, device: str = "cpu") -> dict:
    """Every figure above for the weights that ship with alignkit, loaded by their public paths."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPTokenizer

    from alignkit.toy import clip_path, pipeline_path
    from toy_build import detector

    net = detector.load_detector(device=device)
    clip = CLIPModel.from_pretrained(clip_path(), dtype=torch.float32).to(device).eval()
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path(), dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    return {
        "detector": detector.count_accuracy(net, n=n, seed=seed),
        "clip": clip_retrieval(clip, CLIPTokenizer.from_pretrained(clip_path()), trials=max(1, n // 32), seed=seed),
        "pipeline": pipeline_quality(pipe, n=n, seed=seed, net=net),
    }


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m toy_build.quality",
                                     description="Measure the bundled toy models on fresh scenes.")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(json.dumps(measure_bundled(args.samples, args.seed, args.device), indent=2))


if __name__ == "__main__":
    main()
