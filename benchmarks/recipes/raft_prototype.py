"""Prototype: reward-filtered fine-tuning (RAFT, Dong et al. 2023) of the toy model on the count.

Rounds of: sample N images with the current LoRA (DDIM eta 1), keep those whose detector NMS count
equals the prompt's number (optionally: and whose boxes do not touch), then fine-tune the LoRA with
the plain denoising loss on the kept latents (no VAE encode: the sampler's final latents), timesteps
drawn from [t_lo, 1000). Writes a bare LoRA folder for `alignkit eval --model toy --reward count`.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--samples", type=int, default=512)
p.add_argument("--sft-steps", type=int, default=200)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--t-lo", type=int, default=0)
p.add_argument("--gap", type=float, default=-1.0, help="min box gap in px; <0: no separation filter")
p.add_argument("--steps", type=int, default=20)
p.add_argument("--rank", type=int, default=4)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--device", default="cpu")
p.add_argument("--cfg-drop", type=float, default=0.1)
p.add_argument("--keep-buffer", type=int, default=1)
p.add_argument("--balance", type=int, default=1)
p.add_argument("--min-snr", type=float, default=0.0)
args = p.parse_args()

from alignkit import toy
from alignkit.aligner.lora import add_lora, save_lora
from alignkit.aligner.pipeline import load_pipeline
from alignkit.aligner.sampler import DDIMSampler
from alignkit.prompts import load_prompt_set
from alignkit.rewards import load_reward

torch.manual_seed(args.seed)
random.seed(args.seed)
dev = torch.device(args.device)
loaded = load_pipeline(str(toy.pipeline_path()))
loaded.to(dev)
pipe = loaded.pipe
unet = pipe.unet
targets = list(loaded.family.lora_targets)
params = add_lora(unet, args.rank, float(args.rank), targets)
res = loaded.native_resolution
sampler = DDIMSampler(loaded, res, args.steps, 7.5, 1.0, gradient_checkpointing=False, checkpoint_vae=False)
reward = load_reward("count", device=dev)
prompts = load_prompt_set("toy_counting").train
opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
sched = pipe.scheduler
alphas = sched.alphas_cumprod.to(dev)
gen = torch.Generator().manual_seed(args.seed)
log = []


def gaps_ok(boxes: torch.Tensor, gap: float) -> bool:
    if gap < 0 or len(boxes) < 2:
        return True
    b = boxes[:, :4]
    dx = torch.maximum(b[:, None, 0], b[None, :, 0]) - torch.minimum(b[:, None, 2], b[None, :, 2])
    dy = torch.maximum(b[:, None, 1], b[None, :, 1]) - torch.minimum(b[:, None, 3], b[None, :, 3])
    d = torch.maximum(dx, dy)
    d.fill_diagonal_(1e9)
    return bool(d.min() >= gap)


@torch.no_grad()
def sample_round(n):
    keep_lat, keep_prompt, correct = [], [], 0
    unet.eval()
    for start in range(0, n, 64):
        b = min(64, n - start)
        picks = [prompts[i] for i in torch.randint(len(prompts), (b,), generator=gen).tolist()]
        traj = sampler.draw(gen, b, 0)
        out = sampler.sample(unet, sampler.encode(picks, dev), traj)
        numbers, classes = reward.parse(picks)
        decoded = reward.head_outputs(out.images)[0]
        dets = reward._nms(decoded, conf_thres=reward.config.conf, iou_thres=reward.config.iou)
        for j, (det, c, nb) in enumerate(zip(dets, classes, numbers)):
            mine = det[det[:, 5].long() == int(c)]
            ok = len(mine) == int(nb)
            correct += ok
            if ok and gaps_ok(mine, args.gap):
                keep_lat.append(out.latents[j].detach().cpu())
                keep_prompt.append(picks[j])
    return keep_lat, keep_prompt, correct / n


buf_lat, buf_prompt = [], []
t0 = time.time()
for r in range(args.rounds):
    ts = time.time()
    lat, pr, acc = sample_round(args.samples)
    if not args.keep_buffer:
        buf_lat, buf_prompt = [], []
    buf_lat += lat
    buf_prompt += pr
    by_prompt = {}
    for i, q in enumerate(buf_prompt):
        by_prompt.setdefault(q, []).append(i)
    keys = list(by_prompt)
    tsample = time.time() - ts
    unet.train()
    ts = time.time()
    losses = []
    for s in range(args.sft_steps):
        # Balanced over prompts: a prompt, then one of its kept samples.
        if args.balance:
            idx = [random.choice(by_prompt[random.choice(keys)]) for _ in range(args.batch)]
        else:
            idx = [random.randrange(len(buf_lat)) for _ in range(args.batch)]
        x0 = torch.stack([buf_lat[i] for i in idx]).to(dev)
        ps = [buf_prompt[i] for i in idx]
        with torch.no_grad():
            cond = sampler.encode(ps, dev).embeds  # [uncond; cond]
            uncond, text = cond.chunk(2)
            drop = (torch.rand(len(ps), generator=gen) < args.cfg_drop).to(dev).view(-1, 1, 1)
            emb = torch.where(drop, uncond, text)
        t = torch.randint(args.t_lo, 1000, (len(ps),), generator=gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=emb, return_dict=False)[0]
        if args.min_snr > 0:
            snr = a.view(-1) / (1 - a.view(-1))
            w = torch.clamp(snr, max=args.min_snr) / snr
            loss = (w * F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        else:
            loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    row = {"round": r, "kept": len(lat), "buffer": len(buf_lat), "detector_acc": acc, "sample_s": tsample,
           "sft_s": time.time() - ts, "loss": sum(losses) / max(1, len(losses)), "elapsed": time.time() - t0}
    print(json.dumps(row), flush=True)
    log.append(row)

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
save_lora(type(pipe), unet, out)
(out / "raft_log.json").write_text(json.dumps({"args": vars(args), "rounds": log}, indent=1))
print("saved", out, "in", round(time.time() - t0, 1), "s")
