"""The toy world's YOLO detector: dataset, training (ultralytics), export, loading, detection.

The exported folder is the `count` reward's contract for any YOLO detector (alignkit.detectors,
which also loads, saves and letterboxes it), with the weights in fp16.

ultralytics is AGPL-3.0 and an optional extra; it is imported only inside these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from alignkit import detectors
from alignkit.detectors import import_ultralytics
from alignkit.toy import world

# YOLOv8's layout at depth 0.33 and width 1/8 (channels 8-128): ~0.3M parameters. Objects are
# 10-20 px in a 64 px image, so the P3 (stride 8) head carries most of the work.
MODEL_YAML: dict = {
    "nc": len(world.SHAPES),
    "names": list(world.SHAPES),
    "depth_multiple": 0.33,
    "width_multiple": 0.125,
    "max_channels": 1024,
    "backbone": [
        [-1, 1, "Conv", [64, 3, 2]],
        [-1, 1, "Conv", [128, 3, 2]],
        [-1, 3, "C2f", [128, True]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 6, "C2f", [256, True]],
        [-1, 1, "Conv", [512, 3, 2]],
        [-1, 6, "C2f", [512, True]],
        [-1, 1, "Conv", [1024, 3, 2]],
        [-1, 3, "C2f", [1024, True]],
        [-1, 1, "SPPF", [1024, 5]],
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]],
        [-1, 3, "C2f", [512]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]],
        [-1, 3, "C2f", [256]],
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 12], 1, "Concat", [1]],
        [-1, 3, "C2f", [512]],
        [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 9], 1, "Concat", [1]],
        [-1, 3, "C2f", [1024]],
        [[15, 18, 21], 1, "Detect", ["nc"]],
    ],
}
# Strides of the P3-P5 heads: input sides must be multiples of the largest.
MAX_STRIDE = 32


def _ultralytics():
    # The one import path (offline, private settings dir, PIL left alone).
    import_ultralytics()
    import ultralytics

    return ultralytics


@dataclass
class Examples:
    """Labelled images for the detector: uint8 (N,H,W,3), per image float (n,4) xyxy pixel boxes
    and int (n,) classes; `source` says where they came from (for the training record)."""

    images: np.ndarray
    boxes: list[np.ndarray]
    classes: list[np.ndarray]
    source: str

    def __len__(self) -> int:
        return len(self.images)


def rendered_examples(n: int, rng: np.random.Generator) -> Examples:
    """Fresh scenes with their exact boxes."""
    batches = [world.generate(min(256, n - start), rng=rng) for start in range(0, n, 256)]
    return Examples(np.concatenate([b.images for b in batches]), [x for b in batches for x in b.boxes],
                    [x for b in batches for x in b.classes], "rendered scenes (exact labels)")


@torch.no_grad()
def round_trip_examples(vae, n: int, rng: np.random.Generator, batch_size: int = 64) -> Examples:
    """Scenes encoded and decoded by the toy VAE: exact labels on images blurred as samples are."""
    scenes = rendered_examples(n, rng)
    out = []
    for start in range(0, n, batch_size):
        x = torch.from_numpy(scenes.images[start:start + batch_size]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        x = vae.decode(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mode()).sample
        out.append(x.float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return Examples(np.concatenate(out), scenes.boxes, scenes.classes, "VAE round trips of scenes (exact labels)")


def counter_labelled(images: Tensor, prompts: list[str], source: str) -> tuple[Examples, dict]:
    """Samples labelled as the world-rules counter reads them, every sample kept: one box per
    region it counts, so that objects drawn touching or run together are *one* object (the
    rules say objects never touch: such a drawing did not draw the prompted objects apart), and
    specks it ignores get no box. A region's class is the shape it reads, a merged region's the
    prompted shape (its outline says nothing). Wrong counts are kept: they are what the
    detector must learn to see. (The previous detector learnt only from unambiguous readings
    of the prompted shape, and so counted touching objects apart where the rules do not.)"""
    from alignkit.toy.counter import read_images

    pixels = images.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    boxes, classes = [], []
    ambiguous = merged = 0
    for reading, prompt in zip(read_images(pixels), prompts):
        spec = world.parse_prompt(prompt)
        ambiguous += reading.ambiguous
        merged += sum(r.merged for r in reading.regions)
        boxes.append(np.array([r.box for r in reading.regions], dtype=np.float32).reshape(-1, 4))
        classes.append(np.array([spec.shape_id if r.merged else world.SHAPES.index(r.shape) for r in reading.regions],
                                dtype=np.int64))
    stats = {"samples": len(prompts), "ambiguous": ambiguous, "merged_regions": merged}
    return Examples(pixels, boxes, classes, source), stats


def write_yolo_dataset(folder: Path, train: list[Examples], val: list[Examples]) -> Path:
    """Images as PNGs with YOLO labels (class cx cy w h, normalised); returns data.yaml."""
    import yaml
    from PIL import Image

    for split, parts in (("train", train), ("val", val)):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        index = 0
        for part in parts:
            for img, boxes, classes in zip(part.images, part.boxes, part.classes):
                name = f"{index:06d}"
                index += 1
                Image.fromarray(img).save(folder / "images" / split / f"{name}.png")
                h, w = img.shape[:2]
                cxcy = (boxes[:, :2] + boxes[:, 2:]) / 2 / np.array([w, h])
                wh = (boxes[:, 2:] - boxes[:, :2]) / np.array([w, h])
                rows = [f"{c} {x:.5f} {y:.5f} {bw:.5f} {bh:.5f}" for c, (x, y), (bw, bh) in zip(classes, cxcy, wh)]
                (folder / "labels" / split / f"{name}.txt").write_text("\n".join(rows) + "\n")
    data = {"path": str(folder), "train": "images/train", "val": "images/val",
            "names": dict(enumerate(world.SHAPES))}
    (folder / "data.yaml").write_text(yaml.safe_dump(data))
    return folder / "data.yaml"


def fit(data_yaml: Path, runs_dir: Path, minutes: float | None, epochs: int | None, seed: int,
        threads: int = 2, device: str = "cpu"):
    """Train with ultralytics at 64 px for `epochs` and/or `minutes`; returns (DetectionModel, info)."""
    import yaml

    ultralytics = _ultralytics()
    runs_dir.mkdir(parents=True, exist_ok=True)
    model_yaml = runs_dir / "toy-yolo.yaml"
    model_yaml.write_text(yaml.safe_dump(MODEL_YAML, sort_keys=False))
    yolo = ultralytics.YOLO(str(model_yaml), task="detect")
    budget = {"epochs": epochs or 1000}
    if minutes is not None:
        budget["time"] = minutes / 60  # ultralytics stops (and re-plans its LR schedule) by hours
    yolo.train(
        data=str(data_yaml), imgsz=world.IMAGE_SIZE, batch=64, device="0" if device.startswith("cuda") else "cpu",
        workers=threads,
        project=str(runs_dir), name="train", exist_ok=True, seed=seed, deterministic=True,
        # Mosaic would shrink 64 px scenes to unreadable quarters; keep scenes whole. Colour
        # jitter is harmless (class = shape) and flips keep every shape's class.
        mosaic=0.0, close_mosaic=0, scale=0.2, translate=0.1, fliplr=0.5, plots=False, amp=False,
        patience=1000, verbose=False, **budget,
    )
    info = {"epochs": int(yolo.trainer.epoch) + 1}
    return yolo.model.float().eval(), info


def export(net: torch.nn.Module, folder: Path) -> None:
    """Write the contract folder: model.yaml + fp16 model.safetensors."""
    detectors.save_detector(net, folder, dtype=torch.float16)


def load_detector(path: str | Path | None = None, device=None) -> torch.nn.Module:
    """The toy detector (default: the bundled one), frozen, in float32 eval mode."""
    from alignkit.toy import detector_path

    folder = Path(path) if path is not None else detector_path()
    return detectors.load_detector(str(folder)).requires_grad_(False).to(device or "cpu")


@torch.no_grad()
def detect(net: torch.nn.Module, images: Tensor, conf: float = 0.5, iou: float = 0.5) -> list[dict]:
    """Boxes (pixels), scores and classes per image after NMS, for float images in [0,1]."""
    non_max_suppression = import_ultralytics()[1]
    device = next(net.parameters()).device
    # 64 px scenes need no padding; other sizes are letterboxed as the count reward does.
    preds = net(detectors.letterbox(images.float(), MAX_STRIDE).to(device))
    preds = preds[0] if isinstance(preds, (tuple, list)) else preds
    out = []
    for det in non_max_suppression(preds, conf_thres=conf, iou_thres=iou):
        det = det.cpu().numpy()
        out.append({"boxes": det[:, :4], "scores": det[:, 4], "classes": det[:, 5].astype(np.int64)})
    return out


def count_accuracy(net: torch.nn.Module, n: int = 512, seed: int = 0, conf: float = 0.5) -> dict:
    """On fresh scenes: exact count accuracy with NMS, and the class of every detection."""
    rng = np.random.default_rng(seed)
    count_ok, class_ok = [], []
    for start in range(0, n, 128):
        batch = world.generate(min(128, n - start), rng=rng)
        for det, spec in zip(detect(net, batch.tensor(), conf=conf), batch.specs):
            count_ok.append(len(det["classes"]) == spec.count)
            class_ok.append(len(det["classes"]) > 0 and bool(np.all(det["classes"] == spec.shape_id)))
    return {"count_accuracy_nms": round(float(np.mean(count_ok)), 4),
            "all_classes_right": round(float(np.mean(class_ok)), 4), "conf": conf, "scenes": n}


@torch.no_grad()
def counter_agreement(net: torch.nn.Module, images: Tensor, prompts: list[str], conf: float = 0.25,
                      iou: float = 0.7) -> dict:
    """How often the detector's NMS count of the prompted class (the `count` reward's
    `targets()` settings) equals the world-rules counter's count: on every sample, and where
    the counter is sure; and how often the two agree on whether the prompted number is drawn
    (what `count objective=exact` rewards and the judge scores)."""
    from alignkit.toy.counter import read_images

    readings = read_images(images)
    detections = detect(net, images, conf=conf, iou=iou)
    agree, sure, verdict = [], [], []
    for reading, det, prompt in zip(readings, detections, prompts):
        spec = world.parse_prompt(prompt)
        n = int((det["classes"] == spec.shape_id).sum())
        agree.append(n == reading.count)
        sure.append(not reading.ambiguous)
        verdict.append((n == spec.count) == (reading.count == spec.count))
    agree, sure = np.array(agree), np.array(sure)
    return {"agreement_where_unambiguous": round(float(agree[sure].mean()), 4) if sure.any() else None,
            "agreement_all": round(float(agree.mean()), 4), "same_verdict": round(float(np.mean(verdict)), 4),
            "unambiguous": int(sure.sum()), "images": len(prompts), "conf": conf, "iou": iou}
