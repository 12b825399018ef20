"""The heads a reward is fitted with, and the plain-linear-algebra form they are saved in.

Two families, for each data kind:

- linear, with scikit-learn on standardised features: `RidgeCV` for ratings (as LAION's v1
  predictor), `LogisticRegressionCV` for labels, and Bradley–Terry for pairs, i.e. logistic
  regression without intercept on feature differences, P(a ≻ b) = σ(w·(f(a) − f(b)));
- a small MLP in torch (LAION v2's idea, smaller), with early stopping on a validation split
  made by image groups.

Either way the result is a `Head`: a stack of affine layers with ReLU between, the input
standardisation folded into the first layer and the target scaling into the last, and an
output transform (the rating itself, a log-probability of the wanted class). Saved as
safetensors tensors `layers.{i}.weight` / `layers.{i}.bias` and rebuilt by `head_module`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# How the last layer's outputs become the reward: the value itself (a rating, a Bradley–Terry
# utility), or the log-probability of the wanted class (binary: one log-odds logit; several
# classes: softmax over logits, the wanted class last).
OUTPUTS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda out: out[:, 0],
    "logsigmoid": lambda out: F.logsigmoid(out[:, 0]),
    "log_softmax_last": lambda out: F.log_softmax(out, dim=-1)[:, -1],
}


@dataclass
class Head:
    kind: str  # "linear" | "mlp"
    weights: list[np.ndarray]  # per layer (out, in)
    biases: list[np.ndarray]  # per layer (out,)
    output: str

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The last layer's outputs (N, out) for features (N, D), in numpy."""
        h = x.astype(np.float64)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.T.astype(np.float64) + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0)
        return h

    @property
    def sizes(self) -> list[int]:
        return [int(self.weights[0].shape[1])] + [int(w.shape[0]) for w in self.weights]

    def state_dict(self) -> dict[str, Tensor]:
        out = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"layers.{2 * i}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            out[f"layers.{2 * i}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
        return out


class HeadModule(nn.Module):
    """A saved head: affine layers with ReLU between (indices 0, 2, 4, ...), then the output transform."""

    def __init__(self, sizes: list[int], output: str):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(n_in, n_out))
        self.layers = nn.Sequential(*layers)
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        return OUTPUTS[self.output](self.layers(x))


def head_module(head: Head) -> HeadModule:
    module = HeadModule(head.sizes, head.output)
    module.load_state_dict(head.state_dict())
    return module


# --------------------------------------------------------------------------- training data

@dataclass
class Problem:
    """One fit's training data: features per row (ratings, labels) or per side (pairs)."""

    kind: str
    x: np.ndarray  # (N, D): the row's features; for pairs, the chosen side
    y: np.ndarray  # ratings: scores; labels: class indices; pairs: unused
    groups: np.ndarray
    x_rejected: np.ndarray | None = None  # pairs only
    n_classes: int = 0
    pair_images: np.ndarray | None = None  # pairs only: (N, 2) image indices

    def subset(self, rows: np.ndarray) -> "Problem":
        return Problem(self.kind, self.x[rows], self.y[rows], self.groups[rows],
                       None if self.x_rejected is None else self.x_rejected[rows], self.n_classes,
                       None if self.pair_images is None else self.pair_images[rows])

    def all_features(self) -> np.ndarray:
        return self.x if self.x_rejected is None else np.concatenate([self.x, self.x_rejected])


def standardiser(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    x = problem.all_features()
    mu, sigma = x.mean(0), x.std(0)
    return mu, np.where(sigma > 1e-8, sigma, 1.0)


def fold_standardisation(weight: np.ndarray, bias: np.ndarray, mu: np.ndarray, sigma: np.ndarray):
    """W((x − μ)/σ) + b = (W/σ) x + (b − (W/σ) μ): the saved head reads raw embeddings."""
    w = weight / sigma
    return w, bias - w @ mu


def inner_splits(groups: np.ndarray, y: np.ndarray | None = None, n: int = 3, seed: int = 0) -> list:
    """Grouped splits for the linear models' own regularisation search (a duplicate never sits
    on both sides there either)."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold

    if len(np.unique(groups)) < n:
        # Pairs whose images are all linked form one group: split rows here (this search only
        # picks the regularisation; the held-out metrics use image splits).
        return list(KFold(n_splits=n, shuffle=True, random_state=seed).split(np.zeros(len(groups))))
    if y is not None:
        splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y, groups))
    return list(GroupKFold(n_splits=n, shuffle=True, random_state=seed).split(np.zeros(len(groups)), groups=groups))


# --------------------------------------------------------------------------- linear

# Inverse regularisation strengths searched by LogisticRegressionCV. Capped at 10: on separable
# data (a clean preference) larger ones only grow the weights, and lbfgs spends its iterations there.
_CS = np.logspace(-3, 1, 5)


def fit_linear(problem: Problem, seed: int = 0) -> Head:
    # scikit-learn 1.9 announces changes to LogisticRegressionCV's defaults and attributes;
    # the ones read here (coef_, intercept_) keep their meaning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _fit_linear(problem, seed)


def _fit_linear(problem: Problem, seed: int) -> Head:
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV

    mu, sigma = standardiser(problem)
    if problem.kind == "ratings":
        # Efficient leave-one-out (one SVD) when every row is its own image; with duplicates,
        # LOO would leave a copy in training, so the search uses grouped folds instead.
        grouped = len(np.unique(problem.groups)) < len(problem.groups)
        model = RidgeCV(alphas=np.logspace(-2, 5, 15), cv=inner_splits(problem.groups, seed=seed) if grouped else None)
        model.fit((problem.x - mu) / sigma, problem.y)
        w, b = fold_standardisation(model.coef_[None, :], np.array([model.intercept_]), mu, sigma)
        return Head("linear", [w], [b], "identity")
    if problem.kind == "labels":
        x = (problem.x - mu) / sigma
        model = LogisticRegressionCV(Cs=_CS, cv=inner_splits(problem.groups, problem.y, seed=seed),
                                     max_iter=500, scoring="neg_log_loss")
        model.fit(x, problem.y)
        # Classes are 0..C-1 with the wanted one last; binary: one log-odds logit of the wanted class.
        w, b = fold_standardisation(model.coef_, model.intercept_, mu, sigma)
        return Head("linear", [w], [b], "logsigmoid" if problem.n_classes == 2 else "log_softmax_last")
    # Bradley–Terry: both orientations of every pair, so the classes balance and no intercept is needed.
    diff = (problem.x - problem.x_rejected) / sigma
    x = np.concatenate([diff, -diff])
    y = np.concatenate([np.ones(len(diff)), np.zeros(len(diff))])
    groups = np.concatenate([problem.groups, problem.groups])
    model = LogisticRegressionCV(Cs=_CS, cv=inner_splits(groups, seed=seed), fit_intercept=False,
                                 max_iter=500, scoring="neg_log_loss")
    model.fit(x, y)
    w = model.coef_ / sigma
    # Any constant leaves P(a ≻ b) unchanged: centre the utility on the training images.
    b = -(problem.all_features() @ w.T).mean(0)
    return Head("linear", [w], b, "identity")


# --------------------------------------------------------------------------- MLP

@dataclass
class MLPSettings:
    hidden: tuple[int, ...] = (256, 64)
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 128
    max_epochs: int = 200
    # Epochs without a better validation loss before stopping (the best weights are kept).
    patience: int = 15
    val_fraction: float = 0.15


def fit_mlp(problem: Problem, seed: int = 0, settings: MLPSettings = MLPSettings()) -> Head:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mu, sigma = standardiser(problem)
    # Validation by group, so that early stopping never looks at a duplicate of a training image.
    unique = rng.permutation(np.unique(problem.groups))
    if len(unique) >= 5:
        n_val = max(1, int(round(settings.val_fraction * len(unique))))
        val_mask = np.isin(problem.groups, unique[:n_val])
    else:  # linked pairs (one group): a row split, used for early stopping only
        val_mask = rng.random(len(problem.y)) < settings.val_fraction
        val_mask[rng.integers(len(val_mask))] = True
    y_mu, y_sd = (problem.y.mean(), problem.y.std() or 1.0) if problem.kind == "ratings" else (0.0, 1.0)
    n_out = problem.n_classes if problem.kind == "labels" and problem.n_classes > 2 else 1

    def tensors(mask):
        x = torch.tensor((problem.x[mask] - mu) / sigma, dtype=torch.float32)
        xr = None if problem.x_rejected is None else torch.tensor((problem.x_rejected[mask] - mu) / sigma, dtype=torch.float32)
        y = torch.tensor((problem.y[mask] - y_mu) / y_sd, dtype=torch.float32)
        return x, xr, y

    train, val = tensors(~val_mask), tensors(val_mask)
    sizes = [problem.x.shape[1], *settings.hidden, n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers += [nn.ReLU(), nn.Dropout(settings.dropout)]
        layers.append(nn.Linear(a, b))
    net = nn.Sequential(*layers)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def loss_of(x, xr, y):
        out = net(x)
        if problem.kind == "ratings":
            return F.mse_loss(out[:, 0], y)
        if problem.kind == "pairs":
            return -F.logsigmoid(out[:, 0] - net(xr)[:, 0]).mean()
        if n_out == 1:
            return F.binary_cross_entropy_with_logits(out[:, 0], y)
        return F.cross_entropy(out, y.long())

    best, best_state, stale = float("inf"), None, 0
    n = len(train[0])
    for _ in range(settings.max_epochs):
        net.train()
        for idx in torch.randperm(n).split(settings.batch_size):
            optimizer.zero_grad()
            loss_of(train[0][idx], None if train[1] is None else train[1][idx], train[2][idx]).backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(loss_of(*val))
        if val_loss < best - 1e-6:
            best, best_state, stale = val_loss, {k: v.clone() for k, v in net.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    net.load_state_dict(best_state)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    weights = [m.weight.detach().double().numpy() for m in linears]
    biases = [m.bias.detach().double().numpy() for m in linears]
    weights[0], biases[0] = fold_standardisation(weights[0], biases[0], mu, sigma)
    # The net predicts standardised ratings: scale its last layer back to rating units.
    weights[-1], biases[-1] = weights[-1] * y_sd, biases[-1] * y_sd + y_mu
    output = "identity" if problem.kind != "labels" else ("logsigmoid" if n_out == 1 else "log_softmax_last")
    return Head("mlp", weights, biases, output)


HEADS: dict[str, Callable[..., Head]] = {"linear": fit_linear, "mlp": fit_mlp}
