"""The rules benchmarks/vs_ddpo.py reads its headline with (pure functions, no training)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from vs_ddpo import doubling_steps, first_reach, reach_and_hold  # noqa: E402


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
