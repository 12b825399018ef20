"""The training record kept beside the weights: `training_log.json`, rendered to `TRAINING.md`."""

from __future__ import annotations

import json
from pathlib import Path

ORDER = ("vae", "clip", "unet", "detector", "flow")


def record(folder: Path, part: str, entry: dict) -> None:
    """Replace `part`'s entry in the JSON log and re-render the Markdown."""
    path = folder / "training_log.json"
    log = json.loads(path.read_text()) if path.is_file() else {}
    log[part] = entry
    path.write_text(json.dumps(log, indent=2) + "\n")
    (folder / "TRAINING.md").write_text(render(log))


def rerender(folder: Path) -> None:
    """Re-render TRAINING.md from the JSON log (after editing its notes by hand)."""
    (folder / "TRAINING.md").write_text(render(json.loads((folder / "training_log.json").read_text())))


def render(log: dict) -> str:
    lines = [
        "# Training record of the toy world's weights",
        "",
        "Written by `python -m toy_build.train` (from a source checkout: the trainers are not",
        "installed with alignkit); the JSON twin `training_log.json` holds the",
        "same figures. Quality is measured on fresh scenes that training never saw (other seeds).",
        "A run is defined by `--steps`; `--minutes` caps it by wall-clock time (alone, it is the",
        "budget), so a capped run stops at whatever step the machine reached, which is logged.",
        "",
    ]
    # Free-form notes (how and where the shipped weights were made) live under "_notes".
    for note in log.get("_notes", []):
        lines.append(f"- {note}")
    if log.get("_notes"):
        lines.append("")
    parts = [p for p in log if not p.startswith("_")]
    for part in [p for p in ORDER if p in parts] + [p for p in parts if p not in ORDER]:
        e = log[part]
        lines += [f"## {part}", "", f"- command: `{e['command']}`", f"- date: {e['date']}; {e['machine']}; torch {e['torch']}"]
        steps = f"{e['steps']} steps at batch {e['batch_size']}" if "steps" in e else f"{e.get('epochs')} epochs on {e.get('train_images')} images"
        lines.append(f"- trained {steps} in {e['train_seconds'] / 60:.1f} min (whole run incl. evaluation {e['total_seconds'] / 60:.1f} min)")
        lines.append(f"- parameters: {e['params']}")
        if e.get("loss_curve"):
            curve = ", ".join(f"{s}: {v:.4g}" for s, v in e["loss_curve"])
            lines.append(f"- loss (step: mean over the preceding window): {curve}")
        for key in ("scaling_factor", "vae_shift_factor", "vae_scaling_factor", "cache_size", "cache_seconds"):
            if key in e:
                lines.append(f"- {key}: {e[key]}")
        if e.get("note"):
            lines.append(f"- note: {e['note']}")
        lines.append("- quality:")
        lines += [f"  - {k}: {v}" for k, v in e["quality"].items()]
        for step, quality in e.get("snapshots", {}).items():
            lines.append(f"- EMA snapshot at step {step} (not shipped):")
            lines += [f"  - {k}: {v}" for k, v in quality.items()]
        lines.append("")
    return "\n".join(lines)
