"""Deep reward supervision (`--truncation drtune:K[,SPAN]`, DRTune): K evenly spaced trained
steps, the denoiser's input detached at every step, on tiny SD, SDXL, SD3 and FLUX pipelines."""

import json

import pytest
import torch

from alignkit.aligner.lora import add_lora
from alignkit.aligner.pipeline import load_pipeline
from alignkit.aligner.sampler import DDIMSampler
from alignkit.aligner.truncation import TruncationError, parse_truncation
from alignkit.hub import load_state_dict
from alignkit.runfolder import LORA_FILE
from alignkit.testing import RESOLUTION
from cli_runner import run_cli

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
PROMPTS = ["two cats", "a red circle"]


def _setup(path, steps, eta=1.0, checkpointing=False, guidance=3.0):
    loaded = load_pipeline(str(path))
    torch.manual_seed(0)
    params = add_lora(loaded.pipe.unet, rank=4, alpha=4, target_modules=TARGETS)
    with torch.no_grad():  # a non-zero B, so that A gets a gradient too
        for p in params:
            p.normal_(std=0.1)
    return params, DDIMSampler(loaded, RESOLUTION, steps, guidance, eta, gradient_checkpointing=checkpointing)


def _traj(sampler, spec, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cut = parse_truncation(spec, sampler.num_steps).draw_cut(generator, sampler.num_steps)
    traj = sampler.draw(generator, len(PROMPTS), cut.k)
    traj.grad_steps, traj.stop_grad = cut.steps, cut.stop_grad
    return traj


def _grads(sampler, params, traj):
    for p in params:
        p.grad = None
    out = sampler.sample(sampler.pipe.unet, sampler.encode(PROMPTS, torch.device("cpu")), traj)
    out.images.mean().backward()
    return [p.grad.clone() for p in params]


# ---- the policy ----------------------------------------------------------------------------------

def test_steps_are_evenly_spaced_from_a_random_offset():
    g = torch.Generator().manual_seed(0)
    policy = parse_truncation("drtune:4", 20)
    cuts = [policy.draw_cut(g, 20) for _ in range(200)]
    assert all(c.k == 4 and c.stop_grad for c in cuts)
    # Stride T // K = 5; the offset takes every value in 0..4, so every step is trained sometimes.
    assert {c.steps for c in cuts} == {tuple(o + 5 * j for j in range(4)) for o in range(5)}
    # SPAN keeps the trained steps among the first SPAN (the high-noise part of the chain).
    early = parse_truncation("drtune:2,10", 20)
    assert {s for _ in range(100) for s in early.draw_cut(g, 20).steps} == set(range(10))
    # The last-K policies keep their cut: the last K steps, no detached input.
    last = parse_truncation("last:3", 20).draw_cut(g, 20)
    assert last.k == 3 and last.steps is None and not last.stop_grad


@pytest.mark.parametrize("spec, match", [
    ("drtune:0", "K must be at least 1"), ("drtune:21", "trains 21 steps but spreads them over 20"),
    ("drtune:3,30", "SPAN 30 is more than --num-inference-steps 20"), ("drtune:x", "malformed"),
    ("drtune:2,0", "SPAN must be at least 1"), ("drtune", "malformed"),
])
def test_bad_specs_are_one_line(spec, match):
    with pytest.raises(TruncationError, match=match) as info:
        parse_truncation(spec, 20)
    assert "\n" not in str(info.value)


# ---- the sampler -----------------------------------------------------------------------------------

def test_the_denoiser_never_sees_a_latent_that_requires_grad_and_the_first_step_trains(tiny_sd):
    params, sampler = _setup(tiny_sd, steps=6)
    calls = []
    handle = sampler.pipe.unet.register_forward_pre_hook(
        lambda mod, args: calls.append((torch.is_grad_enabled(), args[0].requires_grad)))
    traj = _traj(sampler, "drtune:3")
    traj.grad_steps = (0, 2, 4)  # offset 0: the very first, noisiest step is trained
    grads = _grads(sampler, params, traj)
    handle.remove()
    # One batched (CFG) UNet call per step; only the trained steps build a graph, and no call
    # takes an input that carries gradients (the chain's Jacobian product is cut).
    assert [g for g, _ in calls] == [True, False, True, False, True, False]
    assert not any(r for _, r in calls)
    assert all(g.abs().sum() > 0 for g in grads)


def test_first_step_alone_gets_the_reward_gradient_through_the_linear_path(tiny_sd):
    params, sampler = _setup(tiny_sd, steps=4)
    traj = _traj(sampler, "drtune:1")
    traj.grad_steps = (0,)  # only the first of 4 steps trains; 3 untrained steps follow it
    assert sum(g.abs().sum() for g in _grads(sampler, params, traj)) > 0


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_gradient_equals_a_hand_written_reference(tiny_sd, eta):
    """The same noise through diffusers' own DDIMScheduler.step, the stop-gradient written out."""
    from diffusers import DDIMScheduler

    params, sampler = _setup(tiny_sd, steps=5, eta=eta)
    traj = _traj(sampler, "drtune:2")
    ours = _grads(sampler, params, traj)

    unet, pipe = sampler.pipe.unet, sampler.pipe
    reference = DDIMScheduler.from_config(pipe.scheduler.config)
    reference.set_timesteps(5)
    cond = sampler.encode(PROMPTS, torch.device("cpu")).embeds
    for p in params:
        p.grad = None
    x = traj.latents
    for i, t in enumerate(reference.timesteps):
        with torch.set_grad_enabled(i in traj.grad_steps):
            inp = x.detach()
            out = unet(torch.cat([inp, inp]), t, encoder_hidden_states=cond).sample
            uncond, text = out.chunk(2)
            eps = uncond + 3.0 * (text - uncond)
        noise = traj.step_noise[i] if eta > 0 else None
        x = reference.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    images = (pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    images.mean().backward()
    for a, b in zip(ours, [p.grad for p in params]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_checkpointed_equals_unchecked(tiny_sd):
    params, sampler = _setup(tiny_sd, steps=6, checkpointing=True)
    traj = _traj(sampler, "drtune:3")
    with_ckpt = _grads(sampler, params, traj)
    sampler.gradient_checkpointing = sampler.checkpoint_vae = False
    without = _grads(sampler, params, traj)
    assert sum(g.abs().sum() for g in without) > 0
    for a, b in zip(with_ckpt, without):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _saved_bytes(sampler, params, traj) -> int:
    """Bytes autograd keeps for backward during one sampled batch."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sampler.sample(sampler.pipe.unet, sampler.encode(PROMPTS, torch.device("cpu")), traj)
    return total


def test_memory_grows_with_k_not_with_the_number_of_steps(tiny_sd):
    saved = {}
    for steps in (4, 8, 16):
        params, sampler = _setup(tiny_sd, steps=steps, checkpointing=True)
        traj = _traj(sampler, "drtune:2")
        traj.grad_steps = (0, 1)  # the same two trained steps, then 2, 6 or 14 untrained ones
        saved[steps] = _saved_bytes(sampler, params, traj)
    latent = 2 * sampler.latent_channels * sampler.latent_size ** 2 * 4
    # An untrained step after the first trained one keeps at most a latent-sized tensor (the
    # update's clamp of x0, where the scheduler clips), never the denoiser's activations.
    assert saved[16] - saved[4] <= 12 * 2 * latent, saved
    params, sampler = _setup(tiny_sd, steps=8, checkpointing=True)
    traj = _traj(sampler, "drtune:4")
    traj.grad_steps = (0, 1, 2, 3)
    assert _saved_bytes(sampler, params, traj) > saved[8]  # K does cost memory


# ---- training, every family --------------------------------------------------------------------

FAST = ["--reward", "brightness", "--prompt", "two red circles", "--num-inference-steps", "4",
        "--train-batch-size", "2", "--report-to", "none", "--seed", "0", "--learning-rate", "0.05"]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl", "tiny_sd3", "tiny_flux"])
def test_every_family_trains_with_drtune_and_logs_its_cut(fixture, test_rewards, tmp_path, request):
    model = request.getfixturevalue(fixture)
    run = tmp_path / "run"
    assert run_cli(["train", "--model", model, *FAST, "--truncation", "drtune:2", "--max-train-steps", "3",
                    "--checkpointing-steps", "0", "--output-dir", run]) == 0
    rows = _metrics(run)
    assert [r["k"] for r in rows] == [2, 2, 2]
    assert all(r["first_trained_step"] in (0, 1) for r in rows)
    state = load_state_dict(run / LORA_FILE)
    assert state and any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k or "lora.up" in k)


def test_stop_and_resume_equals_an_uninterrupted_run(tiny_sd, test_rewards, tmp_path):
    common = ["--model", tiny_sd, *FAST, "--truncation", "drtune:2", "--eta", "1.0", "--checkpointing-steps", "2"]
    assert run_cli(["train", *common, "--max-train-steps", "4", "--output-dir", tmp_path / "full"]) == 0
    assert run_cli(["train", *common, "--max-train-steps", "2", "--output-dir", tmp_path / "cut"]) == 0
    assert run_cli(["train", *common, "--max-train-steps", "4", "--output-dir", tmp_path / "cut",
                    "--resume-from-checkpoint", "latest"]) == 0
    full, resumed = (load_state_dict(tmp_path / name / LORA_FILE) for name in ("full", "cut"))
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)
    offsets = [r["first_trained_step"] for r in _metrics(tmp_path / "full")]
    assert offsets == [r["first_trained_step"] for r in _metrics(tmp_path / "cut")]


@pytest.mark.parametrize("spec", ["drtune:0", "drtune:9", "drtune:2;3"])
def test_a_bad_spec_writes_nothing(spec, tiny_sd, test_rewards, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_sd, *FAST, "--truncation", spec, "--output-dir", run]) != 0
    err = capsys.readouterr().err.strip()
    assert "--truncation" in err and len(err.splitlines()) == 1, err
    assert not run.exists()
