"""`alignkit rewards` and `alignkit score` end to end: JSON lines on stdout, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.images import save_image

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python -m alignkit ...` in a fresh process, offline, with this checkout on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1",
           "YOLO_CONFIG_DIR": str(tmp_path / "yolo"), "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}
    env.pop("ALIGNKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "alignkit", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)


@pytest.fixture
def pictures(tmp_path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    paths = {"smooth": tmp_path / "smooth.png", "noisy": tmp_path / "noisy.png"}
    save_image(torch.linspace(0, 1, 64).view(1, 1, -1).expand(3, 48, 64), paths["smooth"])
    save_image(torch.rand(3, 48, 64, generator=g), paths["noisy"])
    paths["text"] = tmp_path / "notes.png"
    paths["text"].write_text("not an image")
    paths["one_prompt"] = tmp_path / "prompts.txt"
    paths["one_prompt"].write_text("only one prompt\n\n")
    return paths


def test_rewards_lists_the_registry(tmp_path):
    result = run_cli("rewards", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("compress", "incompress", "count"):
        assert f" {name} " in result.stdout
    assert "ultralytics" in result.stdout  # what count needs


def test_score_compress_ranks_smooth_higher(tmp_path, pictures):
    result = run_cli("score", "--reward", "compress", str(pictures["smooth"]), str(pictures["noisy"]),
                     "--prompt", "x", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["smooth.png", "noisy.png"]
    for row in rows:
        assert set(row) == {"image", "prompt", "reward", "jpeg_kb"} and row["prompt"] == "x"
        assert row["jpeg_kb"] > 0.6  # at least the headers
    smooth, noisy = rows
    assert smooth["reward"] > noisy["reward"] and smooth["jpeg_kb"] < noisy["jpeg_kb"]
    assert "reward: compress" in result.stderr  # the table goes to stderr, stdout is data


def test_score_combination_reports_parts(tmp_path, pictures):
    result = run_cli("score", "--reward", "compress+incompress:0.5", str(pictures["noisy"]),
                     "--prompt", "x", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["reward"] == pytest.approx(row["compress"] + 0.5 * row["incompress"], rel=1e-5)
    assert row["compress"] == pytest.approx(-row["jpeg_kb"], rel=0.5)


def test_error_is_one_line_on_stderr_in_a_real_process(tmp_path, pictures):
    result = run_cli("score", "--reward", "hps+", str(pictures["smooth"]), "--prompt", "x", tmp_path=tmp_path)
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: malformed reward spec 'hps+'")


@pytest.mark.parametrize("args, message", [
    (["--reward", "hps+"], "empty term around '+'"),
    (["--reward", "hps:abc"], "weight 'abc' of 'hps' is not a number"),
    (["--reward", ":0.5"], "has no valid reward name"),
    (["--reward", "hps:-inf"], "must be finite"),
    (["--reward", "compres"], "did you mean 'compress'"),
    (["--reward", "compress", "--reward-option", "quality=high"], "quality must be an integer"),
    (["--reward", "compress", "--reward-option", "size=3"], "has no option size"),
])
def test_bad_specs_and_options(capsys, pictures, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", *args, str(pictures["smooth"]), "--prompt", "x"])
    assert exit_info.value.code != 0
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and message in err


@pytest.mark.parametrize("case, message", [
    ("missing", "no image file at"),
    ("text", "is not a readable image"),
    ("prompts", "has 1 prompts for 2 images"),
    ("no_prompt", "give exactly one of --prompt"),
])
def test_bad_inputs(capsys, tmp_path, pictures, case, message):
    images = [str(pictures["smooth"]), str(pictures["noisy"])]
    prompt = ["--prompt", "x"]
    if case == "missing":
        images.append(str(tmp_path / "absent.png"))
    elif case == "text":
        images.append(str(pictures["text"]))
    elif case == "prompts":
        prompt = ["--prompts-file", str(pictures["one_prompt"])]
    else:
        prompt = []
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--reward", "compress", *images, *prompt])
    assert exit_info.value.code != 0
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_score_count_with_a_detector_folder(tmp_path, pictures):
    pytest.importorskip("ultralytics")
    import copy

    from alignkit.detectors import import_ultralytics, save_detector
    from tiny_models import TINY_YAML

    DetectionModel, _ = import_ultralytics()
    torch.manual_seed(0)
    detector = save_detector(DetectionModel(cfg=copy.deepcopy(TINY_YAML), verbose=False), tmp_path / "det")
    base = ["score", "--reward", "count", "--reward-option", f"detector={detector}",
            str(pictures["smooth"]), str(pictures["noisy"])]
    result = run_cli(*base, "--prompt", "two red circles on a white background", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # stdout is only JSON
    for row in rows:
        assert set(row) == {"image", "prompt", "reward", "count_nms", "count_nms_correct"}
        assert row["reward"] <= 0 and row["count_nms_correct"] == float(row["count_nms"] == 2)
    result = run_cli(*base, "--prompt", "red circles", tmp_path=tmp_path)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: count: the prompt 'red circles' gives no number of 'circle'; say how many, e.g. 'three circles' or '3 circles'"
    ]
