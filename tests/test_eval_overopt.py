"""The over-optimisation rule, the held-out table, and the image metrics, on exact numbers."""

from __future__ import annotations

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.evaluation.config import parse_scales
from alignkit.evaluation.heldout import default_heldout
from alignkit.models import find_model
from alignkit.evaluation.metrics import Gain, Stat, diversity, pixel_embedder
from alignkit.evaluation.overopt import Watch, find_flags, find_unconfirmed, pick_candidate
from tiny_models import small_clip_model


def stats_of(**conditions):
    """{'a': {'reward': (mean, std), ...}} -> condition -> metric -> Stat."""
    return {label: {name: Stat(m, s, 8) for name, (m, s) in metrics.items()}
            for label, metrics in conditions.items()}


WHERE = {"ck@1": (100, 1.0), "final@0.5": (200, 0.5), "final@1": (200, 1.0), "base": (0, 0.0)}
WATCH = [Watch("hps", +1, "held-out reward"), Watch("jpeg_kb", -1, "true target"),
         Watch("diversity/embed", +1, "diversity", rule="relative")]


def test_reward_up_heldout_down_is_flagged_and_pick_follows_heldout():
    stats = stats_of(
        base={"reward": (1.0, 0.2), "hps": (0.25, 0.01), "jpeg_kb": (50, 10), "diversity/embed": (0.3, 0.05), "drift/embed": (0, 0)},
        **{"ck@1": {"reward": (1.2, 0.2), "hps": (0.252, 0.01), "jpeg_kb": (52, 10), "diversity/embed": (0.29, 0.05), "drift/embed": (0.1, 0)},
           "final@0.5": {"reward": (1.3, 0.2), "hps": (0.249, 0.01), "jpeg_kb": (50, 10), "diversity/embed": (0.3, 0.05), "drift/embed": (0.2, 0)},
           "final@1": {"reward": (1.9, 0.2), "hps": (0.23, 0.01), "jpeg_kb": (49, 10), "diversity/embed": (0.3, 0.05), "drift/embed": (0.5, 0)}})
    flags = find_flags(stats, ["ck@1", "final@0.5", "final@1"], WATCH, tolerance=0.5, rel_tolerance=0.05)
    # hps fell 2 base stds at final@1; 0.1 std at final@0.5 is within tolerance.
    assert [(f.condition, f.metric) for f in flags] == [("final@1", "hps")]
    assert flags[0].drop == pytest.approx(2.0) and flags[0].unit == "std"
    assert "fell 2.00 base std" in flags[0].message
    pick = pick_candidate(stats, ["ck@1", "final@0.5", "final@1"], flags, WHERE, "drift/embed")
    assert pick.condition == "final@0.5" and pick.scale == 0.5 and pick.step == 200
    assert "final@1 scores higher" in pick.reason and "held-out side wins" in pick.reason
    assert "\n" not in pick.reason


def test_true_target_direction_and_relative_rule_for_diversity():
    stats = stats_of(
        base={"reward": (1.0, 0.2), "jpeg_kb": (50, 10), "diversity/embed": (0.30, 0.0)},
        a={"reward": (1.5, 0.2), "jpeg_kb": (56, 10), "diversity/embed": (0.30, 0.0)},   # JPEG grew 0.6 std
        b={"reward": (1.5, 0.2), "jpeg_kb": (44, 10), "diversity/embed": (0.27, 0.0)},   # diversity -10%
        c={"reward": (1.5, 0.2), "jpeg_kb": (50, 10), "diversity/embed": (0.29, 0.0)})   # -3.3%: within 5%
    flags = find_flags(stats, ["a", "b", "c"], WATCH, tolerance=0.5, rel_tolerance=0.05)
    assert {(f.condition, f.metric) for f in flags} == {("a", "jpeg_kb"), ("b", "diversity/embed")}
    jpeg = next(f for f in flags if f.metric == "jpeg_kb")
    assert "rose 0.60 base std" in jpeg.message  # lower is better under `compress`
    div = next(f for f in flags if f.metric == "diversity/embed")
    assert div.unit == "rel" and div.drop == pytest.approx(0.1)


def test_no_reward_gain_no_flag_and_base_kept():
    stats = stats_of(base={"reward": (1.0, 0.2), "hps": (0.25, 0.01)},
                     a={"reward": (0.9, 0.2), "hps": (0.1, 0.01)})
    flags = find_flags(stats, ["a"], WATCH, 0.5, 0.05)
    assert flags == []  # the reward did not rise: a worse model, but not a hacked one
    pick = pick_candidate(stats, ["a"], flags, {"a": (1, 1.0)}, None)
    assert pick.condition == "base" and "beats the base" in pick.reason


def test_everything_flagged_keeps_base():
    stats = stats_of(base={"reward": (1.0, 0.2), "hps": (0.25, 0.01)},
                     a={"reward": (2.0, 0.2), "hps": (0.2, 0.01)})
    flags = find_flags(stats, ["a"], WATCH, 0.5, 0.05)
    pick = pick_candidate(stats, ["a"], flags, {"a": (1, 1.0)}, None)
    assert pick.condition == "base" and "every tuned candidate is flagged" in pick.reason


def test_ties_go_to_smaller_drift():
    stats = stats_of(base={"reward": (1.0, 0.2), "drift/mse": (0, 0)},
                     a={"reward": (1.5, 0.2), "drift/mse": (0.30, 0)},
                     b={"reward": (1.495, 0.2), "drift/mse": (0.10, 0)},  # within 0.05 base std
                     c={"reward": (1.3, 0.2), "drift/mse": (0.01, 0)})
    pick = pick_candidate(stats, ["a", "b", "c"], [], {"a": (1, 1.0), "b": (2, 0.5), "c": (3, 0.25)}, "drift/mse")
    assert pick.condition == "b" and "drifts least" in pick.reason


def test_heldout_table():
    toy = find_model("toy").reward_substitutes
    assert default_heldout(["aesthetic"]) == ["hps", "pickscore", "clip"]
    assert default_heldout(["hps"]) == ["aesthetic", "pickscore", "clip"]
    assert default_heldout(["count"], toy) == ["toy_clip"]
    assert default_heldout(["count"]) == ["clip"]
    assert default_heldout(["compress"]) == ["clip"]
    # A combination watches the union, never one of its own parts.
    assert default_heldout(["hps", "aesthetic"]) == ["pickscore", "clip"]


def test_parse_scales():
    assert parse_scales("1,0.5,0, 1.5") == (0.0, 0.5, 1.0, 1.5)
    with pytest.raises(AlignkitError, match="comma-separated"):
        parse_scales("0,half")


def test_diversity_and_pixel_fallback():
    same = torch.rand(1, 3, 16, 16).repeat(3, 1, 1, 1)
    assert diversity(pixel_embedder()(same), "rms") == 0
    varied = torch.rand(3, 3, 16, 16)
    assert diversity(pixel_embedder()(varied), "rms") > 0.1
    assert diversity(pixel_embedder()(varied[:1]), "rms") is None  # one seed has no spread


def test_a_clip_reward_embeds_through_its_own_preprocessing():
    from types import SimpleNamespace

    from alignkit.rewards._clip_backbones import ContrastiveReward, HFClipTowers
    from alignkit.rewards.base import resize_shortest_crop

    model = small_clip_model()
    # embed_images never tokenises: a stand-in tokenizer only gives the length.
    reward = ContrastiveReward(HFClipTowers(model, SimpleNamespace(model_max_length=77)), resize_shortest_crop,
                               100.0).freeze()
    images = torch.rand(3, 3, 40, 24)  # any size: shortest side to 16 (long side truncated, as torchvision), centre crop
    with torch.no_grad():
        features = reward.embed_images(images)
        expected = model.get_image_features(
            pixel_values=(torch.nn.functional.interpolate(images, size=(26, 16), mode="bicubic", antialias=True)[:, :, 5:21]
                          - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1))
            / torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)).pooler_output
    assert features.shape == (3, 6)
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)


def test_a_reward_without_an_embedding_says_none_and_a_combination_asks_its_parts():
    from alignkit.rewards import Reward
    from alignkit.rewards.spec import CombinedReward

    class Plain(Reward):
        def score(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    class Embeds(Plain):
        def embed_images(self, images):
            return images.flatten(1)[:, :5]

    images = torch.rand(2, 3, 4, 4)
    assert Plain().embed_images(images) is None
    combined = CombinedReward([("plain", Plain(), 1.0), ("embeds", Embeds(), 0.5)], "plain+embeds:0.5")
    torch.testing.assert_close(combined.embed_images(images), images.flatten(1)[:, :5])
    assert CombinedReward([("plain", Plain(), 1.0)], "plain").embed_images(images) is None


def test_small_but_significant_fall_is_flagged_only_with_enough_images():
    # toy_clip-like: a 0.36-std fall (under the 0.5-std tolerance) over 144 images is far
    # beyond noise (z = 2.8); the same fall over 8 images is not.
    watch = [Watch("toy_clip", +1, "held-out reward")]
    for n, expected in ((144, True), (8, False)):
        stats = {"base": {"reward": Stat(-1.17, 1.8, n), "toy_clip": Stat(70.6, 18.0, n)},
                 "final@1": {"reward": Stat(-0.62, 1.1, n), "toy_clip": Stat(64.1, 20.8, n)}}
        flags = find_flags(stats, ["final@1"], watch, tolerance=0.5, rel_tolerance=0.05)
        assert bool(flags) is expected, (n, flags)
    # A tiny effect is never flagged, however many images.
    stats = {"base": {"reward": Stat(0.0, 1.0, 10**6), "toy_clip": Stat(70.0, 18.0, 10**6)},
             "a": {"reward": Stat(1.0, 1.0, 10**6), "toy_clip": Stat(69.0, 18.0, 10**6)}}
    assert find_flags(stats, ["a"], watch, 0.5, 0.05) == []


def test_paired_gain_interval():
    # Five images, each +1 on the candidate: no spread, so the interval is the point.
    g = Gain.paired([0, 0, 1, 0, 1], [1, 1, 2, 1, 2])
    assert (g.mean, g.low, g.high, g.n) == (1.0, 1.0, 1.0, 5) and g.rose(+1) and not g.rose(-1)
    # Half the images better, half worse: the interval straddles 0.
    g = Gain.paired([0, 1, 0, 1], [1, 0, 1, 0])
    assert g.low < 0 < g.high and not g.rose(+1) and not g.rose(-1)
    # t(3) at 97.5% = 3.182: mean 0.5, sd 0.577, n 4 -> half-width 0.918.
    g = Gain.paired([0, 0, 0, 0], [1, 0, 1, 0])
    assert g.high - g.mean == pytest.approx(3.1824 * 0.57735 / 2, rel=1e-3)


def test_a_proxy_gain_the_judge_does_not_see_is_flagged_and_never_picked():
    # The trained reward and the detector's count rose beyond noise on every candidate; the
    # judge's count rose with ck@1 only (the others fooled the detector).
    stats = stats_of(base={"reward": (-1.0, 0.5), "count_nms_correct": (0.3, 0.4), "pixel_count_correct": (0.5, 0.5)},
                     **{"ck@1": {"reward": (-0.6, 0.5), "count_nms_correct": (0.5, 0.5), "pixel_count_correct": (0.7, 0.4)},
                        "final@1": {"reward": (-0.2, 0.3), "count_nms_correct": (0.8, 0.4), "pixel_count_correct": (0.5, 0.5)}})
    up = Gain(0.3, 0.1, 0.5, 288)
    gains = {"ck@1": {"reward": up, "count_nms_correct": up, "pixel_count_correct": Gain(0.2, 0.1, 0.3, 288)},
             "final@1": {"reward": up, "count_nms_correct": up, "pixel_count_correct": Gain(0.0, -0.08, 0.08, 288)}}
    flags = find_unconfirmed(stats, gains, ["ck@1", "final@1"], {"pixel_count_correct": +1},
                             {"reward": +1, "count_nms_correct": +1})
    assert [(f.condition, f.metric, f.reason) for f in flags] == [("final@1", "pixel_count_correct", "unconfirmed")]
    assert "did not rise beyond noise" in flags[0].message and "trained reward rose" in flags[0].message
    # The held-out rules alone would keep final@1 (the best trained reward); the judge wins.
    pick = pick_candidate(stats, ["ck@1", "final@1"], flags, WHERE, None)
    assert pick.condition == "ck@1" and "final@1 scores higher" in pick.reason
    # A judge that falls is also unconfirmed; a proxy that did not rise raises no flag.
    gains["final@1"]["pixel_count_correct"] = Gain(-0.2, -0.3, -0.1, 288)
    assert len(find_unconfirmed(stats, gains, ["final@1"], {"pixel_count_correct": +1}, {"reward": +1})) == 1
    flat = {"final@1": {"reward": Gain(0.1, -0.1, 0.3, 288), "pixel_count_correct": Gain(0, -0.1, 0.1, 288)}}
    assert find_unconfirmed(stats, flat, ["final@1"], {"pixel_count_correct": +1}, {"reward": +1}) == []
