"""The rules benchmarks/vs_ddpo.py reads its headline with (pure functions, no training)."""

import json
import math
import sys

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
    gain = figures[f"alignkit final gain over base, {truth.label}"]
    assert gain["value"] == pytest.approx(0.30) and "95% CI" in gain["note"] and "paired" in gain["note"]
    assert "95% CI" in figures[f"base {truth.label}"]["note"]
    # The headline is read on the independent truth and held to the target; the proxy is beside it, without one.
    headline = figures[f"samples to DDPO's final {truth.label}: DDPO / alignkit"]
    assert headline["target"] is not None and headline["value"] is not None
    assert figures[f"samples to DDPO's final {truth.proxy_label}: DDPO / alignkit"]["target"] is None
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
