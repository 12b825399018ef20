"""Reading and checking the data a reward is fitted on: ratings, pairwise preferences, labels.

Formats (paths are relative to the data file):

- ratings: CSV or JSONL rows with `image` and `score` (optional `prompt`);
- pairs: JSONL rows with `prompt`, `chosen` and `rejected` (Pick-a-Pic / HPD style);
- labels: CSV or JSONL rows with `image` and `label` (optional `prompt`).

Everything a fit could stumble on is checked here, before any model loads or any file is
written: each problem is one line naming the row. Images are identified by the hash of their
bytes, so the same picture under two names is one image: cross-validation splits by image
(by connected images for pairs), never letting a duplicate sit on both sides of a split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignkit.errors import AlignkitError, read_text

KINDS = ("ratings", "pairs", "labels")
# The columns that identify each kind (the first match wins when --kind is not given).
KIND_COLUMNS = {"pairs": ("chosen", "rejected"), "ratings": ("image", "score"), "labels": ("image", "label")}


@dataclass
class Dataset:
    kind: str
    source: Path
    # Distinct images, by content: their files (the first name seen) and content hashes.
    paths: list[Path]
    hashes: list[str]
    # Per row: image indices (1 for ratings/labels; chosen, rejected for pairs) and prompt.
    images: np.ndarray
    prompts: list[str]
    # ratings: float scores; labels: class indices into `classes`; pairs: unused (ones).
    targets: np.ndarray
    classes: list[str] = field(default_factory=list)
    # sha256 of the data file and of every image's bytes, in row order: what was fitted on.
    digest: str = ""
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.prompts)

    def groups(self) -> np.ndarray:
        """A group id per row such that rows sharing an image share a group."""
        if self.kind != "pairs":
            return self.images[:, 0].copy()
        parent = list(range(len(self.paths)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b in self.images:
            parent[root(a)] = root(b)
        return np.array([root(a) for a, _ in self.images])


def read_dataset(path: Path, kind: str | None = None, positive: str | None = None) -> Dataset:
    """Read, detect the kind, and check every row and image file; one line on any problem."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise AlignkitError(f"{path} has no rows")
    kind = kind or _detect_kind(path, rows[0][1])
    if kind not in KINDS:
        raise AlignkitError(f"--kind '{kind}' is not one of {', '.join(KINDS)}")
    needed = KIND_COLUMNS[kind] + (("prompt",) if kind == "pairs" else ())
    hashes: dict[str, int] = {}
    paths: list[Path] = []
    by_file: dict[Path, str] = {}
    uses = Counter()

    def image_index(row_no: int, column: str, value) -> int:
        if not isinstance(value, str) or not value.strip():
            raise AlignkitError(f"{path} row {row_no}: '{column}' must be an image path, got {value!r}")
        file = (path.parent / value.strip()).resolve()
        if file not in by_file:
            by_file[file] = _image_hash(file, f"{path} row {row_no}")
        digest = by_file[file]
        if digest not in hashes:
            hashes[digest] = len(paths)
            paths.append(file)
        uses[digest] += 1
        return hashes[digest]

    images, prompts, targets, raw_labels = [], [], [], []
    for row_no, row in rows:
        missing = [c for c in needed if row.get(c) in (None, "")]
        if missing:
            raise AlignkitError(f"{path} row {row_no}: no '{missing[0]}' (a {kind} row needs {', '.join(needed)})")
        prompt = row.get("prompt") or ""
        if not isinstance(prompt, str):
            raise AlignkitError(f"{path} row {row_no}: 'prompt' must be text, got {prompt!r}")
        if kind == "pairs":
            a, b = image_index(row_no, "chosen", row["chosen"]), image_index(row_no, "rejected", row["rejected"])
            if a == b:
                raise AlignkitError(f"{path} row {row_no}: 'chosen' and 'rejected' are the same image "
                                    f"({row['chosen']}, {row['rejected']}); a pair needs two different images")
            images.append((a, b))
            targets.append(1.0)
        else:
            images.append((image_index(row_no, "image", row["image"]),))
            if kind == "ratings":
                targets.append(_score(row["score"], f"{path} row {row_no}"))
            else:
                raw_labels.append(str(row["label"]).strip())
        prompts.append(prompt)

    classes: list[str] = []
    if kind == "labels":
        classes = sorted(set(raw_labels), key=_natural)
        if len(classes) < 2:
            raise AlignkitError(f"{path}: every row has the label '{classes[0]}'; a classifier needs two classes or more")
        if positive is None:
            if len(classes) > 2:
                raise AlignkitError(f"{path} has {len(classes)} classes ({', '.join(classes)}); say which one "
                                    "the reward prefers with --positive LABEL")
            positive = classes[1]
        if str(positive) not in classes:
            raise AlignkitError(f"--positive '{positive}' is not a label of {path} (labels: {', '.join(classes)})")
        # The wanted class goes last, so that a binary head's one logit is its log-odds.
        classes = [c for c in classes if c != str(positive)] + [str(positive)]
        targets = [classes.index(label) for label in raw_labels]
    elif positive is not None:
        raise AlignkitError("--positive only applies to labels")
    if kind == "ratings" and np.ptp(targets) == 0:
        raise AlignkitError(f"{path}: every score is {targets[0]:g}; constant scores carry nothing to fit")

    data_bytes = path.read_bytes()
    digest = hashlib.sha256(data_bytes)
    for h in hashes:
        digest.update(h.encode())
    return Dataset(kind=kind, source=path, paths=paths, hashes=list(hashes),
                   images=np.array(images, dtype=np.int64), prompts=prompts,
                   targets=np.array(targets, dtype=np.float64 if kind != "labels" else np.int64),
                   classes=classes, digest=digest.hexdigest(),
                   duplicates=sum(n - 1 for n in uses.values() if n > 1) if kind != "pairs" else 0)


def check_folds(data: Dataset, folds: int) -> None:
    """Enough independent rows for `folds`-fold cross-validation (and of every class)."""
    if folds < 2:
        raise AlignkitError(f"--folds must be at least 2, got {folds}")
    groups = len(set(data.groups().tolist()))
    if data.kind == "pairs" and groups < 2 * folds:
        # Linked pairs are split by image instead (crossval.image_splits).
        groups = len(data.paths) if len(data) >= 4 * folds else 0
    if groups < 2 * folds:
        raise AlignkitError(f"{data.source}: {len(data)} rows ({groups} independent images or image groups) are too "
                            f"few for {folds}-fold cross-validation; give at least {2 * folds} or lower --folds")
    if data.kind == "labels":
        counts = Counter(data.targets.tolist())
        for index, name in enumerate(data.classes):
            if counts[index] < folds:
                raise AlignkitError(f"{data.source}: class '{name}' has {counts[index]} rows; {folds}-fold "
                                    f"cross-validation needs at least {folds} of each class")


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    text = read_text(path, "data file")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise AlignkitError(f"{path} has no header row")
        return [(i + 2, row) for i, row in enumerate(reader)]  # row 1 is the header
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise AlignkitError(f"{path}: data must be .csv or .jsonl")
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise AlignkitError(f"{path} line {i} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise AlignkitError(f"{path} line {i} is not a JSON object")
        rows.append((i, row))
    return rows


def _detect_kind(path: Path, row: dict) -> str:
    for kind, columns in KIND_COLUMNS.items():
        if all(c in row for c in columns):
            return kind
    raise AlignkitError(f"{path}: cannot tell the data's kind from its columns ({', '.join(row)}); expected "
                        "image+score (ratings), chosen+rejected+prompt (pairs) or image+label (labels), or pass --kind")


def _score(value, where: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise AlignkitError(f"{where}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise AlignkitError(f"{where}: score {value!r} is not finite")
    return score


def _image_hash(file: Path, where: str) -> str:
    """The sha256 of an image file's bytes, after checking that it decodes."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise AlignkitError(f"{where}: no image file at {file}") from None
    except OSError as exc:
        raise AlignkitError(f"{where}: cannot read {file} ({exc.strerror or type(exc).__name__})") from None
    try:
        import io

        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise AlignkitError(f"{where}: {file} is not a readable image ({type(exc).__name__})") from None
    return hashlib.sha256(data).hexdigest()


def _natural(label: str):
    """'2' < '10' for numeric labels; text labels alphabetically."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
