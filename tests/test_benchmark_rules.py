"""The rules benchmarks/vs_ddpo.py reads its headline with (pure functions, no training)."""

import json
import math
import sys
from pathlib import Path

import pytest

# benchmarks/ is on the test path (pyproject's pytest `pythonpath`): the scripts import each
# other as siblings, the way Python runs them.
from harness import BenchError
from vs_ddpo import TRUTHS, doubling_steps, first_reach, interval, reach_and_hold, rereport, truth_source


def test_alignkit_must_reach_and_hold_a_level():
    curve = [(0, 0.48), (8, 0.51), (16, 0.46), (64, 0.48), (128, 0.54), (256, 0.60)]
    # 0.51 at 8 images is a lucky point (it falls back); the level is held from 128 on.
    assert reach_and_hold(curve, 0.507, 1.0) == 128
    assert reach_and_hold(curve, 0.61, 1.0) is None
    assert reach_and_hold(curve, 0.40, 1.0) == 0
    # Lower is better (e.g. JPEG size): the sign flips the comparison.
    assert reach_and_hold([(0, 9.0), (10, 7.0), (20, 6.5)], 7.0, -1.0) == 10


def test_ddpo_reach_is_interpolated_between_its_points():
    curve = [(0, 0.40), (160, 0.50), (320, 0.60)]
    assert abs(first_reach(curve, 0.55, 1.0) - 240) < 1e-9
    assert first_reach(curve, 0.40, 1.0) == 0
    assert first_reach(curve, 0.70, 1.0) is None


def test_alignkit_is_scored_at_doubling_step_counts():
    assert doubling_steps(64) == [1, 2, 4, 8, 16, 32, 64]
    assert doubling_steps(6) == [1, 2, 4, 6]
    assert doubling_steps(1) == [1]


# ---- the truth: independent of the reward, with intervals ---------------------------------------------

def test_the_count_truth_is_the_toy_judge_on_the_toy_world():
    truth = TRUTHS["count", truth_source("count", toy=True, judge_detector=None)]
    assert (truth.judge, truth.key) == ("toy_rules", "pixel_count_correct")
    assert "independent" in truth.label
    # The reward's own detector count is only the proxy beside it, labelled so.
    assert truth.proxy == "count_nms_correct" and "proxy" in truth.proxy_label


def test_another_detector_is_the_count_truth_off_the_toy_world():
    truth = TRUTHS["count", truth_source("count", toy=False, judge_detector="/some/detector")]
    assert (truth.judge, truth.key) == ("count", "judge_count_nms_correct")


def test_a_proxy_is_refused_as_the_truth():
    with pytest.raises(BenchError, match="proxy.*--judge-detector") as exc:
        truth_source("count", toy=False, judge_detector=None)
    assert "\n" not in str(exc.value)
    with pytest.raises(BenchError, match="no true target is known"):
        truth_source("aesthetic", toy=True, judge_detector=None)


def test_no_truth_is_read_with_the_rewards_own_weights():
    from alignkit.rewards.count import CountReward

    for (reward, _), truth in TRUTHS.items():
        assert truth.key not in CountReward.proxy_targets
        assert "independent" in truth.label
        if reward == "count":  # a count needs a judge: the reward's targets are its detector's
            assert truth.judge is not None


def test_jpeg_size_needs_no_judge_and_is_better_smaller_for_compress():
    truth = TRUTHS["compress", truth_source("compress", toy=False, judge_detector=None)]
    assert (truth.judge, truth.key, truth.sign) == (None, "jpeg_kb", -1.0)


def test_accuracy_interval_is_wilson():
    iv = interval([1.0] * 30 + [0.0] * 70, binary=True)
    assert iv.mean == pytest.approx(0.30) and iv.n == 100
    # Wilson's 95% interval for 30/100.
    assert iv.low == pytest.approx(0.2189, abs=1e-3) and iv.high == pytest.approx(0.3958, abs=1e-3)
    # At 0% it still has a width (a normal interval would collapse to [0, 0]).
    zero = interval([0.0] * 12, binary=True)
    assert zero.low == pytest.approx(0.0, abs=1e-12) and 0.2 < zero.high < 0.3


def test_continuous_interval_is_student_t():
    iv = interval([1.0, 2.0, 3.0, 4.0], binary=False)
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) * sd / sqrt(n)
    assert iv.mean == 2.5 and iv.low == pytest.approx(2.5 - half) and iv.high == pytest.approx(2.5 + half)
    assert interval([1.0], binary=False).low == -math.inf


# ---- --report on the saved JSON ----------------------------------------------------------------------

def _point(samples, wall, truth, proxy, reward):
    return {"samples": samples, "wall_s": wall, "lora": f"ckpt-{samples}",
            "scores": {"reward": reward, "truth": truth, "proxy": proxy}}


def _result(n=40):
    base_truth = [1.0 if i % 2 else 0.0 for i in range(n)]  # 50%
    better = [1.0 if i % 5 else 0.0 for i in range(n)]  # 80%, a superset of the base's right images
    flat_proxy = [0.5] * n
    runs = [{"method": "alignkit", "lr": 2e-3, "peak_rss_mb": 1.0, "train_log": [],
             "points": [_point(8, 1.0, base_truth, flat_proxy, [-1.0] * n),
                        _point(16, 2.0, better, [1.0] * n, [-0.5] * n)]},
            {"method": "ddpo", "lr": 1e-3, "peak_rss_mb": 1.0, "train_log": [],
             "points": [_point(160, 5.0, base_truth, flat_proxy, [-0.9] * n),
                        _point(320, 10.0, [1.0 if i % 3 else 0.0 for i in range(n)], flat_proxy, [-0.7] * n)]}]
    return {"benchmark": "vs_ddpo_test", "figures": [],
            "settings": {"reward": "count", "truth": "pixel_count_correct", "truth_from": "toy"},
            "samples": {"eval": {"prompts": [f"p{i}" for i in range(n)], "seeds": list(range(n))},
                        "base": {"reward": [-1.0] * n, "truth": base_truth, "proxy": flat_proxy}, "runs": runs}}


def test_report_recomputes_intervals_and_the_headline_from_per_image_samples(tmp_path, capsys):
    path = tmp_path / "vs_ddpo_test.json"
    path.write_text(json.dumps(_result()))
    assert rereport(path) == 0
    saved = json.loads(path.read_text())
    figures = {f["figure"]: f for f in saved["figures"]}
    truth = TRUTHS["count", "toy"]
    # A result saved before alignkit's methods were a list: its "alignkit" run is AlignProp last:5.
    final = figures[f"last:5 final, {truth.short}"]
    assert final["value"] == pytest.approx(0.80) and "95% CI" in final["note"]
    assert "gain over base +0.300" in final["note"] and "paired" in final["note"]
    assert "95% CI" in figures[f"base, {truth.short}"]["note"]
    # The headline is read on the independent truth and held to AlignProp's target; the soft reward
    # and the proxy are beside it, in its note, without one.
    headline = figures[f"images to DDPO's final {truth.short}: DDPO / last:5"]
    assert headline["target"] == ">= 25" and headline["value"] is not None
    assert "soft reward" in headline["note"] and truth.proxy_short in headline["note"]
    assert not any(truth.proxy_short in name and f["target"] for name, f in figures.items())
    ci = saved["curves"]["runs"][0]["points"][-1]["truth"]["ci95"]
    assert ci[0] < 0.8 < ci[1]
    assert (tmp_path / "vs_ddpo_test.png").is_file()
    out = capsys.readouterr().out
    assert "independent" in out and "proxy" in out


def test_report_on_a_result_without_per_image_truth_is_one_line(tmp_path):
    old = _result()
    old["settings"] = {"reward": "count", "truth": "count_correct"}
    old["samples"]["base"] = {"reward": -1.0, "truth": 0.5}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    before = path.read_text()
    with pytest.raises(BenchError, match="no independent per-image truth.*re-run") as exc:
        rereport(path)
    assert "\n" not in str(exc.value)
    assert path.read_text() == before  # nothing on disk is touched


# ---- DDPO given the truth: the same judge, through the bridge ----------------------------------------

def test_ddpo_given_the_truth_gets_the_judge_and_a_sign():
    from argparse import Namespace

    from vs_ddpo import World, ddpo_reward

    toy = World("m", [], TRUTHS["count", "toy"], "toy")
    assert ddpo_reward(toy, Namespace(ddpo_reward="soft", judge_detector=None)) == {
        "reward_key": "reward", "reward_sign": 1.0, "judge": None}
    assert ddpo_reward(toy, Namespace(ddpo_reward="truth", judge_detector=None)) == {
        "reward_key": "pixel_count_correct", "reward_sign": 1.0, "judge": {"name": "toy_rules", "options": {}}}
    other = World("m", [], TRUTHS["count", "detector"], "detector")
    assert ddpo_reward(other, Namespace(ddpo_reward="truth", judge_detector="/d"))["judge"] == {
        "name": "count", "options": {"detector": "/d"}}
    # DDPO maximises: a JPEG size given to it for `compress` is negated.
    jpeg = World("m", [], TRUTHS["compress", "any"], "any")
    assert ddpo_reward(jpeg, Namespace(ddpo_reward="truth", judge_detector=None)) == {
        "reward_key": "jpeg_kb", "reward_sign": -1.0, "judge": None}


def test_the_bridge_serves_the_judges_columns():
    import torch
    from reward_bridge import RewardClient

    client = RewardClient(sys.executable, "compress", judge={"name": "toy_rules", "options": {}})
    try:
        out = client(torch.ones(1, 3, 64, 64), ["two red circles on a white background"])
    finally:
        client.close()
    assert {"reward", "jpeg_kb", "pixel_count_correct"} <= set(out)
    assert out["pixel_count_correct"].tolist() == [0.0]  # a blank white image draws no circles


def test_a_peer_run_reads_its_result_and_fails_in_one_line(tmp_path, monkeypatch):
    import harness

    peers = tmp_path / "bench" / "peers"
    peers.mkdir(parents=True)
    # A stand-in peer child: JOB.json RESULT.json, as benchmarks/peers/*_child.py take them.
    (peers / "echo_child.py").write_text(
        "import json, sys\njob = json.load(open(sys.argv[1]))\n"
        "if job['mode'] == 'crash':\n    sys.exit(3)\n"
        "out = {'error': 'no GPU here'} if job['mode'] == 'refuse' else {'doubled': 2 * job['x']}\n"
        "json.dump(out, open(sys.argv[2], 'w'))\n")
    monkeypatch.setattr(harness, "BENCH", tmp_path / "bench")
    for mode in ("ok", "refuse", "crash"):
        (tmp_path / mode).mkdir()
    child, result = harness.run_peer(sys.executable, "echo_child.py", {"mode": "ok", "x": 21}, tmp_path / "ok",
                                     1, 60, "echo")
    assert result == {"doubled": 42} and child.returncode == 0
    with pytest.raises(BenchError, match="^no GPU here$"):
        harness.run_peer(sys.executable, "echo_child.py", {"mode": "refuse"}, tmp_path / "refuse", 1, 60, "echo")
    with pytest.raises(BenchError, match=r"^echo failed \(exit 3\).*\[log: "):
        harness.run_peer(sys.executable, "echo_child.py", {"mode": "crash"}, tmp_path / "crash", 1, 60, "echo")


def test_models_are_scored_on_held_out_prompts_repeated_to_the_image_count():
    from vs_ddpo import eval_prompts

    held_out = ["a", "b", "c"]
    picked = eval_prompts(held_out, 7)
    assert len(picked) == 7 and set(picked) == set(held_out)
    assert picked[:3] == picked[3:6] and picked[6] == picked[0]  # one shuffled pass, repeated
    assert eval_prompts(held_out, 7) == picked  # fixed: every model is read on the same images


# ---- alignkit's methods, GRPO vs DDPOTrainer per step, the report at 80 columns ----------------------

def test_methods_are_truncations_or_grpo_each_with_its_learning_rates():
    from vs_ddpo import Method, parse_methods

    methods = parse_methods(["last:5=1e-3,2e-3", "drtune:5,10=5e-4", "grpo=3e-3"], 20)
    assert methods == [Method("last:5", (1e-3, 2e-3)), Method("drtune:5,10", (5e-4,)), Method("grpo", (3e-3,))]
    assert [m.kind for m in methods] == ["alignprop", "alignprop", "grpo"]
    for bad, match in ((["last:5"], "NAME=LR"), (["grpo=-1"], "NAME=LR"), (["ddpo=1e-3"], "--ddpo-lrs"),
                       (["last:50=1e-3"], "truncation policy"), (["nonsense=1e-3"], "truncation policy"),
                       (["grpo=1e-3", "grpo=2e-3"], "twice")):
        with pytest.raises(BenchError, match=match) as exc:
            parse_methods(bad, 20)
        assert "\n" not in str(exc.value)


def _args(*argv):
    from vs_ddpo import parse_args

    return parse_args(["--quick", *argv])


def test_grpo_and_ddpo_are_matched_step_for_step():
    from vs_ddpo import Method, World, alignkit_flags, ddpo_job

    args = _args("--pg-batch", "32", "--pg-micro-batch", "8", "--pg-trained-steps", "5", "--ddpo-samples", "64")
    world = World("/m", ["p"], TRUTHS["count", "toy"], "toy")
    flags = [str(f) for f in alignkit_flags(world, Method("grpo"), 1e-3, 4, args)]
    value = {flags[i]: flags[i + 1] for i in range(len(flags) - 1) if flags[i].startswith("--")}
    assert value["--algorithm"] == "grpo" and value["--grpo-steps"] == "first:5" and value["--inner-epochs"] == "1"
    assert int(value["--train-batch-size"]) * int(value["--gradient-accumulation-steps"]) == 32
    assert (value["--rank"], value["--lora-alpha"], value["--num-inference-steps"]) == ("4", "4.0", "20")
    assert "--kl-beta" not in value  # GRPO's own default, as users run it
    job = ddpo_job(world, 1e-3, 4, 4, Path("/out"), args)
    assert job["sample_batch_size"] * job["sample_num_batches_per_epoch"] == 32
    assert job["sample_batch_size"] == job["train_batch_size"] == int(value["--train-batch-size"])
    assert job["inner_epochs"] == 1 and job["num_inference_steps"] == 20
    # trl trains int(T x fraction) steps of each trajectory: exactly K, for every K.
    for k in range(1, 21):
        fraction = ddpo_job(world, 1e-3, 4, 4, Path("/out"), _args("--pg-trained-steps", str(k)))[
            "train_timestep_fraction"]
        assert int(20 * fraction) == k
    # AlignProp's methods get their truncation and their own batch, no GRPO flag.
    flags = [str(f) for f in alignkit_flags(world, Method("drtune:5"), 1e-3, 4, args)]
    assert flags[flags.index("--truncation") + 1] == "drtune:5" and "--algorithm" not in flags


def test_budgets_must_be_whole_steps():
    for argv, match in ((["--pg-batch", "12"], "--pg-micro-batch"), (["--grpo-samples", "40"], "--grpo-samples"),
                        (["--ddpo-samples", "48"], "--ddpo-evals"), (["--pg-trained-steps", "21"], "from 1"),
                        (["--speed-steps", "1"], "at least 2")):
        with pytest.raises(BenchError, match=match):
            _args(*argv)
    assert _args("--speed-pairs", "0", "--speed-steps", "1").speed_pairs == 0  # no timing: no step count needed


def test_speed_chain_times_grpo_on_a_shorter_chain_with_the_same_share_trained():
    from vs_ddpo import speed_configs, speed_label

    configs = dict(speed_configs(_args("--pg-trained-steps", "5", "--speed-chain", "10", "--speed-kl0")))
    assert list(configs) == ["grpo", "grpo kl 0", "grpo T=10", "ddpo"]
    assert configs["grpo"] == [] and configs["grpo kl 0"] == ["--kl-beta", 0.0]
    assert configs["grpo T=10"] == ["--num-inference-steps", 10, "--grpo-steps", "first:3"]  # 5/20 of 10, up
    speed = {"rows": [{"config": "grpo T=10", "extra_flags": [str(f) for f in configs["grpo T=10"]]}]}
    assert speed_label("grpo T=10", speed) == "GRPO, 10-step training chain (3 trained)"
    assert list(dict(speed_configs(_args()))) == ["grpo", "ddpo"]
    with pytest.raises(BenchError, match="--speed-chain 30"):
        _args("--speed-chain", "30")


def _speed(grpo=(9.0, 6.0, 6.2), ddpo=(8.0, 9.0, 9.3), pairs=2):
    rows = []
    for pair in range(pairs):
        rows.append({"pair": pair, "config": "grpo", "step_times": [t + pair for t in grpo], "peak_rss_mb": 1100.0})
        rows.append({"pair": pair, "config": "grpo kl 0", "step_times": [5.0, 4.5, 4.5], "peak_rss_mb": 1050.0})
        rows.append({"pair": pair, "config": "ddpo", "step_times": list(ddpo), "peak_rss_mb": 1000.0 + pair,
                     "bridge_peak_rss_mb": 800.0})
    return {"images_per_step": 32, "micro_batch": 8, "trained_steps": 5, "num_inference_steps": 20, "steps": 3,
            "rows": rows, "reward_in_process_mb": 75.0}


def test_step_time_ratio_is_per_pair_and_ignores_the_first_step():
    from vs_ddpo import speed_checks

    checks = {c.figure: c for c in speed_checks(_speed())}
    grpo = checks["s/step, DDPO / GRPO"]
    # Pair 0: DDPO median(9.0, 9.3) / GRPO median(6.0, 6.2); pair 1: GRPO's steps 1 s slower.
    ratios = [9.15 / 6.1, 9.15 / 7.1]
    assert grpo.value == pytest.approx(sum(ratios) / 2) and grpo.target == ">= 1.5"
    assert grpo.passed is False and "pairs 1.50x, 1.29x" in grpo.note
    assert checks["s/step, DDPO / GRPO, KL 0 (DDPO's work)"].value == pytest.approx(9.15 / 4.5)
    memory = checks["peak RSS, GRPO / DDPO"]
    assert memory.value == pytest.approx(1100 / 1001) and memory.target == "<= 1.0" and memory.passed is False
    assert "bridge (800 MB, not counted)" in memory.note
    less = checks["peak RSS, GRPO less its reward / DDPO"]
    assert less.value == pytest.approx((1100 - 75) / 1001) and less.target is None


def _grpo_result(n=40):
    """A result with every kind of run: a best and a lesser lr per method, the lesser one scored at its
    final point only, and a timing phase."""
    data = _result(n)
    data["settings"] = {"reward": "count", "truth": "pixel_count_correct", "truth_from": "toy"}
    base_truth = data["samples"]["base"]["truth"]
    better = [1.0 if i % 5 else 0.0 for i in range(n)]
    flat = [0.5] * n
    runs = data["samples"]["runs"]
    runs[0]["method"] = "last:5"
    for method, lr in (("last:5", 4e-3), ("drtune:5", 1e-3), ("grpo", 1e-3), ("ddpo", 3e-3)):
        runs.append({"method": method, "lr": lr, "peak_rss_mb": 1.0, "train_log": [],
                     "points": [{**_point(8, 1.0, base_truth, flat, [-1.0] * n), "scores": {}},
                                _point(16, 2.0, better if method == "drtune:5" else base_truth, flat, [-2.0] * n)]})
    data["samples"]["speed"] = _speed(pairs=1)
    return data


def test_each_method_gets_its_best_run_and_unscored_points_stay_off_the_curves(tmp_path):
    from vs_ddpo import Point, Run, choose, curve

    path = tmp_path / "vs_ddpo_grpo_test.json"
    path.write_text(json.dumps(_grpo_result()))
    assert rereport(path) == 0
    saved = json.loads(path.read_text())
    figures = {f["figure"]: f for f in saved["figures"]}
    assert figures["best lr, last:5"]["value"] == 2e-3  # 80% beats 50% at the final point
    assert figures["best lr, drtune:5"]["value"] == 1e-3 and figures["best lr, GRPO"]["value"] == 1e-3
    assert figures["best lr, DDPO"]["value"] == 1e-3  # DDPO lr 3e-3 ends at the base model's level
    # AlignProp's 25x is the target of last:K only.
    assert figures["images to DDPO's final judged count: DDPO / last:5"]["target"] == ">= 25"
    assert figures["images to DDPO's final judged count: DDPO / drtune:5"]["target"] is None
    assert figures["images to DDPO's final judged count: DDPO / GRPO"]["target"] is None
    assert figures["s/step, DDPO / GRPO"]["target"] == ">= 1.5"
    # A point without scores (not evaluated) is not on a curve.
    run = Run("grpo", 1e-3, [Point(8, 1.0, "a"), Point(16, 2.0, "b", {"truth": [1.0], "reward": [0.0]})], [], 1.0)
    assert curve(run, {"truth": [0.0], "reward": [0.0]}, "truth") == [(0.0, 0.0), (16, 1.0)]
    assert list(choose([run], 1.0)) == ["grpo"]
    lrs = {(r["method"], r["lr"]): len(r["points"]) for r in saved["curves"]["runs"]}
    assert lrs[("grpo", 1e-3)] == 1  # the lesser runs: their final point only


@pytest.mark.parametrize("width", [80, 120])
def test_the_report_fits_the_terminal_with_every_number_whole(tmp_path, width):
    import io

    from rich.console import Console
    from vs_ddpo import report, summarize

    data = _grpo_result()
    result = summarize("vs_ddpo_grpo_test", data["settings"], data["samples"], tmp_path)
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    report(result, console)
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    words = set(text.replace("│", " ").replace(";", " ").replace(",", " ").replace("(", " ").replace(")", " ")
                .replace("[", " ").replace("]", " ").split())
    for check in result.checks:
        if check.value is not None:
            assert check.fmt.format(check.value).split()[-1] in words, check.figure
    assert "pass" in text or "miss" in text
    for method in ("last:5", "drtune:5", "GRPO", "DDPO"):
        assert method in words


def test_every_run_keeps_its_own_log():
    from vs_ddpo import run_dir

    names = {run_dir(m, lr) for m in ("last:5", "drtune:5,10", "ddpo") for lr in (1e-3, 2e-3, 5e-4)}
    assert len(names) == 9 and not any("." in n or ":" in n for n in names)
    assert len({(Path("/w") / n).with_suffix(".log") for n in names}) == 9


def test_no_ratio_is_read_against_a_ddpo_that_never_beat_the_base_model():
    from vs_ddpo import Point, Run, headline

    truth = TRUTHS["count", "toy"]
    n = 10
    base = {"truth": [1.0] * 6 + [0.0] * 4, "reward": [0.0] * n, "proxy": [0.5] * n}

    def scores(right):
        return {"truth": [1.0] * right + [0.0] * (n - right), "reward": [0.0] * n, "proxy": [0.5] * n}

    ddpo = Run("ddpo", 1e-3, [Point(16, 1.0, "d1", scores(6)), Point(32, 2.0, "d2", scores(5))], [], 1.0)
    grpo = Run("grpo", 1e-3, [Point(16, 1.0, "g1", scores(5)), Point(32, 2.0, "g2", scores(7))], [], 1.0)
    checks = headline(grpo, ddpo, base, truth)
    assert all(c.value is None for c in checks)
    assert "not better than the base" in checks[0].note and "never scored above the base" in checks[-1].note


def test_ddpo_may_train_another_number_of_steps_than_grpo_but_the_timing_stays_matched():
    from vs_ddpo import World, ddpo_job

    args = _args("--ddpo-trained-steps", "20")
    assert (args.ddpo_trained_steps, args.pg_trained_steps) == (20, 5)
    assert _args().ddpo_trained_steps == 5  # by default the same as GRPO's
    world = World("/m", ["p"], TRUTHS["count", "toy"], "toy")
    assert int(20 * ddpo_job(world, 1e-3, 2, 2, Path("/o"), args, args.ddpo_trained_steps)[
        "train_timestep_fraction"]) == 20
    assert int(20 * ddpo_job(world, 1e-3, 2, 2, Path("/o"), args)["train_timestep_fraction"]) == 5
    with pytest.raises(BenchError, match="--ddpo-trained-steps 21"):
        _args("--ddpo-trained-steps", "21")
    assert _args("--methods").method_list == []  # DDPO alone
