"""Image-set metrics for over-optimisation: diversity across seeds and drift from the base.

Distances live in an embedding space when one is at hand: a loaded reward's
`Reward.embed_images(images) -> (B, D)` (the CLIP family's image features, through the
reward's own preprocessing), distance = 1 - cosine of the embeddings. Otherwise pixels:
images area-downsampled to 64x64, distance = root-mean-square difference in [0,1] units
(cheap, model-free, but blind to semantics).
LPIPS (`lpips` package, AlexNet) is added as `diversity/lpips`, reported but not watched,
when the package is importable and its weights load.

Diversity of a condition = for each prompt, the mean pairwise distance between the images of
its seeds, then the mean over prompts. Drift of an image = its distance to the base image of
the same prompt and seed (same initial noise), in the embedding and as pixel MSE.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_SIDE = 64


@dataclass
class Embedder:
    """Images (B,3,H,W) in [0,1] -> features (B,D); `name` keys the embedding cache."""

    name: str
    embed: Callable[[Tensor], Tensor]
    # "cosine" for learned embeddings, "rms" for raw pixels.
    distance: str = "cosine"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor | None:
        features = self.embed(images)
        # None: the embedding function has no features to give (a reward without an embedding).
        return None if features is None else features.float().flatten(1).cpu()


def pixel_embedder() -> Embedder:
    def embed(images: Tensor) -> Tensor:
        return F.interpolate(images.float(), size=(PIXEL_SIDE, PIXEL_SIDE), mode="area")

    return Embedder("pixel", embed, distance="rms")


def lpips_metric(device: str) -> tuple[Callable[[Tensor, Tensor], Tensor] | None, str | None]:
    """LPIPS(a, b) -> (B,) when the `lpips` package and its AlexNet weights are here."""
    import importlib.util

    if importlib.util.find_spec("lpips") is None:
        return None, None
    try:
        import lpips

        net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as exc:  # its AlexNet backbone downloads weights: offline, that fails
        return None, f"LPIPS skipped: its AlexNet weights could not be loaded ({type(exc).__name__})"

    @torch.no_grad()
    def distance(a: Tensor, b: Tensor) -> Tensor:
        # LPIPS takes [-1,1] images.
        return net(a.to(device) * 2 - 1, b.to(device) * 2 - 1).flatten().float().cpu()

    return distance, None


def pairwise_distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Row-wise distance between feature batches a and b, (B,)."""
    if kind == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=-1)
    return (a - b).pow(2).mean(dim=-1).sqrt()


def diversity(features: Tensor, kind: str) -> float | None:
    """Mean pairwise distance among the features of one prompt's seeds (None below 2)."""
    n = features.shape[0]
    if n < 2:
        return None
    pairs = list(itertools.combinations(range(n), 2))
    i, j = (torch.tensor(idx) for idx in zip(*pairs))
    return float(pairwise_distance(features[i], features[j], kind).mean())


def lpips_diversity(images: Tensor, metric: Callable[[Tensor, Tensor], Tensor]) -> float | None:
    n = images.shape[0]
    if n < 2:
        return None
    pairs = list(itertools.combinations(range(n), 2))
    i, j = (torch.tensor(idx) for idx in zip(*pairs))
    return float(metric(images[i], images[j]).mean())


def pixel_mse(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean squared error in [0,1] units, (B,)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        t = torch.tensor(values, dtype=torch.float64)
        # Sample std (n-1); a single value has no spread to speak of.
        std = float(t.std()) if len(values) > 1 else 0.0
        return cls(float(t.mean()), std, len(values))

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass(frozen=True)
class Gain:
    """A condition's paired gain over the base model on one metric: the mean over images of
    (its value - the base image's value with the same prompt and seed), with a 95% interval
    (Student's t on the paired differences)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def paired(cls, base: list[float], cand: list[float]) -> "Gain":
        from scipy.stats import t as student_t

        d = torch.tensor(cand, dtype=torch.float64) - torch.tensor(base, dtype=torch.float64)
        n = len(d)
        mean = float(d.mean())
        if n < 2:
            return cls(mean, float("-inf"), float("inf"), n)
        half = float(student_t.ppf(0.975, n - 1)) * float(d.std()) / n ** 0.5
        return cls(mean, mean - half, mean + half, n)

    def rose(self, direction: int = 1) -> bool:
        """Better than the base beyond noise (the interval excludes 0 on the good side)."""
        return self.low > 0 if direction > 0 else self.high < 0

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high], "n": self.n}

    def text(self, scale: float = 1.0, unit: str = "") -> str:
        return (f"{scale * self.mean:+.3g}{unit} (95% CI {scale * self.low:+.3g} to {scale * self.high:+.3g}{unit}, "
                f"n={self.n} paired)")
