"""How well the `compress` proxy tracks the real Pillow JPEG size, and what it costs.

    python benchmarks/compress_proxy.py            # evaluate the calibration in the code
    python benchmarks/compress_proxy.py --fit      # refit it on a fresh set, then evaluate

Prints a report and writes benchmarks/results/compress_proxy.json (machine, versions, date):
Spearman rank correlation of the proxy with the true quality-95 size over a held-out set of
synthetic images, the kB calibration error (mean absolute and relative), and the time to score
a batch of 16 images at 512 px (forward, and forward + backward) on the CPU, and on CUDA when
present (or on the devices named with --device). CPU times on a shared machine depend on its
load: the JSON records the load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, optimize, stats

from alignkit.rewards.compress import FEATURES, Calibration, JpegSizeProxy, pil_jpeg_kb

RESULTS = Path(__file__).resolve().parent / "results" / "compress_proxy.json"
KINDS = ("noise", "gradient", "shapes", "texture", "photo")


def _shapes(rng: np.random.Generator, h: int, w: int, canvas: np.ndarray) -> np.ndarray:
    """Paint 1-6 flat-coloured discs, boxes and half-planes-clipped triangles."""
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(rng.integers(1, 7)):
        colour = rng.random(3)
        cy, cx, r = rng.random() * h, rng.random() * w, (0.08 + 0.3 * rng.random()) * min(h, w)
        kind = rng.integers(3)
        if kind == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        elif kind == 1:
            mask = (abs(yy - cy) < r) & (abs(xx - cx) < r * (0.5 + rng.random()))
        else:
            mask = (yy > cy - r) & (yy < cy + r) & (abs(xx - cx) < (yy - cy + r) / 2)
        canvas[mask] = colour
    return canvas


def synthetic_image(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """One (H,W,3) float image in [0,1] of the given kind, with random parameters."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    if kind == "noise":
        base = rng.random(3)
        amp = rng.choice([0.01, 0.03, 0.1, 0.3, 1.0]) * rng.random()
        img = base + amp * (rng.random((h, w, 3)) - 0.5)
    elif kind == "gradient":
        angle, a, b = rng.random() * 2 * np.pi, rng.random(3), rng.random(3)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
        img = a + (b - a) * (t - t.min()) / (np.ptp(t) + 1e-8)
    elif kind == "shapes":
        img = _shapes(rng, h, w, np.broadcast_to(rng.random(3), (h, w, 3)).copy())
    elif kind == "texture":
        freq, phase = 2 + 60 * rng.random(2), rng.random(2) * 6.28
        wave = np.sin(2 * np.pi * freq[0] * xx + phase[0]) * np.sin(2 * np.pi * freq[1] * yy + phase[1])
        if rng.random() < 0.5:  # checkerboard-like hard edges instead of smooth waves
            wave = np.sign(wave)
        img = rng.random(3) + 0.5 * rng.random() * wave[..., None] * rng.random(3)
    else:  # "photo": blurred noise at a random scale, shapes on top, a little sensor noise
        sigma = 0.5 + 8 * rng.random()
        img = ndimage.gaussian_filter(rng.random((h, w, 3)), sigma=(sigma, sigma, 0))
        img = (img - img.mean()) / (img.std() + 1e-8) * 0.2 * rng.random() + rng.random(3)
        img = _shapes(rng, h, w, img)
        img = img + rng.random() * 0.05 * rng.standard_normal((h, w, 3))
    return np.clip(img, 0, 1).astype(np.float32)


def dataset(n: int, seed: int, sizes=(24, 256)) -> list[torch.Tensor]:
    """n images cycling through KINDS, sides uniform in `sizes` (mostly not multiples of 8)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (int(s) for s in rng.integers(sizes[0], sizes[1] + 1, size=2))
        img = synthetic_image(rng, KINDS[i % len(KINDS)], h, w)
        # Quantise to 8 bits first: Pillow sees uint8, and so must the proxy.
        out.append(torch.from_numpy(np.round(img * 255) / 255).permute(2, 0, 1).float())
    return out


@torch.no_grad()
def measure(images: list[torch.Tensor], proxy: JpegSizeProxy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, proxy kB, true kB) per image; images differ in size, so one at a time."""
    feats = np.stack([proxy.features(img[None])[0].numpy() for img in images])
    pred = np.array([float(proxy(img[None])[0]) for img in images])
    true = np.array([float(pil_jpeg_kb(img[None])[0]) for img in images])
    return feats, pred, true


def fit(feats: np.ndarray, true: np.ndarray) -> Calibration:
    """Non-negative least squares with a free intercept (the headers): kB ~ w . f + c.

    Weights are non-negative because every feature is a cost the coder pays. Rows are
    weighted by 1/sqrt(kB) so that the many small files count, not only the few big ones."""
    design = np.concatenate([feats, np.ones((len(feats), 1))], axis=1)
    row_w = 1.0 / np.sqrt(np.maximum(true, 0.5))
    coef, _ = optimize.nnls(design * row_w[:, None], true * row_w)
    return Calibration(weights=tuple(float(f"{c:.4g}") for c in coef[:-1]), intercept=float(f"{coef[-1]:.4g}"))


def report(pred: np.ndarray, true: np.ndarray) -> dict:
    err = np.abs(pred - true)
    return {
        "n": int(len(true)),
        "spearman": float(stats.spearmanr(pred, true).statistic),
        "pearson": float(stats.pearsonr(pred, true).statistic),
        "mean_abs_err_kb": float(err.mean()),
        "mean_rel_err": float((err / true).mean()),
        "median_rel_err": float(np.median(err / true)),
        "true_kb_range": [float(true.min()), float(true.max())],
    }


def timing(device: str = "cpu", batch: int = 16, side: int = 512, repeats: int = 5) -> dict:
    """Best-of-`repeats` seconds for a (16,3,512,512) batch, forward and forward+backward,
    after one warm-up of each (CUDA: synchronised, so the time is the kernels', not the launch's)."""
    proxy = JpegSizeProxy().to(device)
    images = torch.rand(batch, 3, side, side, device=device)
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    best = {"forward_s": float("inf"), "forward_backward_s": float("inf"),
            "forward_cpu_s": float("inf"), "forward_backward_cpu_s": float("inf")}
    for round_ in range(repeats + 1):
        # Wall time, and process CPU time (all threads), which a shared machine's load
        # inflates less: on an idle machine wall ~ CPU / threads.
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            proxy(images)
        sync()
        fwd, fwd_cpu = time.perf_counter() - start, time.process_time() - cpu
        x = images.clone().requires_grad_(True)
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        proxy(x).sum().backward()
        sync()
        bwd, bwd_cpu = time.perf_counter() - start, time.process_time() - cpu
        if round_:  # round 0 is the warm-up
            for key, value in (("forward_s", fwd), ("forward_backward_s", bwd),
                               ("forward_cpu_s", fwd_cpu), ("forward_backward_cpu_s", bwd_cpu)):
                best[key] = min(best[key], value)
    name = torch.cuda.get_device_name(images.device) if images.is_cuda else platform.processor() or "cpu"
    return {"device": device, "device_name": name, "batch": batch, "side": side,
            "threads": torch.get_num_threads(), **{k: round(v, 5) for k, v in best.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="refit the calibration on a fresh set first")
    parser.add_argument("--n-fit", type=int, default=600, help="images to fit on (seed 0)")
    parser.add_argument("--n-eval", type=int, default=1000, help="held-out images to evaluate on (seed 1)")
    parser.add_argument("--device", action="append", default=None,
                        help="time the proxy on this device (repeatable; default: cpu, and cuda when present)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    proxy = JpegSizeProxy()
    result: dict = {"calibration_in_code": {"weights": dict(zip(FEATURES, proxy.calibration.weights)),
                                            "intercept": proxy.calibration.intercept}}
    if args.fit:
        start = time.perf_counter()
        feats, _, true = measure(dataset(args.n_fit, seed=0), proxy)
        calibration = fit(feats, true)
        proxy = JpegSizeProxy(calibration=calibration)
        result["fit"] = {"n": args.n_fit, "seed": 0, "seconds": round(time.perf_counter() - start, 1),
                         "weights": dict(zip(FEATURES, calibration.weights)),
                         "intercept": calibration.intercept,
                         "python": f"Calibration(weights={calibration.weights}, intercept={calibration.intercept})"}
        print(f"fitted on {args.n_fit} images: {result['fit']['python']}")

    _, pred, true = measure(dataset(args.n_eval, seed=1), proxy)
    result["held_out"] = {**report(pred, true), "seed": 1}
    kinds = np.array([KINDS[i % len(KINDS)] for i in range(args.n_eval)])
    result["held_out_by_kind"] = {k: report(pred[kinds == k], true[kinds == k]) for k in KINDS}
    devices = args.device or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    result["timing"] = [timing(device) for device in devices]

    import PIL

    result["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                         "cpus": os.cpu_count(), "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
                         "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    result["versions"] = {"torch": torch.__version__, "pillow": PIL.__version__, "numpy": np.__version__}
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")

    held = result["held_out"]
    print(f"held-out set: {held['n']} images, true sizes {held['true_kb_range'][0]:.2f}-{held['true_kb_range'][1]:.2f} kB")
    print(f"  Spearman {held['spearman']:.4f}  Pearson {held['pearson']:.4f}  "
          f"mean |err| {held['mean_abs_err_kb']:.3f} kB  mean rel err {held['mean_rel_err']:.1%}")
    for kind, r in result["held_out_by_kind"].items():
        print(f"  {kind:9s} Spearman {r['spearman']:.4f}  mean |err| {r['mean_abs_err_kb']:.3f} kB  rel {r['mean_rel_err']:.1%}")
    for t in result["timing"]:
        print(f"{t['device']} ({t['device_name']}, {t['threads']} CPU threads), batch {t['batch']} at {t['side']} px: "
              f"forward {t['forward_s'] * 1000:.1f} ms, forward+backward {t['forward_backward_s'] * 1000:.1f} ms "
              f"(process CPU time {t['forward_cpu_s']:.2f} s / {t['forward_backward_cpu_s']:.2f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
