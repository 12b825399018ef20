"""k-fold cross-validation by image group, the held-out metrics of each data kind, and the
learning curve.

Folds are made over groups (an image and its duplicates; for pairs, images linked through
pairs), stratified by class for labels, so a held-out metric never scores an image the head
was fitted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from alignkit.rewards.fit.heads import HEADS, Head, Problem

# The metric that chooses between heads, per data kind (higher is better).
PRIMARY = {"ratings": "spearman", "pairs": "pair_accuracy", "labels": "auc"}
# Data fractions of the learning curve.
FRACTIONS = (0.10, 0.25, 0.50, 1.00)


def fold_splits(problem: Problem, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    zeros = np.zeros(len(problem.y))
    if problem.kind == "pairs" and len(np.unique(problem.groups)) < 2 * folds:
        return image_splits(problem, folds, seed)
    if problem.kind == "labels":
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(zeros, problem.y, problem.groups))
    return list(GroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(zeros, groups=problem.groups))


def image_splits(problem: Problem, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs whose images are all linked (every image in pairs with many others, as in a
    ranking of several images per prompt): each image goes to one fold; a pair is held out in
    fold k when both its images are in fold k, trains when neither is, and is left out of that
    split otherwise. Fewer pairs per split, none of them leaking."""
    from alignkit.errors import AlignkitError

    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(int(problem.pair_images.max()) + 1) % folds
    a, b = fold_of[problem.pair_images[:, 0]], fold_of[problem.pair_images[:, 1]]
    splits = [(np.flatnonzero((a != k) & (b != k)), np.flatnonzero((a == k) & (b == k))) for k in range(folds)]
    if min(len(test) for _, test in splits) < 2:
        raise AlignkitError(f"{len(problem.y)} pairs are too few for {folds}-fold cross-validation split by image "
                            "(a held-out pair needs both images held out); give more pairs or lower --folds")
    return splits


def predict(head: Head, problem: Problem) -> np.ndarray:
    """ratings: predicted scores; pairs: utility differences (chosen − rejected); labels: the
    probability of each class (N, C)."""
    out = head.raw(problem.x)
    if problem.kind == "ratings":
        return out[:, 0]
    if problem.kind == "pairs":
        return out[:, 0] - head.raw(problem.x_rejected)[:, 0]
    if out.shape[1] == 1:  # binary: one log-odds logit of the last class
        p = 1 / (1 + np.exp(-out[:, 0]))
        return np.stack([1 - p, p], axis=1)
    e = np.exp(out - out.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def metrics(problem: Problem, prediction: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import roc_auc_score

    if problem.kind == "ratings":
        constant = np.ptp(prediction) == 0 or np.ptp(problem.y) == 0
        return {"spearman": float("nan") if constant else float(spearmanr(prediction, problem.y).statistic),
                "pearson": float("nan") if constant else float(pearsonr(prediction, problem.y).statistic),
                "mae": float(np.abs(prediction - problem.y).mean())}
    if problem.kind == "pairs":
        # A tie is half right: a head that scores every image alike is at chance, not at 0.
        return {"pair_accuracy": float(((prediction > 0) + 0.5 * (prediction == 0)).mean())}
    accuracy = float((prediction.argmax(1) == problem.y).mean())
    try:
        if prediction.shape[1] == 2:
            auc = roc_auc_score(problem.y == 1, prediction[:, 1])
        else:
            auc = roc_auc_score(problem.y, prediction, multi_class="ovr", labels=list(range(prediction.shape[1])))
    except ValueError:  # a fold holding a single class has no AUC
        auc = float("nan")
    return {"accuracy": accuracy, "auc": float(auc)}


@dataclass
class CVResult:
    head: str
    per_fold: list[dict[str, float]]
    # Out-of-fold predictions for every row (for the calibration plot).
    oof: np.ndarray
    fold_heads: list[Head] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name in self.per_fold[0]:
            values = np.array([fold[name] for fold in self.per_fold], dtype=float)
            values = values[np.isfinite(values)]
            out[name] = {"mean": float(values.mean()) if len(values) else float("nan"),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan")}
        return out

    def primary(self, kind: str) -> float:
        value = self.summary()[PRIMARY[kind]]["mean"]
        return value if math.isfinite(value) else -math.inf


def cross_validate(problem: Problem, head: str, splits, seed: int = 0, progress: Callable | None = None) -> CVResult:
    fit = HEADS[head]
    per_fold, fold_heads = [], []
    oof = None
    for k, (train, test) in enumerate(splits):
        fitted = fit(problem.subset(train), seed=seed + k)
        held = problem.subset(test)
        prediction = predict(fitted, held)
        if oof is None:
            oof = np.zeros((len(problem.y),) + prediction.shape[1:])
        oof[test] = prediction
        per_fold.append(metrics(held, prediction))
        fold_heads.append(fitted)
        if progress:
            progress()
    return CVResult(head, per_fold, oof, fold_heads)


def learning_curve(problem: Problem, head: str, splits, seed: int = 0, progress: Callable | None = None) -> list[dict]:
    """The held-out primary metric when the head sees a fraction of each training fold (by group)."""
    name = PRIMARY[problem.kind]
    rng = np.random.default_rng(seed)
    curve = []
    for fraction in FRACTIONS:
        values, sizes = [], []
        for k, (train, test) in enumerate(splits):
            # Rows of the training fold (none shares an image with the held-out fold).
            rows = np.sort(rng.permutation(train)[:max(8, int(round(fraction * len(train))))])
            sub = problem.subset(rows)
            if problem.kind == "labels" and len(np.unique(sub.y)) < problem.n_classes:
                continue  # too few rows at this fraction to hold every class
            try:
                fitted = HEADS[head](sub, seed=seed + k)
            except ValueError:
                continue  # scikit-learn refuses (e.g. fewer groups than its inner folds)
            values.append(metrics(problem.subset(test), predict(fitted, problem.subset(test)))[name])
            sizes.append(len(rows))
            if progress:
                progress()
        values = [v for v in values if math.isfinite(v)]
        curve.append({"fraction": fraction, "rows": int(np.mean(sizes)) if sizes else 0, "metric": name,
                      "mean": float(np.mean(values)) if values else float("nan"),
                      "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")})
    return curve


def calibration(problem: Problem, oof: np.ndarray, bins: int = 10) -> dict:
    """Binned out-of-fold predictions against what was observed.

    ratings: mean predicted vs mean true score per predicted-score decile; labels: predicted
    probability of the wanted class vs its observed frequency; pairs: predicted P(first ≻
    second) vs observed, over both orientations of every pair."""
    if problem.kind == "ratings":
        predicted, observed, x_label, y_label = oof, problem.y, "predicted score", "true score (mean)"
    elif problem.kind == "labels":
        wanted = oof.shape[1] - 1
        predicted, observed = oof[:, wanted], (problem.y == wanted).astype(float)
        x_label, y_label = "predicted P(wanted class)", "observed frequency"
    else:
        p = 1 / (1 + np.exp(-oof))
        predicted, observed = np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])
        x_label, y_label = "predicted P(first preferred)", "observed frequency"
    edges = np.quantile(predicted, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, bins - 1)
    xs, ys, ns = [], [], []
    for b in range(bins):
        mask = which == b
        if mask.any():
            xs.append(float(predicted[mask].mean()))
            ys.append(float(observed[mask].mean()))
            ns.append(int(mask.sum()))
    return {"x": xs, "y": ys, "n": ns, "x_label": x_label, "y_label": y_label}
