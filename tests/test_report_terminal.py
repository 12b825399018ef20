"""`alignkit eval`'s report in a terminal of 80 and 120 columns: every metric name, every
condition and every number whole, nothing cut to `…`, no line wider than the terminal.

Rendered from a made-up result shaped like `make train`'s (the toy world's judge, a proxy, a
held-out reward, diversity and drift), so no model runs.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from alignkit.evaluation.config import Condition
from alignkit.evaluation.metrics import Gain, Stat
from alignkit.evaluation.overopt import Flag, Pick
from alignkit.evaluation.report import metric_order, print_table
from alignkit.evaluation.source import LoraCheckpoint

KINDS = {
    "reward": "trained reward", "toy_clip": "held-out reward",
    "pixel_count": "true target", "pixel_count_correct": "true target", "pixel_shape_correct": "true target",
    "pixel_colour_correct": "true target", "pixel_ambiguous": "true target",
    "count_nms": "proxy target", "count_nms_correct": "proxy target",
    "diversity/pixel": "diversity", "diversity/embed": "diversity", "drift/mse": "drift", "drift/embed": "drift",
}
BINARY = {"pixel_count_correct", "pixel_shape_correct", "pixel_colour_correct", "pixel_ambiguous", "count_nms_correct"}


def made_up_result(steps=(25, 50, 75, 100), scales=(0.5, 1.0), root="runs/toy-count"):
    def lora(label, step):
        return LoraCheckpoint(label, step, Path(root) / label / "pytorch_lora_weights.safetensors", "0" * 64)

    conditions = [Condition(None, 0.0)]
    conditions += [Condition(lora(f"checkpoint-{s}", s), 1.0) for s in steps]
    conditions += [Condition(lora("final", steps[-1]), s) for s in scales]
    stats, gains = {}, {}
    for i, c in enumerate(conditions):
        stats[c.label] = {name: Stat((0.573 + 0.01 * i) if name in BINARY else (-1.2345 + 0.1 * i) * (1 + j),
                                     0.1, 288) for j, name in enumerate(KINDS)}
        if c.checkpoint is not None:
            gains[c.label] = {name: Gain(0.014, -0.036, 0.064, 288) if name in BINARY else Gain(0.41, 0.2, 1.05, 288)
                              for name in ("reward", "pixel_count_correct", "count_nms", "count_nms_correct")}
    flagged = conditions[2].label
    records = [SimpleNamespace(scores={name: float(k % 2) if name in BINARY else 0.5 + k for name in KINDS})
               for k in range(4)]
    return SimpleNamespace(
        source=SimpleNamespace(root=Path(root)), reward_spec="count", prompts=[f"p{k}" for k in range(36)],
        seeds=list(range(8)), conditions=conditions, stats=stats, kinds=dict(KINDS), gains=gains, records=records,
        flags=[Flag(flagged, "pixel_count_correct", "true target", 0.573, 0.56, 0.0, "std", 0.41, reason="unconfirmed",
                    interval=(-0.03, 0.06), proxy="proxy target 'count_nms_correct'", proxy_interval=(0.008, 0.11))],
        pick=Pick(conditions[3].label, conditions[3].step, 1.0,
                  f"keep {conditions[3].label} (step {conditions[3].step}, LoRA scale 1): best trained reward"),
        notes=["the judge reads 44 of 144 base images as ambiguous"], confirms={"pixel_count_correct": +1})


def render(result, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    print_table(result, console)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("shape", ["make_train", "default_scales", "many_checkpoints"])
def test_every_name_and_number_is_whole(width, shape):
    result = {"make_train": made_up_result(),
              "default_scales": made_up_result(scales=(0, 0.25, 0.5, 0.75, 1)),
              "many_checkpoints": made_up_result(steps=tuple(range(100, 1100, 100)), root="runs/" + "long-name-" * 6),
              }[shape]
    text = render(result, width)
    assert "…" not in text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    words = set(text.replace("│", " ").replace(",", " ").replace("(", " ").replace(")", " ").split())
    for name in metric_order(result):
        assert name in words, name
    for c in result.conditions:
        assert c.label in words, c.label  # in a header (base, final@S) or in the legend (checkpoint-N@1)
        assert c.label.removeprefix("checkpoint-") in words
    for stats in result.stats.values():
        for stat in stats.values():
            assert f"{stat.mean:.4g}" in words
    # Gains with their intervals, accuracies in points; the verdict last, on its own line.
    assert "+1.4 pts (-3.6 to +6.4)" in text and "+0.41 (+0.2 to +1.05)" in text
    verdict = [i for i, line in enumerate(lines) if line.startswith("verdict: ")]
    assert len(verdict) == 1 and " ".join(lines[verdict[0]:]).startswith(f"verdict: keep {result.pick.condition} ")
    assert not any(line.startswith(("flag ", "note ")) for line in lines[verdict[0]:])


def test_wider_terminal_needs_fewer_tables():
    result = made_up_result()
    count = {w: render(result, w).count("┃ metric") for w in (80, 120)}
    assert count[120] == 1 + 1 and count[80] == 2 + 1, count  # + the gains table


# -- `alignkit rewards` -------------------------------------------------------------------------

@pytest.mark.parametrize("width", [80, 120])
def test_rewards_listing_prints_every_hub_file_whole(width):
    from alignkit.rewards import list_entries
    from alignkit.rewards.listing import print_rewards
    from alignkit.rewards.registry import EQUIVALENT_FILES

    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    print_rewards(console)
    text = console.export_text()
    lines = text.splitlines()
    assert "…" not in text and max(len(line) for line in lines) <= width
    for entry in list_entries():
        assert any(line.startswith(f"{entry.name} ") for line in lines), entry.name  # its block
        assert f" {entry.name} " in text  # its row
        for repo, file in entry.weights:
            for name in EQUIVALENT_FILES.get(file, (file,)):
                # The repo and file on one line, unbroken: what `hf download` needs.
                assert any(f"{repo}/" in line and name in line for line in lines), (repo, name)
        for package in entry.packages:
            assert f"package {package}" in text
