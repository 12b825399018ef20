"""`alignkit train --algorithm grpo` (aligner/grpo.py): its maths against torch.distributions, the
flow SDE against Flow-GRPO's formula, and end to end on tiny SD, SDXL, SD3 and FLUX pipelines
with rewards that have no gradient (CPU, seconds each)."""

import hashlib
import json
import math

import pytest
import torch
import yaml

from alignkit.aligner.grpo import (clipped_surrogate, gaussian_kl, gaussian_log_prob, group_advantages,
                                   parse_grpo_steps)
from alignkit.errors import AlignkitError
from alignkit.hub import load_state_dict
from alignkit.rewards.base import Reward
from alignkit.runfolder import LORA_FILE
from alignkit.testing import RESOLUTION
from cli_runner import run_cli

# Two prompts' groups of 2 per step, the first 2 of 3 steps trained, guidance on (CFG in both passes).
GRPO = ["--algorithm", "grpo", "--reward", "nondiff", "--prompts", "simple_animals", "--num-inference-steps", "3",
        "--guidance-scale", "2", "--train-batch-size", "4", "--group-size", "2", "--grpo-steps", "first:2",
        "--learning-rate", "0.05", "--report-to", "none", "--seed", "0"]
CPU = torch.device("cpu")


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- the maths ---------------------------------------------------------------------------------

def test_log_prob_is_the_gaussian_log_density_summed_over_the_latent():
    torch.manual_seed(0)
    mean, x = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for std in (0.05, 0.37, 1.3):
        ours = gaussian_log_prob(x, mean, std)
        theirs = torch.distributions.Normal(mean.double(), std).log_prob(x.double()).sum((1, 2, 3))
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-9)


def test_kl_is_the_closed_form_between_gaussians_of_one_variance():
    torch.manual_seed(1)
    a, b = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    theirs = torch.distributions.kl_divergence(torch.distributions.Normal(a.double(), 0.3),
                                               torch.distributions.Normal(b.double(), 0.3)).sum((1, 2, 3))
    torch.testing.assert_close(gaussian_kl(a, b, 0.3), theirs)
    assert torch.equal(gaussian_kl(a, a, 0.3), torch.zeros(2, dtype=torch.float64))


def test_advantages_are_zero_mean_and_unit_std_within_each_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 5.0, -5.0, 5.0, -5.0])
    adv = group_advantages(rewards, 4).view(3, 4)
    torch.testing.assert_close(adv.mean(1), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    unit = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(adv[[0, 2]].std(1, unbiased=False), unit, rtol=1e-4, atol=0)
    # A group whose rewards are all equal carries no signal: 0, not 0/0.
    assert torch.equal(adv[1], torch.zeros(4, dtype=torch.float64))
    # Groups are consecutive: the order inside the global batch is the drawn one.
    assert adv[0].argsort().tolist() == [0, 1, 2, 3]


def test_clipped_surrogate_is_minus_the_advantage_at_ratio_one_and_clips_beyond_the_range():
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64)
    lp = torch.tensor([-5.0, -5.0, -5.0, -5.0], dtype=torch.float64)
    loss, ratio = clipped_surrogate(lp, lp, adv, 0.2)
    assert torch.equal(ratio, torch.ones(4, dtype=torch.float64)) and torch.equal(loss, -adv)
    new = (lp + torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=torch.float64)).requires_grad_()
    loss, ratio = clipped_surrogate(new, lp, adv, 0.2)
    loss.sum().backward()
    # Beyond the range in the direction the advantage pushes (r = e^0.5 > 1.2 with A > 0, r = e^-0.5
    # < 0.8 with A < 0): clipped, no gradient; on the pessimistic side the unclipped term and its
    # gradient stay.
    assert new.grad[0] == 0 and new.grad[3] == 0 and new.grad[1] != 0 and new.grad[2] != 0


def test_the_surrogate_gradient_points_uphill():
    """A Gaussian policy x = theta + 0.5 eps over a 16-d latent, reward sum(x) (for which E[r] rises
    with theta): descending GRPO's loss (group advantages, summed log-probs, clipped ratio at 1)
    raises theta, as the exact gradient of E[r] does."""
    torch.manual_seed(0)
    theta = torch.zeros(1, 4, 2, 2, requires_grad=True)
    x = theta.detach() + 0.5 * torch.randn(256, 4, 2, 2)
    adv = group_advantages(x.flatten(1).sum(1), 8)
    mean = theta.expand(256, 4, 2, 2)
    loss, ratio = clipped_surrogate(gaussian_log_prob(x, mean, 0.5), gaussian_log_prob(x, mean.detach(), 0.5), adv, 0.2)
    loss.mean().backward()
    assert torch.equal(ratio, torch.ones(256, dtype=torch.float64))
    assert (theta.grad < 0).all()


@pytest.mark.parametrize("spec, steps", [("first:2", (0, 1)), ("first:0.25", (0, 1, 2)), ("all", tuple(range(10))),
                                         ("4,0,2,2", (0, 2, 4)), ("first:10", tuple(range(10)))])
def test_trained_steps_spec(spec, steps):
    assert parse_grpo_steps(spec, 10) == steps


@pytest.mark.parametrize("spec, match", [("first:0", "first:K takes K from 1"), ("first:11", "first:K takes K"),
                                         ("last:2", "is not first:K"), ("0,10", "step indices run from 0 to 9"),
                                         ("first:x", "first:K takes K")])
def test_trained_steps_errors_are_one_line(spec, match):
    with pytest.raises(AlignkitError, match=match):
        parse_grpo_steps(spec, 10)


# ---- the samplers' steps as Gaussians ------------------------------------------------------------

def _one_step(sampler, model, prompts, i):
    """(x_i, its mean and std, x_{i+1} = mean + std * the trajectory's recorded noise) at step i."""
    traj = sampler.draw(torch.Generator().manual_seed(3), len(prompts), k=0)
    cond = sampler.encode(prompts, CPU)
    with torch.no_grad():
        x = sampler.initial_latents(traj, CPU)
        for j in range(i):
            x = sampler.step(model, x, j, cond, sampler.noise_at(traj, j, CPU))
        mean, std = sampler.distribution(sampler.predict(model, x, i, cond), x, i)
        x_next = sampler.step(model, x, i, cond, sampler.noise_at(traj, i, CPU))
    return x, mean, std, x_next


def _stochastic_sampler(fixture, request):
    """A tiny pipeline and its GRPO sampler: 4 steps, guidance 2, DDIM eta 1 or the flow SDE at 0.7."""
    from alignkit.aligner.config import TrainConfig
    from alignkit.aligner.pipeline import load_pipeline
    from alignkit.aligner.trainer import build_sampler

    loaded = load_pipeline(str(request.getfixturevalue(fixture)))
    flow = loaded.family.sampler == "flow"
    config = TrainConfig(num_inference_steps=4, guidance_scale=2.0, eta=0.0 if flow else 1.0,
                         noise_level=0.7 if flow else None)
    sampler = build_sampler(loaded, RESOLUTION, config)
    if flow:
        sampler.max_sequence_length = 32
    return loaded, sampler


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sd3", "tiny_flux"])
def test_a_sampler_step_log_prob_equals_torch_normal(fixture, request):
    loaded, sampler = _stochastic_sampler(fixture, request)
    for i in (0, 2):
        x, mean, std, x_next = _one_step(sampler, loaded.denoiser, ["two red circles", "a cat"], i)
        assert std > 0 and x_next.shape == mean.shape
        theirs = torch.distributions.Normal(mean.double(), std).log_prob(x_next.double()).flatten(1).sum(1)
        torch.testing.assert_close(gaussian_log_prob(x_next, mean, std), theirs, rtol=1e-10, atol=1e-6)


def test_flow_sde_step_is_flow_grpos(tiny_sd3):
    """The mean and std of Flow-GRPO's sde_step_with_logprob, transcribed independently:
    mean = x (1 + s^2 dt / (2 sigma)) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt, std = s sqrt(-dt),
    s = a sqrt(sigma / (1 - sigma)) with sigma_1 in the denominator at sigma = 1; and a = 0 is Euler."""
    from alignkit.aligner.flow_sampler import FlowMatchSampler
    from alignkit.aligner.pipeline import load_pipeline

    loaded = load_pipeline(str(tiny_sd3))
    sde = FlowMatchSampler(loaded, RESOLUTION, 5, 2.0, noise_level=0.7)
    ode = FlowMatchSampler(loaded, RESOLUTION, 5, 2.0)
    torch.manual_seed(0)
    x, v = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    sig = sde.sigmas
    assert sig[0] == 1.0
    for i in range(5):
        sigma, dt = sig[i], sig[i + 1] - sig[i]
        s = 0.7 * math.sqrt(sigma / (1 - (sig[1] if sigma == 1 else sigma)))
        mean, std = sde.distribution(v, x, i)
        expected = x * (1 + s ** 2 / (2 * sigma) * dt) + v * (1 + s ** 2 * (1 - sigma) / (2 * sigma)) * dt
        torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-6)
        assert std == pytest.approx(s * math.sqrt(-dt), rel=1e-6)
        ode_mean, ode_std = ode.distribution(v, x, i)
        assert ode_std == 0 and torch.equal(ode_mean, ode.euler_update(v, x, i))
    # The ODE draws no per-step noise (its trajectories are the ones AlignProp has always drawn).
    assert ode.draw(torch.Generator().manual_seed(0), 2, 1).step_noise is None
    assert sde.draw(torch.Generator().manual_seed(0), 2, 1).step_noise.shape == (5, 2, 4, 4, 4)


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sd3"])
def test_stochastic_steps_trained_makes_the_other_steps_the_deterministic_samplers(fixture, request):
    """--stochastic-steps trained (MixGRPO): outside the trained steps a step is DDIM eta 0 / the
    flow ODE, mean and std 0, exactly; inside, the stochastic step is unchanged."""
    from alignkit.aligner.config import TrainConfig
    from alignkit.aligner.pipeline import load_pipeline
    from alignkit.aligner.trainer import build_sampler

    loaded = load_pipeline(str(request.getfixturevalue(fixture)))
    flow = loaded.family.sampler == "flow"
    noisy = build_sampler(loaded, RESOLUTION, TrainConfig(num_inference_steps=4, guidance_scale=2.0,
                                                          eta=0.0 if flow else 1.0, noise_level=0.7 if flow else None))
    plain = build_sampler(loaded, RESOLUTION, TrainConfig(num_inference_steps=4, guidance_scale=2.0, eta=0.0,
                                                          noise_level=0.0 if flow else None))
    mixed = build_sampler(loaded, RESOLUTION, TrainConfig(num_inference_steps=4, guidance_scale=2.0,
                                                          eta=0.0 if flow else 1.0, noise_level=0.7 if flow else None))
    mixed.stochastic_steps = frozenset({0, 1})
    torch.manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for i in range(4):
        mean, std = mixed.distribution(out, x, i)
        expected = (noisy if i < 2 else plain).distribution(out, x, i)
        assert torch.equal(mean, expected[0]) and std == expected[1]
        assert (std > 0) == (i < 2)


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_flux"])
def test_patch_noise_is_one_draw_per_patch_and_a_step_is_gaussian_over_patch_means(fixture, request):
    """--noise-patch 2: each step's noise is one standard normal value per 2 x 2 patch of the
    (unpacked) latent, so x_{i+1} - mean holds no finer detail, and the step's log-probability is
    torch's Normal over the patch means with the step's std (FLUX: through its 2x2 token packing)."""
    import torch.nn.functional as F

    loaded, sampler = _stochastic_sampler(fixture, request)
    white = sampler.draw(torch.Generator().manual_seed(3), 2, k=0).step_noise
    sampler.noise_patch = 2
    noise = sampler.draw(torch.Generator().manual_seed(3), 2, k=0).step_noise
    assert noise.shape == white.shape
    coarse = noise[..., ::2, ::2]
    torch.testing.assert_close(noise, coarse.repeat_interleave(2, -2).repeat_interleave(2, -1), rtol=0, atol=0)
    assert 0.8 < coarse.std().item() < 1.2  # unit std per pixel, as white noise: the marginals hold
    for i in (0, 2):
        x, mean, std, x_next = _one_step(sampler, loaded.denoiser, ["two red circles", "a cat"], i)
        d = sampler.unpack(x_next - mean)
        detail = d - F.avg_pool2d(d, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
        assert detail.abs().max() < 1e-5 * d.abs().max()
        pooled_mean, pooled_next = F.avg_pool2d(sampler.unpack(mean), 2), F.avg_pool2d(sampler.unpack(x_next), 2)
        theirs = torch.distributions.Normal(pooled_mean.double(), std).log_prob(pooled_next.double()).flatten(1).sum(1)
        ours = gaussian_log_prob(sampler.policy_coords(x_next), sampler.policy_coords(mean), std)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-6)


def test_grpo_trains_with_patch_noise(tiny_sd, test_rewards, tmp_path, monkeypatch):
    from alignkit.aligner import grpo

    shapes, kl = [], grpo.gaussian_kl
    monkeypatch.setattr(grpo, "gaussian_kl", lambda mean, ref, std: shapes.append(mean.shape) or kl(mean, ref, std))
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_sd, *GRPO, "--noise-patch", "2", "--inner-epochs", "2",
                    "--max-train-steps", "2", "--checkpointing-steps", "0", "--output-dir", run]) == 0
    rows = _metrics(run)
    # The first epoch is on-policy (ratio 1); the second sees the policy its update moved.
    assert all(r["ratio_max_dev_first_epoch"] < 1e-6 for r in rows)
    assert all(r["kl"] > 0 and r["clip_fraction"] < 1 for r in rows)
    assert yaml.safe_load((run / "config.yaml").read_text())["noise_patch"] == 2
    # The KL to the base model is over the whole latent (its finer detail too), not the patch means.
    vae = json.loads((tiny_sd / "vae" / "config.json").read_text())
    side = RESOLUTION // 2 ** (len(vae["block_out_channels"]) - 1)
    assert shapes and all(tuple(shape[-2:]) == (side, side) for shape in shapes)


# ---- end to end --------------------------------------------------------------------------------

def _generate(pipe, flow):
    pipe.set_progress_bar_config(disable=True)
    extra = {"max_sequence_length": 32} if flow else {}
    return pipe(prompt="a cat", num_inference_steps=2, height=RESOLUTION, width=RESOLUTION, output_type="pt",
                generator=torch.Generator().manual_seed(0), **extra).images


@pytest.mark.parametrize("fixture, pipeline", [("tiny_sd", "StableDiffusionPipeline"),
                                               ("tiny_sdxl", "StableDiffusionXLPipeline"),
                                               ("tiny_sd3", "StableDiffusion3Pipeline"),
                                               ("tiny_flux", "FluxPipeline")])
def test_each_family_trains_on_a_reward_without_gradient_and_its_lora_loads_in_plain_diffusers(
        fixture, pipeline, test_rewards, tmp_path, request):
    import diffusers

    model, run = request.getfixturevalue(fixture), tmp_path / "run"
    assert run_cli(["train", "--model", model, *GRPO, "--max-train-steps", "2", "--checkpointing-steps", "0",
                    "--output-dir", run]) == 0
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2] and all(r["k"] == 2 for r in rows)
    # The first update of a sample batch is on-policy (ratio 1) and starts at the base model (KL 0).
    assert rows[0]["ratio_max_dev_first_epoch"] < 1e-6 and rows[0]["kl"] == 0
    assert rows[1]["kl"] > 0  # the first update moved the policy away from the base model
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["algorithm"] == "grpo" and config["group_size"] == 2
    flow = fixture in ("tiny_sd3", "tiny_flux")
    assert config["noise_level"] == (0.7 if flow else None) and config["eta"] == (0.0 if flow else 1.0)
    pipe = getattr(diffusers, pipeline).from_pretrained(model)
    base = _generate(pipe, flow)
    pipe.load_lora_weights(run)
    assert (_generate(pipe, flow) - base).abs().max() > 1e-5
    assert load_state_dict(run / LORA_FILE)


def test_stop_and_resume_equals_an_uninterrupted_run(tiny_sd, test_rewards, tmp_path):
    common = ["--model", tiny_sd, *GRPO, "--train-batch-size", "2", "--gradient-accumulation-steps", "2",
              "--inner-epochs", "2", "--checkpointing-steps", "2"]
    assert run_cli(["train", *common, "--max-train-steps", "4", "--output-dir", tmp_path / "full"]) == 0
    assert run_cli(["train", *common, "--max-train-steps", "2", "--output-dir", tmp_path / "cut"]) == 0
    assert run_cli(["train", *common, "--max-train-steps", "4", "--output-dir", tmp_path / "cut",
                    "--resume-from-checkpoint", "latest"]) == 0
    full, resumed = load_state_dict(tmp_path / "full" / LORA_FILE), load_state_dict(tmp_path / "cut" / LORA_FILE)
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("step_time", "peak_mem_mb")} for r in rows]  # noqa: E731
    assert strip(_metrics(tmp_path / "cut")) == strip(_metrics(tmp_path / "full"))
    # The second inner epoch is off-policy: its ratios moved, and some were clipped or not, but counted.
    assert all(0 <= r["clip_fraction"] <= 1 for r in _metrics(tmp_path / "full"))


def test_the_exact_count_and_the_true_jpeg_size_are_rewards_without_gradient(tmp_path):
    from alignkit.rewards import get_entry, load_reward
    from alignkit.rewards.compress import pil_jpeg_kb

    images = torch.rand(2, 3, 32, 32)
    jpeg = load_reward("jpeg")
    assert not jpeg.differentiable and not get_entry("jpeg").has_gradient()
    torch.testing.assert_close(jpeg(images, ["a", "b"]), -pil_jpeg_kb(images))  # small files score high
    count = get_entry("count")
    assert count.has_gradient() and count.has_gradient({"objective": "error"})
    assert not count.has_gradient({"objective": "exact"}) and not get_entry("count:objective=exact").has_gradient()
    assert count.gradient_note() == "yes*" and count.gradient_free_options() == "objective=exact"
    assert get_entry("jpeg").gradient_note() == "no"


def test_count_exact_is_one_where_the_nms_count_is_the_prompts_number():
    """On the toy world's scenes (drawn by its generator: the prompted number of separate objects)
    the exact score is the detector's NMS count compared with the number: `targets()`' reading."""
    pytest.importorskip("ultralytics")
    from alignkit.rewards import load_reward
    from alignkit.toy import world

    scenes = world.generate(8, seed=0)
    images, prompts = scenes.tensor(), scenes.prompts
    reward = load_reward("count", objective="exact")
    assert not reward.differentiable
    score = reward(images, prompts)
    assert set(score.tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(score, reward.targets(images, prompts)["count_nms_correct"])
    assert score.mean() >= 0.5  # the detector reads most of the world's own scenes right


def test_alignkit_rewards_shows_which_have_a_gradient(capsys):
    assert run_cli(["rewards"]) == 0
    out = capsys.readouterr().out
    text = " ".join(out.split())
    assert "(* not count with objective=exact); --algorithm grpo takes every reward" in text
    row = next(line for line in out.splitlines() if line.strip("│ ").startswith("jpeg"))
    assert "│ no" in row


# ---- bad input: one line, non-zero exit, the disk as it was ---------------------------------------

class NanReward(Reward):
    differentiable = False

    def score(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3)) * float("nan")


@pytest.fixture
def nan_reward():
    from alignkit.rewards.registry import REGISTRY, register

    register("nan_reward", "NaN for every image (tests)", differentiable=False)(
        lambda device=None, dtype=None: NanReward())
    yield
    REGISTRY.pop("nan_reward", None)


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


BAD = [
    ("group-size-one", ["--group-size", "1"], "--group-size must be at least 2"),
    ("eta-zero-on-sd", ["--eta", "0"], "--eta 0 makes DDIM deterministic"),
    ("batch-not-a-multiple", ["--train-batch-size", "3"], "= 3 samples per step is not a multiple of --group-size 2"),
    ("beta-negative", ["--kl-beta", "-0.1"], "--kl-beta must be a finite number of at least 0"),
    ("beta-nan", ["--kl-beta", "nan"], "--kl-beta must be a finite number of at least 0"),
    ("clip-zero", ["--clip-range", "0"], "--clip-range must be a finite number above 0"),
    ("inner-epochs-zero", ["--inner-epochs", "0"], "--inner-epochs must be at least 1"),
    ("steps-malformed", ["--grpo-steps", "late"], "--grpo-steps 'late' is not first:K"),
    ("stochastic-steps-unknown", ["--stochastic-steps", "early"], "--stochastic-steps 'early' is not one of all, trained"),
    ("noise-level-on-sd", ["--noise-level", "0.7"], "--noise-level 0.7 is the flow-matching sampler's"),
    ("noise-patch-zero", ["--noise-patch", "0"], "--noise-patch must be at least 1"),
    ("noise-patch-not-a-divisor", ["--noise-patch", "5"], "--noise-patch 5 does not divide the"),
    ("algorithm-unknown", ["--algorithm", "ppo"], "--algorithm 'ppo' is not one of alignprop, grpo"),
    ("nan-rewards", ["--reward", "nan_reward"], "returned a non-finite score for 4 of 4 samples at step 1"),
    ("alignprop-refuses-nondiff", ["--algorithm", "alignprop", "--truncation", "last:1"],
     "reward 'nondiff' is not differentiable"),
    ("alignprop-refuses-exact-count", ["--algorithm", "alignprop", "--truncation", "last:1", "--reward", "count",
                                       "--reward-option", "count.objective=exact"], "--algorithm grpo"),
]


@pytest.mark.parametrize("extra, match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_a_non_zero_exit_and_an_untouched_disk(extra, match, tiny_sd, test_rewards,
                                                                     nan_reward, fails, tmp_path):
    (tmp_path / "keep.txt").write_text("mine\n")
    before = _snapshot(tmp_path)
    fails(["train", "--model", tiny_sd, *GRPO, "--max-train-steps", "1", "--output-dir", tmp_path / "out", *extra],
          match)
    assert _snapshot(tmp_path) == before


def test_noise_level_zero_is_refused_for_flow_models(tiny_sd3, test_rewards, fails, tmp_path):
    fails(["train", "--model", tiny_sd3, *GRPO, "--noise-level", "0", "--output-dir", tmp_path / "out"],
          "--noise-level 0 is the deterministic ODE")
    assert not (tmp_path / "out").exists()


PLUGIN = '''
import torch


def red_share(threshold: float = 0.5):
    """Share of pixels whose red channel is above a threshold: a step function, no gradient."""
    def score(images, prompts):
        return (images[:, 0] > threshold).float().mean(dim=(1, 2))
    return score


red_share.differentiable = False
'''


def test_a_user_callable_without_gradient_trains_with_grpo_and_alignprop_names_grpo(tiny_sd, tmp_path, monkeypatch,
                                                                                     fails):
    (tmp_path / "ak_grpo_plug.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["train", "--model", tiny_sd, *GRPO, "--reward", "ak_grpo_plug:red_share", "--max-train-steps", "1",
              "--checkpointing-steps", "0"]
    fails([*common, "--algorithm", "alignprop", "--truncation", "last:1", "--output-dir", tmp_path / "ap"],
          "reward 'ak_grpo_plug:red_share' is not differentiable", "--algorithm grpo")
    assert not (tmp_path / "ap").exists()
    assert run_cli([*common, "--output-dir", tmp_path / "run"]) == 0
    assert (tmp_path / "run" / LORA_FILE).is_file()


def test_a_trained_step_without_noise_is_refused(tiny_sd):
    """DDIM's last step is deterministic when the schedule ends at alpha = 1 (set_alpha_to_one)."""
    from types import SimpleNamespace

    from alignkit.aligner import grpo
    from alignkit.aligner.pipeline import load_pipeline
    from alignkit.aligner.sampler import DDIMSampler

    sampler = DDIMSampler(load_pipeline(str(tiny_sd)), RESOLUTION, 3, eta=1.0)
    sampler.alpha_prev[-1] = 1.0
    config = SimpleNamespace(train_batch_size=2, gradient_accumulation_steps=1, group_size=2, noise_patch=1)
    plan, accelerator = SimpleNamespace(config=config, extra=(0, 1)), SimpleNamespace(num_processes=1)
    grpo._ready(plan, accelerator, SimpleNamespace(sampler=sampler))  # the first two steps are random
    plan.extra = (0, 2)
    with pytest.raises(AlignkitError, match="step 2 of the 3-step sampler is deterministic"):
        grpo._ready(plan, accelerator, SimpleNamespace(sampler=sampler))


def test_the_flow_sde_also_serves_reward_backprop(tiny_sd3, test_rewards, tmp_path):
    """--noise-level is the flow sampler's, not GRPO's: AlignProp backpropagates through
    mean + std * noise as it does through DDIM's eta steps."""
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_sd3, "--reward", "brightness", "--prompt", "a cat",
                    "--num-inference-steps", "2", "--truncation", "last:1", "--noise-level", "0.5", "--max-train-steps", "1",
                    "--checkpointing-steps", "0", "--report-to", "none", "--output-dir", run]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["noise_level"] == 0.5


def test_alignkit_eval_reads_a_grpo_run(tiny_sd3, test_rewards, tmp_path):
    """The run folder is AlignProp's: eval generates with the plain pipeline (the ODE for SD3,
    whatever noise level trained) and scores base against tuned."""
    run = tmp_path / "run"
    assert run_cli(["train", "--model", tiny_sd3, *GRPO, "--max-train-steps", "1", "--checkpointing-steps", "0",
                    "--output-dir", run]) == 0
    assert run_cli(["eval", run, "--seeds", "2", "--num-prompts", "1", "--scales", "0,1", "--rewards", "brightness",
                    "--device", "cpu", "--output-dir", tmp_path / "eval"]) == 0
    assert (tmp_path / "eval" / "summary.json").is_file()


@pytest.mark.parametrize("same", [True, False])
def test_same_initial_noise_gives_each_group_one_start(tiny_sd, test_rewards, tmp_path, monkeypatch, same):
    """--same-initial-noise: every image of a group starts from its group's x_T (DanceGRPO), so
    only the per-step noise tells them apart; off, each image has its own x_T. Groups of 2 split
    across two micro-batches of 3 (12 images a step: 6 groups, the 3rd and 6th cut in two)."""
    from alignkit.aligner import grpo

    starts, rollout = [], grpo.sample_rollout

    def spy(sampler, model, cond, traj, *args, **kwargs):
        starts.append(traj.latents.clone())
        return rollout(sampler, model, cond, traj, *args, **kwargs)

    monkeypatch.setattr(grpo, "sample_rollout", spy)
    flag = "--same-initial-noise" if same else "--no-same-initial-noise"
    assert run_cli(["train", "--model", tiny_sd, *GRPO, "--train-batch-size", "3", "--gradient-accumulation-steps",
                    "4", flag, "--max-train-steps", "1", "--checkpointing-steps", "0",
                    "--output-dir", tmp_path / "run"]) == 0
    x = torch.cat(starts)
    assert x.shape[0] == 12
    for i in range(0, 12, 2):
        assert torch.equal(x[i], x[i + 1]) == same  # a group, even where its images sit in two micro-batches
        assert not torch.equal(x[i], x[(i + 2) % 12])  # two groups never share a start
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["same_initial_noise"] == same
