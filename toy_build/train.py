"""Train the toy world's models from their seeds: `python -m toy_build.train PART`.

    python -m toy_build.train vae --minutes 6              # CPU budgets of a 2-core machine
    python -m toy_build.train clip --minutes 5
    python -m toy_build.train unet --minutes 28            # needs vae and clip
    python -m toy_build.train detector --minutes 10        # ultralytics; needs the pipeline
    python -m toy_build.train flow --minutes 40            # the SD3-format toy; needs vae and clip
    python -m toy_build.train all

    # what made the shipped weights (TRAINING.md): the detector on CPU, the rest on a GPU
    python -m toy_build.train vae --seed 0 --steps 3000 --minutes 0.8 --device cuda --workers 12 --batch-size 64
    python -m toy_build.train clip --seed 1 --steps 3000 --minutes 0.8 --device cuda --workers 12
    python -m toy_build.train unet --seed 2 --steps 2012 --device cuda --workers 12
    python -m toy_build.train detector --seed 3 --minutes 15 --loras LORA_DIR

Each part trains on fresh scenes from `alignkit.toy.world` for a number of steps and/or a
wall-clock budget, measures its quality on fresh scenes, saves fp16 safetensors under
`--output-dir` (default: alignkit/toy/weights/, the shipped ones), and records command, steps, time, losses
and quality in `training_log.json` and `TRAINING.md` there. Quality is read by the world's
own rules (`alignkit.toy.counter`), never by a trained model. The detector comes last: it
learns from the pipeline's own samples (labelled by those rules) as well as from scenes, so
that the `count` reward holds on the images the aligner actually produces.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alignkit.errors import AlignkitError, MissingWeightsError, debug_enabled
from alignkit.toy import WEIGHTS_DIR
from alignkit.toy import world
from toy_build import log as train_log
from toy_build import models
from toy_build.tokenizer import build_tokenizer
from toy_build.train_flow import train_flow
from toy_build.training import (EMA, Budget, CaptionedLatents, RunConfig, record_step, loss_curve, optimizer_step,
                                cosine_lr, declare_float32, measure_pipeline, to_model_range,
                                warmup_lr)


# ---------------------------------------------------------------------------------- VAE


def train_vae(cfg: RunConfig) -> dict:
    """A KL autoencoder: MSE reconstruction plus a tiny KL term, as in latent diffusion."""
    from toy_build.quality import vae_reconstruction

    torch.manual_seed(cfg.seed)
    vae = models.build_vae().to(cfg.device)
    batch_size, kl_weight, base_lr = cfg.batch_size or 32, 1e-6, 1e-3
    opt = torch.optim.AdamW(vae.parameters(), lr=base_lr, weight_decay=0.0)
    scenes = world.scene_stream(batch_size, cfg.seed, cfg.workers)
    budget, losses, last = Budget(cfg.minutes, cfg.steps), [], [0.0]
    while budget.running():
        cosine_lr(opt, base_lr, budget.fraction)
        x = to_model_range(next(scenes)[0], cfg.device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, x)
        loss = mse + kl_weight * posterior.kl().mean()
        optimizer_step(opt, loss, vae.parameters())
        record_step(budget, last, losses, mse.item())
    train_seconds = budget.elapsed
    vae.eval()
    # Latent diffusion scales latents to unit variance; measure this VAE's factor.
    with torch.no_grad():
        images = torch.from_numpy(world.generate(512, seed=cfg.seed + 1000).images).permute(0, 3, 1, 2)
        std = vae.encode(to_model_range(images, cfg.device)).latent_dist.sample().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    folder = cfg.output_dir / "pipeline" / "vae"
    vae.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    quality = vae_reconstruction(vae.float(), n=cfg.eval_samples, seed=cfg.seed + 2000)
    return dict(steps=budget.step, batch_size=batch_size, train_seconds=round(train_seconds),
                params=models.n_params(vae), scaling_factor=vae.config.scaling_factor,
                loss_curve=loss_curve(losses), quality=quality, saved=str(folder))


# --------------------------------------------------------------------------------- CLIP


def train_clip(cfg: RunConfig) -> dict:
    """Contrastive training; each batch holds distinct prompts, so in-batch negatives are true."""
    from transformers import CLIPImageProcessor

    from alignkit.rewards.base import clip_pixels
    from toy_build.quality import clip_retrieval

    torch.manual_seed(cfg.seed)
    folder = cfg.output_dir / "clip"
    tokenizer = build_tokenizer(folder)
    model = models.build_clip(tokenizer).to(cfg.device)
    batch_size, base_lr = cfg.batch_size or 128, 1e-3
    opt = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=0.05)
    scenes = world.scene_stream(batch_size, cfg.seed, cfg.workers, distinct=True)
    budget, losses, last = Budget(cfg.minutes, cfg.steps), [], [0.0]
    labels = torch.arange(batch_size, device=cfg.device)
    while budget.running():
        cosine_lr(opt, base_lr, budget.fraction)
        images, prompts = next(scenes)
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(cfg.device)
        pixels = clip_pixels(images.to(cfg.device).float().div_(255), world.IMAGE_SIZE)
        out = model(input_ids=ids, pixel_values=pixels)
        loss = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
        optimizer_step(opt, loss, model.parameters())
        record_step(budget, last, losses, loss.item())
    train_seconds = budget.elapsed
    model.eval()
    quality = clip_retrieval(model, tokenizer, trials=max(1, cfg.eval_samples // 32), seed=cfg.seed + 2000)
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    declare_float32(folder / "config.json")
    # The processor records the preprocessing the reward applies: 64 px, CLIP mean/std.
    size = world.IMAGE_SIZE
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return dict(steps=budget.step, batch_size=batch_size, train_seconds=round(train_seconds),
                params=models.n_params(model), loss_curve=loss_curve(losses), quality=quality,
                saved=str(folder))


# --------------------------------------------------------------------------------- UNet


def scheduler_config() -> dict:
    """Stable Diffusion 1.x's noise schedule, so that the toy model samples like SD."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                timestep_spacing="leading")


def save_pipeline(folder: Path, vae, text_encoder, tokenizer, unet):
    """A plain diffusers Stable Diffusion folder in fp16; the models passed in are not changed."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae), text_encoder=copy.deepcopy(text_encoder), tokenizer=tokenizer,
        unet=copy.deepcopy(unet), scheduler=DDIMScheduler(**scheduler_config()), safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    declare_float32(folder / "text_encoder" / "config.json")


def train_unet(cfg: RunConfig) -> dict:
    """The denoiser and its text encoder (initialised from the toy CLIP's), trained jointly with
    epsilon prediction, min-SNR weighting, and 10% empty prompts for classifier-free guidance.
    The shipped pipeline carries the EMA weights (better on count than the raw ones)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPModel, CLIPTokenizer

    torch.manual_seed(cfg.seed)
    device = cfg.device
    pipe_dir, clip_dir = cfg.output_dir / "pipeline", cfg.output_dir / "clip"
    for needed, part in ((pipe_dir / "vae" / "config.json", "vae"), (clip_dir / "config.json", "clip")):
        if not needed.is_file():
            raise MissingWeightsError(f"unet training needs the {part} first: no {needed}; run "
                                      f"`python -m toy_build.train {part} --output-dir {cfg.output_dir}`")
    vae = AutoencoderKL.from_pretrained(pipe_dir / "vae", dtype=torch.float32).to(device).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    # Start from the contrastively trained text tower: it already separates the world's words.
    # (transformers ≥ 5 keeps it as a whole CLIPTextModel inside CLIPModel).
    text_encoder = CLIPModel.from_pretrained(clip_dir, dtype=torch.float32).text_model.to(device)
    unet = models.build_unet().to(device)
    # The training twin of the shipped DDIM scheduler (from_config drops the DDIM-only keys).
    noise_scheduler = DDPMScheduler.from_config(scheduler_config())
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)

    data = CaptionedLatents(vae, tokenizer, cfg)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    batch_size, base_lr, drop, snr_gamma = cfg.batch_size or 64, 1e-3, 0.1, 5.0
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=1e-2)
    ema_unet, ema_text = EMA(unet, 0.998), EMA(text_encoder, 0.998)
    scale = vae.config.scaling_factor
    # All randomness of the loop comes from this generator, drawn on the CPU so that a run
    # draws the same noise, timesteps and batches on any device.
    gen = torch.Generator().manual_seed(cfg.seed)
    warmup = 200
    budget, losses, last, snapshots = Budget(cfg.minutes, cfg.steps), [], [0.0], {}
    unet.train()
    text_encoder.train()
    while budget.running():
        warmup_lr(opt, base_lr, budget.step, warmup)
        latents, ids = data.batch(gen, batch_size, drop)
        latents = latents * scale
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        # Min-SNR-γ weighting (Hang et al. 2023) for epsilon prediction: min(SNR, γ) / SNR.
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        weight = torch.clamp(snr, max=snr_gamma) / snr
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        optimizer_step(opt, loss, params)
        # The averages read the step count before this step is counted (their warm-up schedule).
        ema_unet.update(unet, budget.step)
        ema_text.update(text_encoder, budget.step)
        record_step(budget, last, losses, loss.item())
        if budget.step in cfg.snapshots:
            folder = cfg.output_dir / "snapshots" / f"unet-step{budget.step}"
            save_pipeline(folder, vae, ema_text.module, tokenizer, ema_unet.module)
            paused = time.monotonic()
            snapshots[budget.step] = measure_pipeline(folder, cfg.output_dir / "detector", device, cfg.eval_samples,
                                                   cfg.seed + 2000)
            print(f"  snapshot {budget.step}: {snapshots[budget.step]}", flush=True)
            # Measuring is not training: keep it out of the time budget.
            budget.start += time.monotonic() - paused
    train_seconds = budget.elapsed

    save_pipeline(pipe_dir, vae, ema_text.module, tokenizer, ema_unet.module)
    quality = measure_pipeline(pipe_dir, cfg.output_dir / "detector", device, cfg.eval_samples, cfg.seed + 2000)
    result = dict(steps=budget.step, batch_size=batch_size, train_seconds=round(train_seconds),
                  cache_seconds=round(data.seconds), cache_size=cfg.cache_size,
                  params=dict(unet=models.n_params(unet), text_encoder=models.n_params(text_encoder)),
                  loss_curve=loss_curve(losses), quality=quality, saved=str(pipe_dir))
    if snapshots:
        result["snapshots"] = snapshots
    return result


# ----------------------------------------------------------------------------- detector


# Samples the detector learns from, labelled as the world-rules counter reads them: (name, eta,
# guidance scale, how many, times --sample-scale). eta 1 is the aligner's training sampler,
# eta 0 plain DDIM (what users generate with); the count reward must read the model's own
# images, touching objects included, not only clean scenes.
DETECTOR_SAMPLERS = (("eta1_cfg7.5", 1.0, 7.5, 2560), ("eta0_cfg7.5", 0.0, 7.5, 1024), ("eta1_cfg5", 1.0, 5.0, 512))
# Per LoRA given with --loras (aligned models draw differently: the detector must hold there too).
DETECTOR_LORA_SAMPLES = 512


def _detector_samples(pipe, cfg: RunConfig, specs: list, seed: int, log: dict) -> list:
    from toy_build import detector
    from toy_build.quality import balanced_prompts, sample

    out = []
    runs = [(name, None, eta, scale, n) for name, eta, scale, n in DETECTOR_SAMPLERS]
    runs += [(f"lora {path}", path, 1.0, 7.5, DETECTOR_LORA_SAMPLES) for path in cfg.loras]
    for i, (name, lora, eta, scale, n) in enumerate(runs):
        n = max(1, round(n * cfg.sample_scale))
        if lora is not None:
            pipe.load_lora_weights(lora)
        prompts = balanced_prompts(n, seed=seed + i, specs=specs)
        images = sample(pipe, prompts, seed=seed + 100 * i, eta=eta, guidance_scale=scale, batch_size=cfg.sample_batch)
        if lora is not None:
            pipe.unload_lora_weights()
        examples, stats = detector.counter_labelled(images, prompts, f"samples {name} (counter labels)")
        log[name] = stats
        print(f"  {name}: {stats['samples']} samples, {stats['ambiguous']} ambiguous, {stats['merged_regions']} "
              f"merged regions (one box each)", flush=True)
        out.append(examples)
    return out


def train_detector(cfg: RunConfig) -> dict:
    """An ultralytics YOLO trained on scenes, VAE round trips of scenes, and the toy pipeline's
    own samples labelled by the world-rules counter; exported to the count reward's contract:
    `detector/model.yaml` + `detector/model.safetensors` (fp16). Needs the pipeline."""
    from diffusers import StableDiffusionPipeline

    from toy_build import detector
    from alignkit.toy.prompts import EVAL_COMBINATIONS
    from toy_build.quality import balanced_prompts, sample

    pipe_dir = cfg.output_dir / "pipeline"
    if not (pipe_dir / "model_index.json").is_file():
        raise MissingWeightsError(f"the detector learns from the pipeline's samples: train it first "
                                  f"(python -m toy_build.train unet --output-dir {cfg.output_dir})")
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, dtype=torch.float32).to(cfg.device)
    pipe.set_progress_bar_config(disable=True)
    # Alignment's held-out prompts stay out of the detector's data too.
    specs = [s for s in world.all_specs() if (s.colour, s.background) not in EVAL_COMBINATIONS]
    folder = cfg.output_dir / "detector"
    rng = np.random.default_rng(cfg.seed)
    samples_log: dict = {}
    train = [detector.rendered_examples(3000, rng), detector.round_trip_examples(pipe.vae, 1000, rng),
             *_detector_samples(pipe, cfg, specs, cfg.seed, samples_log)]
    val_prompts = balanced_prompts(max(16, round(256 * cfg.sample_scale)), cfg.seed + 7, specs)
    val_samples, _ = detector.counter_labelled(sample(pipe, val_prompts, seed=cfg.seed + 7, eta=1.0,
                                                      batch_size=cfg.sample_batch), val_prompts, "val samples")
    val = [detector.rendered_examples(250, rng), val_samples]
    with tempfile.TemporaryDirectory(prefix="alignkit-toy-yolo-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "config"))
        data_yaml = detector.write_yolo_dataset(tmp / "data", train, val)
        t0 = time.monotonic()
        net, info = detector.fit(data_yaml, tmp / "runs", minutes=cfg.minutes, epochs=cfg.steps, seed=cfg.seed,
                                 threads=cfg.threads, device=cfg.device)
        train_seconds = time.monotonic() - t0
        detector.export(net, folder)
    # Reload through the public path: the figures below are those of the shipped files.
    reloaded = detector.load_detector(folder)
    quality = detector.count_accuracy(reloaded, n=cfg.eval_samples, seed=cfg.seed + 2000)
    # On fresh samples of every prompt (held-out ones included), at both samplers.
    for name, eta in (("eta1_cfg7.5", 1.0), ("eta0_cfg7.5", 0.0)):
        prompts = balanced_prompts(cfg.eval_samples, seed=cfg.seed + 3000)
        images = sample(pipe, prompts, seed=cfg.seed + 3000, eta=eta, batch_size=cfg.sample_batch)
        quality[f"counter_agreement_{name}"] = detector.counter_agreement(reloaded, images, prompts)
    # The exported fp16 files must find what the trained model found.
    scenes = world.generate(128, seed=cfg.seed + 3000).tensor()
    before = detector.detect(net.float().cpu().eval(), scenes)
    after = detector.detect(reloaded, scenes)
    quality["reload_same_detections"] = float(np.mean([
        sorted(a["classes"].tolist()) == sorted(b["classes"].tolist()) for a, b in zip(before, after)]))
    data = {part.source: len(part) for part in train}
    return dict(epochs=info["epochs"], train_images=sum(data.values()), data=data, samples=samples_log,
                train_seconds=round(train_seconds), params=models.n_params(reloaded), quality=quality,
                saved=str(folder))


# In dependency order: the UNet (and the flow transformer) read the VAE and the CLIP text tower;
# the detector learns from the UNet pipeline's samples.
TRAINERS = {"vae": train_vae, "clip": train_clip, "unet": train_unet, "detector": train_detector, "flow": train_flow}
# Default budgets (minutes) and seeds, as used for the shipped weights.
DEFAULTS = {"vae": (6.0, 0), "clip": (5.0, 1), "detector": (10.0, 3), "unet": (28.0, 2), "flow": (40.0, 4)}


def replay_command(part: str, cfg: RunConfig) -> str:
    """The command line that repeats a run (for the training log): device and workers always,
    the other options where they are set or differ from RunConfig's defaults."""
    default = {f.name: f.default for f in fields(RunConfig)}
    words = [f"python -m toy_build.train {part} --seed {cfg.seed}"]
    if cfg.steps:
        words.append(f"--steps {cfg.steps}")
    if cfg.minutes:
        words.append(f"--minutes {cfg.minutes:g}")
    words.append(f"--device {cfg.device} --workers {cfg.workers}")
    if cfg.batch_size:
        words.append(f"--batch-size {cfg.batch_size}")
    if cfg.loras:
        words.append(f"--loras {','.join(cfg.loras)}")
    for name in ("threads", "cache_size", "eval_samples", "sample_scale", "sample_batch"):
        if getattr(cfg, name) != default[name]:
            words.append(f"--{name.replace('_', '-')} {getattr(cfg, name)}")
    return " ".join(words)


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores (shared)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m toy_build.train", description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=[*TRAINERS, "all"])
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget (default per part)")
    parser.add_argument("--steps", type=int, default=None, help="exact steps (detector: epochs); --minutes then only caps the run")
    parser.add_argument("--seed", type=int, default=None, help="seed (default per part)")
    parser.add_argument("--output-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=0, help="processes rendering scenes")
    parser.add_argument("--batch-size", type=int, default=None, help="default per part")
    parser.add_argument("--cache-size", type=int, default=65536, help="unet: scenes pre-encoded to latents")
    parser.add_argument("--snapshots", default="", help="unet: comma-separated steps to save and measure")
    parser.add_argument("--eval-samples", type=int, default=512)
    parser.add_argument("--loras", default="", help="detector: comma-separated LoRA folders of aligned toy models to sample")
    parser.add_argument("--sample-scale", type=float, default=1.0, help="detector: scale the pipeline samples it learns from")
    parser.add_argument("--sample-batch", type=int, default=64, help="detector: images per sampling batch")
    args = parser.parse_args(argv)
    try:
        run(args)
    except AlignkitError as exc:
        if debug_enabled():
            raise
        sys.exit(f"error: {exc}")


def run(args: argparse.Namespace) -> None:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise AlignkitError(f"--device {args.device}: no CUDA device is visible here; use --device cpu")
    if args.steps is not None and args.steps < 1 or args.minutes is not None and args.minutes <= 0:
        raise AlignkitError("--steps and --minutes must be positive")
    torch.set_num_threads(args.threads)
    parts = list(TRAINERS) if args.part == "all" else [args.part]
    for part in parts:
        minutes, seed = DEFAULTS[part]
        # With --steps the run is defined by its steps; --minutes then only caps it.
        cap = args.minutes if args.minutes is not None else (None if args.steps else minutes)
        cfg = RunConfig(part=part, minutes=cap,
                        seed=args.seed if args.seed is not None else seed, output_dir=args.output_dir,
                        steps=args.steps, threads=args.threads, eval_samples=args.eval_samples,
                        device=args.device, workers=args.workers, batch_size=args.batch_size,
                        snapshots=tuple(int(x) for x in args.snapshots.split(",") if x), cache_size=args.cache_size,
                        loras=tuple(x for x in args.loras.split(",") if x), sample_scale=args.sample_scale,
                        sample_batch=args.sample_batch)
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        print(f"[{part}] training for {cfg.steps} steps / {cfg.minutes} min, seed {cfg.seed}, on {cfg.device}",
              flush=True)
        start = time.monotonic()
        result = TRAINERS[part](cfg)
        result["total_seconds"] = round(time.monotonic() - start)
        command = replay_command(part, cfg)
        entry = dict(command=command, config={k: (str(v) if isinstance(v, Path) else v)
                                              for k, v in asdict(cfg).items()},
                     machine=_machine(cfg.device), torch=torch.__version__,
                     date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **result)
        train_log.record(cfg.output_dir, part, entry)
        print(f"[{part}] done in {result['total_seconds']} s: {result['quality']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
