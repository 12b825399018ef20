"""The flow-matching sampler on tiny SD3 and FLUX.1 pipelines (CPU, seconds): it equals the
diffusers pipeline without gradients, its checkpointed gradients equal unchecked ones, and
truncation and DRaFT-LV mean what they mean for DDIM."""

import pytest
import torch

from alignkit.families import SD3_TARGETS, FLUX_TARGETS
from alignkit.aligner.flow_sampler import FlowMatchSampler, flow_schedule
from alignkit.aligner.lora import add_lora
from alignkit.aligner.pipeline import PipelineError, check_resolution, load_pipeline
from alignkit.aligner.truncation import parse_truncation
from alignkit.testing import RESOLUTION

PROMPTS = ["two red circles", "a blue square"]
# Short T5 sequences: the tiny pipelines' tokenizers split into characters.
SEQ = 32
CPU = torch.device("cpu")


def _sampler(path, steps=3, guidance=3.0, checkpointing=True, lora=False, **kw):
    loaded = load_pipeline(str(path))
    params = []
    if lora:
        torch.manual_seed(0)
        targets = FLUX_TARGETS if loaded.family.name == "flux" else SD3_TARGETS
        params = add_lora(loaded.denoiser, rank=4, alpha=4, target_modules=targets)
        with torch.no_grad():  # a non-zero B so that LoRA changes the output from the first step
            for p in params:
                p.normal_(std=0.1)
    sampler = FlowMatchSampler(loaded, RESOLUTION, steps, guidance, gradient_checkpointing=checkpointing,
                               max_sequence_length=SEQ, **kw)
    return loaded, params, sampler


def _grads(sampler, params, k, renoise=0):
    for p in params:
        p.grad = None
    traj = sampler.draw(torch.Generator().manual_seed(0), 2, k, renoise)
    out = sampler.sample(sampler.loaded.denoiser, sampler.encode(PROMPTS, CPU), traj)
    out.images.mean().backward()
    return [p.grad.clone() for p in params]


# ---- equality with the diffusers pipeline ------------------------------------------------------

# Same seed, settings and fp32 CPU maths: the sampler does the pipeline's arithmetic in the
# pipeline's order, so the images agree to float32 rounding. Tolerance 1e-5 absolute on [0,1]
# pixels (measured: 0, bit-identical, on this machine).
@pytest.mark.parametrize("fixture, guidance", [("tiny_sd3", 3.0), ("tiny_sd3", 1.0), ("tiny_flux", 3.5),
                                               ("tiny_flux_schnell", 0.0)])
def test_sampler_equals_the_pipeline_without_gradients(fixture, guidance, request):
    loaded, _, sampler = _sampler(request.getfixturevalue(fixture), steps=4, guidance=guidance)
    traj = sampler.draw(torch.Generator().manual_seed(7), 2, k=4)
    with torch.no_grad():
        ours = sampler.sample(loaded.denoiser, sampler.encode(PROMPTS, CPU), traj).images
    theirs = loaded.pipe(prompt=PROMPTS, num_inference_steps=4, guidance_scale=guidance, height=RESOLUTION,
                         width=RESOLUTION, generator=torch.Generator().manual_seed(7), max_sequence_length=SEQ,
                         output_type="pt").images
    assert ours.shape == theirs.shape == (2, 3, RESOLUTION, RESOLUTION)
    assert ours.std() > 0.01  # not a constant image that would match anything
    print(f"{fixture}: max |sampler - pipeline| = {(ours - theirs).abs().max().item():.3g}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_flux_sigmas_carry_the_resolution_dependent_shift(tiny_flux, tiny_flux_schnell):
    """FLUX.1-dev's sigmas shift with the token count (mu); schnell's are the plain linear ones."""
    dev = load_pipeline(str(tiny_flux))
    _, small = flow_schedule(dev, 4, latent_size=4)
    _, large = flow_schedule(dev, 4, latent_size=128)  # 1024 px: 4096 tokens, mu = max_shift
    assert small[0] == large[0] == 1.0 and small[-1] == large[-1] == 0.0
    assert all(b > a for a, b in zip(small[1:-1], large[1:-1]))  # more tokens: more time at high noise
    _, plain = flow_schedule(load_pipeline(str(tiny_flux_schnell)), 4, latent_size=4)
    torch.testing.assert_close(torch.tensor(plain), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_euler_update_matches_the_scheduler_step(tiny_sd3):
    from diffusers import FlowMatchEulerDiscreteScheduler

    loaded, _, sampler = _sampler(tiny_sd3, steps=5)
    reference = FlowMatchEulerDiscreteScheduler.from_config(loaded.pipe.scheduler.config)
    reference.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(reference.timesteps):
        x, v = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
        expected = reference.step(v, t, x).prev_sample
        torch.testing.assert_close(sampler.euler_update(v, x, i), expected, rtol=0, atol=0)


# ---- truncated backprop, checkpointing ----------------------------------------------------------

@pytest.mark.parametrize("fixture", ["tiny_sd3", "tiny_flux"])
def test_gradient_checkpointing_is_exact(fixture, request):
    _, params, sampler = _sampler(request.getfixturevalue(fixture), steps=3, lora=True)
    checked = _grads(sampler, params, k=3)
    sampler.checkpoint_vae = False
    steps_only = _grads(sampler, params, k=3)
    sampler.gradient_checkpointing = False
    unchecked = _grads(sampler, params, k=3)
    assert sum(g.abs().sum() for g in unchecked) > 0
    for a, b, c in zip(checked, steps_only, unchecked):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)


@pytest.mark.parametrize("fixture, per_step", [("tiny_sd3", 4), ("tiny_flux", 2)])
def test_only_the_last_k_steps_run_with_gradients(fixture, per_step, request):
    """SD3 runs CFG as one batch of 2B; FLUX one batch of B with the guidance embedding."""
    _, params, sampler = _sampler(request.getfixturevalue(fixture), steps=4, checkpointing=False, lora=True)
    calls = []
    handle = sampler.loaded.denoiser.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append((torch.is_grad_enabled(), kwargs["hidden_states"].shape[0])),
        with_kwargs=True)
    traj = sampler.draw(torch.Generator().manual_seed(0), 2, 2)
    out = sampler.sample(sampler.loaded.denoiser, sampler.encode(PROMPTS, CPU), traj)
    handle.remove()
    assert calls == [(False, per_step)] * 2 + [(True, per_step)] * 2
    assert out.images.requires_grad and out.images.shape == (2, 3, RESOLUTION, RESOLUTION)


@pytest.mark.parametrize("fixture", ["tiny_sd3", "tiny_flux"])
def test_draft_lv_renoises_the_final_sample_and_backprops_one_step(fixture, request):
    _, params, sampler = _sampler(request.getfixturevalue(fixture), steps=3, lora=True)
    policy = parse_truncation("draft-lv:3", 3)
    traj = sampler.draw(torch.Generator().manual_seed(0), 2, policy.draw(None, 3), policy.renoise)
    cond = sampler.encode(PROMPTS, CPU)
    calls = []
    handle = sampler.loaded.denoiser.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append((torch.is_grad_enabled(), kwargs["hidden_states"].shape[0])),
        with_kwargs=True)
    out = sampler.sample(sampler.loaded.denoiser, cond, traj)
    handle.remove()
    cfg = 2 if sampler.do_cfg else 1
    # 3 steps without grad at batch 2, then one checkpointed step on 3 re-noised copies (run
    # again in backward); the images are the 3 copies, copy-major.
    assert calls[:4] == [(False, 2 * cfg)] * 3 + [(True, 6 * cfg)]
    assert out.repeats == 3 and out.images.shape[0] == 6
    # The re-noised copy is x = (1 - s) x0 + s eps at the last sigma: check it against a plain run.
    with torch.no_grad():
        x0 = sampler.sample(sampler.loaded.denoiser, cond, sampler.draw(torch.Generator().manual_seed(0), 2, 3)).latents
        sigma = sampler.sigmas[-2]
        eps = traj.renoise[1]
        noisy = sampler.pack((1 - sigma) * x0 + sigma * eps)
        expected = sampler.decode(sampler.unpack(sampler.step(sampler.loaded.denoiser, noisy, 2, cond)))
    torch.testing.assert_close(out.images[2:4].detach(), expected, rtol=1e-5, atol=1e-5)
    out.images.mean().backward()
    assert all(p.grad is not None for p in params) and sum(p.grad.abs().sum() for p in params) > 0


# ---- families, LoRA, sizes ---------------------------------------------------------------------

def test_only_lora_weights_get_gradients(tiny_flux):
    _, params, sampler = _sampler(tiny_flux, steps=2, lora=True)
    _grads(sampler, params, k=2)
    transformer = sampler.loaded.denoiser
    for name, p in transformer.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
    # FLUX's LoRA also wraps the feed-forwards (diffusers' train_dreambooth_lora_flux.py targets).
    assert any("ff.net.2.lora_A" in n for n, _ in transformer.named_parameters())
    for module in (sampler.pipe.vae, sampler.pipe.text_encoder, sampler.pipe.text_encoder_2):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())


def test_families_and_their_size_steps(tiny_sd3, tiny_flux):
    sd3, flux = load_pipeline(str(tiny_sd3)), load_pipeline(str(tiny_flux))
    assert (sd3.family.name, flux.family.name) == ("sd3", "flux")
    assert type(sd3.denoiser).__name__ == "SD3Transformer2DModel"
    # VAE factor 8 x patch 2 (SD3), x 2x2 packing (FLUX): 16, as for the real models.
    assert sd3.size_multiple == flux.size_multiple == 16
    check_resolution(48, flux)
    with pytest.raises(PipelineError, match=r"--resolution 40 is not a multiple of 16 \(the VAE factor 8 x FLUX's "
                                            r"2x2 latent packing\); use 32 or 48"):
        check_resolution(40, flux)


def test_t5_stays_on_the_cpu_between_encodes(tiny_sd3, monkeypatch):
    """--offload-t5: T5 is moved to the device for each encode and back to the CPU after it."""
    loaded, _, sampler = _sampler(tiny_sd3, offload_t5=True)
    moves = []
    original = loaded.t5.to
    monkeypatch.setattr(loaded.t5, "to", lambda device: (moves.append(str(device)), original(device))[1])
    sampler.encode(PROMPTS, torch.device("cpu"))
    assert moves == ["cpu", "cpu"]  # there and back (both the CPU here; a GPU run moves cuda, cpu)


def test_a_compiled_transformer_runs_only_the_steps_before_the_cut(tiny_flux):
    """`--compile-unet` on a flow model compiles the transformer for the no-grad steps; the
    steps with gradients stay eager, so images and LoRA gradients match the eager run."""
    _, params, sampler = _sampler(tiny_flux, steps=4, lora=True)
    model = sampler.loaded.denoiser
    traj = sampler.draw(torch.Generator().manual_seed(0), 2, 2)
    cond = sampler.encode(PROMPTS, CPU)
    eager = sampler.sample(model, cond, traj)
    eager.images.mean().backward()
    eager_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    compiled = torch.compile(model)
    calls = []
    handle = model.register_forward_pre_hook(lambda mod, args: calls.append(torch.is_grad_enabled()))
    with torch._dynamo.config.patch(disable=True):  # the routing is the test; inductor would take a minute
        fast = sampler.sample(model, cond, traj, nograd_unet=compiled)
    handle.remove()
    fast.images.mean().backward()
    assert calls == [False, False, True, True]
    torch.testing.assert_close(fast.images, eager.images, rtol=0, atol=0)
    for a, b in zip((p.grad for p in params), eager_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _held_for_backward(sampler, k):
    """Bytes of the distinct tensors autograd keeps between the forward and the backward (frozen
    weights excluded: they are held anyway): what grows with K unless steps are checkpointed."""
    model = sampler.loaded.denoiser
    weights = {p.untyped_storage().data_ptr() for m in sampler.pipe.components.values()
               if isinstance(m, torch.nn.Module) for p in m.parameters()}
    held = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            held[storage.data_ptr()] = storage.nbytes()
        return t

    traj = sampler.draw(torch.Generator().manual_seed(0), 2, k)
    cond = sampler.encode(PROMPTS, CPU)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sampler.sample(model, cond, traj)
    return sum(held.values())


@pytest.mark.parametrize("fixture", ["tiny_sd3", "tiny_flux"])
def test_checkpointing_keeps_what_backward_holds_flat_in_k(fixture, request):
    """Memory flat in K, counted exactly instead of read from a noisy RSS: with per-step
    checkpointing each extra step with gradients keeps only its input latents until the
    backward (which recomputes one step at a time); without, it keeps all its activations."""
    _, _, sampler = _sampler(request.getfixturevalue(fixture), steps=6, lora=True)
    ckpt_1, ckpt_t = _held_for_backward(sampler, 1), _held_for_backward(sampler, 6)
    sampler.gradient_checkpointing = sampler.checkpoint_vae = False
    plain_1, plain_t = _held_for_backward(sampler, 1), _held_for_backward(sampler, 6)
    print(f"{fixture}: held for backward, K=1 vs K=T=6: checkpointed {ckpt_1} -> {ckpt_t} B, "
          f"plain {plain_1} -> {plain_t} B")
    latents = 2 * sampler.latent_channels * sampler.latent_size ** 2 * 4  # one step's fp32 input
    assert ckpt_t - ckpt_1 == 5 * latents
    # The premise: without checkpointing each step adds its activations, orders of magnitude more.
    assert plain_t - plain_1 > 100 * (ckpt_t - ckpt_1)
