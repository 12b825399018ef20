"""The differentiable sampler, truncation and LoRA on tiny SD and SDXL pipelines (CPU, seconds)."""

import pytest
import torch

from alignkit.aligner.lora import add_lora
from alignkit.aligner.pipeline import PipelineError, check_resolution, load_pipeline
from alignkit.aligner.sampler import DDIMSampler
from alignkit.aligner.truncation import TruncationError, parse_truncation
from alignkit.testing import RESOLUTION

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _setup(path, steps=3, guidance=3.0, eta=1.0, checkpointing=True, seed=0):
    loaded = load_pipeline(str(path))
    torch.manual_seed(seed)
    params = add_lora(loaded.pipe.unet, rank=4, alpha=4, target_modules=TARGETS)
    with torch.no_grad():  # a non-zero B so that LoRA changes the output from the first step
        for p in params:
            p.normal_(std=0.1)
    sampler = DDIMSampler(loaded, RESOLUTION, steps, guidance, eta, gradient_checkpointing=checkpointing)
    return loaded, params, sampler


def _lora_grads(sampler, params, k, seed=0):
    unet = sampler.pipe.unet
    for p in params:
        p.grad = None
    traj = sampler.draw(torch.Generator().manual_seed(seed), 2, k)
    out = sampler.sample(unet, sampler.encode(["two cats", "a red circle"], torch.device("cpu")), traj)
    out.images.mean().backward()
    return [p.grad.clone() for p in params]


# ---- truncation --------------------------------------------------------------------------------

def test_truncation_parsing_and_k_mapping():
    g = torch.Generator().manual_seed(0)
    assert parse_truncation("full").draw(g, 7) == 7
    assert parse_truncation("last:3", 10).draw(g, 10) == 3
    assert parse_truncation("draft-lv:4").renoise == 4
    # AlignProp's default: cut index ~ N(42, 5) over 50 steps, K = 50 - cut, clamped to [1, 50].
    gauss = parse_truncation("gaussian:42,5", 50)
    ks = torch.tensor([gauss.draw(g, 50) for _ in range(4000)], dtype=torch.float)
    assert ks.min() >= 1 and ks.max() <= 50
    assert 7.5 < ks.mean() < 8.8 and 4.0 < ks.std() < 5.5
    # uniform:LO-HI draws the cut index; K = T - cut, so uniform:40-49 gives K in 1..10.
    uni = parse_truncation("uniform:40-49", 50)
    ks = [uni.draw(g, 50) for _ in range(2000)]
    assert set(ks) == set(range(1, 11))
    assert set(parse_truncation("uniform:0-60", 50).draw(g, 50) for _ in range(500)) <= set(range(1, 51))


@pytest.mark.parametrize("spec, match", [
    ("last:60", "backpropagates through 60 steps but --num-inference-steps is 50"),
    ("last:0", "at least 1"), ("uniform:9-3", "LO must not exceed HI"), ("gaussian:42", "malformed"),
    ("bogus:1", "unknown --truncation"), ("uniform:50-60", "always be clamped"),
])
def test_truncation_errors_are_one_line(spec, match):
    with pytest.raises(TruncationError, match=match) as info:
        parse_truncation(spec, 50)
    assert "\n" not in str(info.value)


# ---- DDIM --------------------------------------------------------------------------------------

@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_update_matches_diffusers_scheduler(tiny_sd, eta):
    from diffusers import DDIMScheduler

    loaded = load_pipeline(str(tiny_sd))
    sampler = DDIMSampler(loaded, RESOLUTION, 5, eta=eta)
    reference = DDIMScheduler.from_config(loaded.pipe.scheduler.config)
    reference.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(reference.timesteps):
        x, eps, noise = (torch.randn(2, 4, 16, 16, generator=g) for _ in range(3))
        expected = reference.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(sampler.ddim_update(eps, x, i, noise), expected, rtol=1e-5, atol=1e-5)


def test_scheduler_with_a_step_counter_is_swapped_for_ddim(tiny_sd, tmp_path):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "dpm")
    loaded = load_pipeline(str(tmp_path / "dpm"))
    assert type(loaded.pipe.scheduler) is DDIMScheduler
    torch.testing.assert_close(loaded.pipe.scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod)


def test_resolution_must_fit_the_downsampling(tiny_sd):
    loaded = load_pipeline(str(tiny_sd))
    check_resolution(32, loaded)
    check_resolution(30, loaded)  # a latent side of 15: the UNet passes explicit upsample sizes
    with pytest.raises(PipelineError, match="--resolution 31 is not a multiple of 2"):
        check_resolution(31, loaded)
    sampler = DDIMSampler(loaded, 30, 1, guidance_scale=1.0)
    traj = sampler.draw(torch.Generator().manual_seed(0), 1, 1)
    with torch.no_grad():
        images = sampler.sample(loaded.pipe.unet, sampler.encode(["a"], torch.device("cpu")), traj).images
    assert images.shape == (1, 3, 30, 30)


# ---- truncated backprop, checkpointing ----------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2])
def test_only_the_last_k_steps_run_with_gradients(tiny_sd, k):
    _, params, sampler = _setup(tiny_sd, steps=4, checkpointing=False)
    calls = []
    handle = sampler.pipe.unet.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    traj = sampler.draw(torch.Generator().manual_seed(0), 1, k)
    out = sampler.sample(sampler.pipe.unet, sampler.encode(["a cat"], torch.device("cpu")), traj)
    handle.remove()
    # One batched (CFG) UNet call per step; the steps before the cut build no graph at all.
    assert calls == [False] * (4 - k) + [True] * k
    assert out.images.requires_grad and out.images.shape == (1, 3, RESOLUTION, RESOLUTION)
    assert 0 <= out.images.min() and out.images.max() <= 1


def test_gradient_checkpointing_is_exact(tiny_sd):
    _, params, sampler = _setup(tiny_sd, steps=3, checkpointing=True)
    assert sampler.checkpoint_vae  # the default: the decode is checkpointed too
    vae_ckpt = _lora_grads(sampler, params, k=3)
    sampler.checkpoint_vae = False
    with_ckpt = _lora_grads(sampler, params, k=3)
    sampler.gradient_checkpointing = False
    without = _lora_grads(sampler, params, k=3)
    assert sum(g.abs().sum() for g in without) > 0
    for a, b, c in zip(with_ckpt, without, vae_ckpt):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(c, b, rtol=0, atol=0)


def test_draft_lv_backprops_through_the_last_step_of_n_copies(tiny_sd):
    _, params, sampler = _setup(tiny_sd, steps=3)
    calls = []
    handle = sampler.pipe.unet.register_forward_pre_hook(
        lambda mod, args: calls.append((torch.is_grad_enabled(), args[0].shape[0])))
    policy = parse_truncation("draft-lv:3", 3)
    traj = sampler.draw(torch.Generator().manual_seed(0), 2, policy.draw(None, 3), policy.renoise)
    out = sampler.sample(sampler.pipe.unet, sampler.encode(["a", "b"], torch.device("cpu")), traj)
    handle.remove()
    # 3 no-grad steps at batch 2 (x2 for CFG), then one step with grad on 3 re-noised copies.
    assert calls[:3] == [(False, 4)] * 3 and calls[3] == (True, 12)
    assert out.repeats == 3 and out.images.shape[0] == 6
    out.images.mean().backward()
    assert all(p.grad is not None for p in params)


# ---- LoRA ----------------------------------------------------------------------------------------

def test_only_lora_weights_get_gradients_and_change(tiny_sd):
    _, params, sampler = _setup(tiny_sd, steps=2)
    unet = sampler.pipe.unet
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    _lora_grads(sampler, params, k=2)
    for name, p in unet.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    for module in (sampler.pipe.vae, sampler.pipe.text_encoder):
        assert all(p.grad is None for p in module.parameters())
    optimizer.step()
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, _ in unet.named_parameters() if "lora_" in n}


# ---- SDXL ----------------------------------------------------------------------------------------

def test_sdxl_sampler_uses_pooled_embeddings_and_time_ids(tiny_sdxl):
    loaded, params, sampler = _setup(tiny_sdxl, steps=2)
    assert loaded.is_sdxl
    cond = sampler.encode(["two cats", "a dog"], torch.device("cpu"))
    assert cond.embeds.shape[0] == 4 and cond.added["text_embeds"].shape == (4, 32)
    assert cond.added["time_ids"].tolist()[0] == [32, 32, 0, 0, 32, 32]
    with_ckpt = _lora_grads(sampler, params, k=2)
    sampler.gradient_checkpointing = False
    without = _lora_grads(sampler, params, k=2)
    assert sum(g.abs().sum() for g in without) > 0
    for a, b in zip(with_ckpt, without):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_compiled_unet_runs_only_the_steps_before_the_cut(tiny_sd):
    """`--compile-unet`: the compiled module (same weights) takes the no-grad steps; the steps
    with gradients stay eager, so images and LoRA gradients match the eager run."""
    _, params, sampler = _setup(tiny_sd, steps=4)
    unet = sampler.pipe.unet
    traj = sampler.draw(torch.Generator().manual_seed(0), 2, 2)
    cond = sampler.encode(["two cats", "a red circle"], torch.device("cpu"))
    eager = sampler.sample(unet, cond, traj)
    eager.images.mean().backward()
    eager_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    # A real OptimizedModule (it has no truth value, which the sampler must not ask for); with
    # dynamo switched off it calls the module as is, so the test checks the routing in seconds.
    compiled = torch.compile(unet)
    calls = []
    handle = unet.register_forward_pre_hook(
        lambda mod, args: calls.append((torch.is_grad_enabled(), torch.is_tensor(args[1]))))
    with torch._dynamo.config.patch(disable=True):
        fast = sampler.sample(unet, cond, traj, nograd_unet=compiled)
    handle.remove()
    fast.images.mean().backward()
    # 2 no-grad steps through the compiled module, 2 eager with grad; timesteps are tensors, so
    # a compiled graph is not specialised (and recompiled) per timestep.
    assert calls == [(False, True), (False, True), (True, True), (True, True)]
    torch.testing.assert_close(fast.images, eager.images, rtol=0, atol=0)
    for a, b in zip((p.grad for p in params), eager_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
