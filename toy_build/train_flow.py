"""The flow-matching toy model: an SD3-format pipeline on the toy world (`train.py flow`).

Why SD3's format and not FLUX's: SD3 runs without T5 (its model_index lists none and the
pipeline feeds zero tokens in its place), so the toy needs no second text model; its two CLIP
slots both hold the toy CLIP's text tower, and classifier-free guidance is SD3's batched one,
as on the real models. FLUX would need a trained T5 and its guidance distillation.

Training is SD3's recipe, scaled down: rectified flow (x_t = (1 - s) x_0 + s e, the transformer
predicts e - x_0), s drawn logit-normal (Esser et al. 2024), 10% empty prompts for guidance,
the text tower trained jointly from the toy CLIP's, EMA weights shipped.

The pipeline feeds 256 identical zero tokens where T5 would go (its default
max_sequence_length); they stay identical through every block, so attending to them equals
attending to one of them with its score raised by log 256. Training uses that one token
(`RepeatedTokenAttention`), four times cheaper on a CPU; the shipped model runs with
diffusers' own attention and the 256 tokens, and a test checks the two agree.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from alignkit.errors import MissingWeightsError
from alignkit.toy import world
from toy_build import models
from toy_build.training import (EMA, Budget, CaptionedLatents, RunConfig, record_step, loss_curve, optimizer_step,
                                declare_float32, measure_pipeline, to_model_range, warmup_lr)

# Zero tokens the SD3 pipeline puts in T5's place (its default max_sequence_length).
T5_ZERO_TOKENS = 256
# No timestep shift: SD3's 3.0 is for 128x128 latents; the toy's are 16x16.
SCHEDULER_SHIFT = 1.0


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, shift=SCHEDULER_SHIFT)


class RepeatedTokenAttention:
    """diffusers' JointAttnProcessor2_0 where the last context token stands for `copies` identical ones.

    Identical keys and values repeated c times weigh as one key whose score is raised by log c,
    so an additive bias on that key gives the same attention as the repeated tokens.
    """

    def __init__(self, copies: int):
        self.log_copies = math.log(copies)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch, n_image = hidden_states.shape[:2]

        def heads(x):
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        ctx_q, ctx_k = heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))
        ctx_v = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            ctx_q, ctx_k = attn.norm_added_q(ctx_q), attn.norm_added_k(ctx_k)
        query, key, value = (torch.cat(pair, dim=2) for pair in ((query, ctx_q), (key, ctx_k), (value, ctx_v)))
        bias = torch.zeros(1, key.shape[2], dtype=query.dtype, device=query.device)
        bias[:, -1] = self.log_copies
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(query.dtype)
        image, context = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](image)), context


def clip_text_tower(clip_dir):
    """The toy CLIP's text tower and its projection, as the CLIPTextModelWithProjection SD3 holds."""
    from transformers import CLIPModel, CLIPTextModelWithProjection

    clip = CLIPModel.from_pretrained(clip_dir, dtype=torch.float32)
    config = clip.config.text_config
    config.projection_dim = clip.config.projection_dim
    tower = CLIPTextModelWithProjection(config)
    tower.text_model.load_state_dict(clip.text_model.state_dict())
    tower.text_projection.load_state_dict(clip.text_projection.state_dict())
    return tower


def context_of(text_encoder, ids: torch.Tensor, zero_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's joint context and pooled vector, with the toy CLIP tower in both CLIP slots, as
    `StableDiffusion3Pipeline.encode_prompt` builds them (penultimate hidden states, projected
    pooled output, T5's slot all zeros)."""
    out = text_encoder(ids, output_hidden_states=True)
    hidden, pooled = out.hidden_states[-2], out.text_embeds
    clip = torch.cat([hidden, hidden], dim=-1)
    zeros = clip.new_zeros(clip.shape[0], zero_tokens, clip.shape[-1])
    return torch.cat([clip, zeros], dim=1), torch.cat([pooled, pooled], dim=-1)


def flow_vae(vae, images: torch.Tensor):
    """Give the toy VAE SD3's latent normalisation, (z - shift_factor) * scaling_factor, measured
    on `images`; returns the same module."""
    with torch.no_grad():
        latents = vae.encode(to_model_range(images, next(vae.parameters()).device)).latent_dist.sample()
    vae.register_to_config(shift_factor=round(latents.mean().item(), 5),
                           scaling_factor=round(1.0 / latents.std().item(), 5))
    return vae


def save_flow_pipeline(folder, vae, text_encoder, tokenizer, transformer) -> None:
    """A plain diffusers StableDiffusion3Pipeline folder in fp16, without T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    text = copy.deepcopy(text_encoder)
    pipe = StableDiffusion3Pipeline(
        transformer=copy.deepcopy(transformer), scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config()),
        vae=copy.deepcopy(vae), text_encoder=text, tokenizer=tokenizer, text_encoder_2=copy.deepcopy(text),
        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.transformer.set_attn_processor(JointAttnProcessor2_0())  # the 256 zero tokens, as users run it
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    for name in ("text_encoder", "text_encoder_2"):
        declare_float32(folder / name / "config.json")


def train_flow(cfg: RunConfig) -> dict:
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    torch.manual_seed(cfg.seed)
    device = cfg.device
    vae_dir, clip_dir = cfg.output_dir / "pipeline" / "vae", cfg.output_dir / "clip"
    for needed, part in ((vae_dir / "config.json", "vae"), (clip_dir / "config.json", "clip")):
        if not needed.is_file():
            raise MissingWeightsError(f"flow training needs the {part} first: no {needed}; run "
                                      f"`python -m toy_build.train {part} --output-dir {cfg.output_dir}`")
    scenes = torch.from_numpy(world.generate(512, seed=cfg.seed + 1000).images).permute(0, 3, 1, 2)
    vae = flow_vae(AutoencoderKL.from_pretrained(vae_dir, dtype=torch.float32).to(device).eval(), scenes)
    vae.requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    text_encoder = clip_text_tower(clip_dir).to(device)
    transformer = models.build_flow_transformer().to(device)
    transformer.set_attn_processor(RepeatedTokenAttention(T5_ZERO_TOKENS))

    data = CaptionedLatents(vae, tokenizer, cfg)

    params = list(transformer.parameters()) + list(text_encoder.parameters())
    batch_size, base_lr, drop, warmup = cfg.batch_size or 32, 1e-3, 0.1, 200
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=1e-2)
    ema_transformer, ema_text = EMA(transformer, 0.998), EMA(text_encoder, 0.998)
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    gen = torch.Generator().manual_seed(cfg.seed)
    budget, losses, last = Budget(cfg.minutes, cfg.steps), [], [0.0]
    transformer.train()
    text_encoder.train()
    while budget.running():
        warmup_lr(opt, base_lr, budget.step, warmup)
        latents, ids = data.batch(gen, batch_size, drop)
        x0 = (latents - shift) * scale
        noise = torch.randn(x0.shape, generator=gen).to(device)
        # Logit-normal sigmas (SD3): most steps where the image takes shape, none wasted at the ends.
        sigma = torch.sigmoid(torch.randn(batch_size, generator=gen)).to(device)
        s = sigma.view(-1, 1, 1, 1)
        context, pooled = context_of(text_encoder, ids, zero_tokens=1)
        pred = transformer(hidden_states=(1 - s) * x0 + s * noise, timestep=sigma * 1000,
                           encoder_hidden_states=context, pooled_projections=pooled).sample
        loss = F.mse_loss(pred, noise - x0)
        optimizer_step(opt, loss, params)
        ema_transformer.update(transformer, budget.step)
        ema_text.update(text_encoder, budget.step)
        record_step(budget, last, losses, loss.item())
    train_seconds = budget.elapsed

    folder = cfg.output_dir / "pipeline-flow"
    save_flow_pipeline(folder, vae, ema_text.module, tokenizer, ema_transformer.module)
    quality = measure_pipeline(folder, cfg.output_dir / "detector", device, cfg.eval_samples, cfg.seed + 2000)
    return dict(steps=budget.step, batch_size=batch_size, train_seconds=round(train_seconds),
                cache_seconds=round(data.seconds), cache_size=cfg.cache_size,
                params=dict(transformer=models.n_params(transformer), text_encoder=models.n_params(text_encoder)),
                vae_shift_factor=shift, vae_scaling_factor=scale,
                loss_curve=loss_curve(losses), quality=quality, saved=str(folder))
