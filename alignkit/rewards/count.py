"""`count`: does the image hold as many objects of the prompted class as the prompt says?

An ultralytics YOLO detector scores every anchor; `predict()` would then threshold and run
NMS, without gradients. Here the raw head outputs (class logits and decoded boxes of the
DetectionModel's eval forward) become a *soft count*, differentiable in the pixels:

* presence: each anchor's logit for the target class goes through a sharpened sigmoid
  centred on the NMS confidence threshold. A plain sigmoid would let thousands of
  background anchors at p = 0.01 leak tens of "objects"; the sharpened gate (slope
  `gate_slope` in logit units) sends them below 1e-6 each while an anchor at p >= 0.5 counts ~1.
* grouping: several anchors fire on one object. Each candidate is discounted by every
  stronger one that overlaps it, as a soft greedy NMS:
  count = sum_i w_i * prod_{j stronger} (1 - w_j * s(IoU_ij)), with s a sharpened step at
  IoU 0.5 (see `SoftCountConfig.group_iou`) and "stronger" a steep sigmoid of the logit gap,
  so that the count is continuous where anchors tie. Within one object this is a noisy-OR (at most
  1, exactly 1 when its best anchor is sure); boxes that NMS would keep apart count apart.
  The count is per class, like NMS with multi_label: an anchor counts for the prompted
  class even when another class scores higher there (class-aware NMS in `targets()` keeps
  only its best class; the two differ only where the detector confuses classes).
* reward = -(sqrt((count - n)^2 + delta^2) - delta): |count - n| smoothed near 0 (pseudo-Huber),
  so it is 0 at the right count and its gradient does not flip sign abruptly there.
* `augment=N` averages the objective over N shifted and mirrored copies of each image (see
  `shifted_copies`): an aligner that climbs one view of a detector learns to move the detector's
  logits, which the world does not count as objects; N views agree only on objects.
* `objective=exact` is the score a policy gradient (`--algorithm grpo`) trains on: 1.0 when the
  detector's count after NMS (exactly `targets()`'s `count_nms`: ultralytics'
  non_max_suppression at conf 0.25 and IoU 0.7, class-aware, counting the prompted class) equals
  the prompt's number, else 0.0; with `augment=N`, the share of the N views where it does. It has
  no gradient (the reward declares `differentiable = False`).

`targets()` reports the detector's count after ultralytics' own non_max_suppression (conf
0.25, IoU 0.7 as its predictor uses) and whether it equals n. Both are read by the same
detector the reward is built on, so they are *proxy* targets: an aligner can learn to fool the
detector, and its NMS count with it. The truth needs a judge that shares no weights with the
reward (on the toy world, `alignkit.toy.counter`; on real models, another detector:
`alignkit eval --judge count --judge-option detector=...`).

The detector's format, loading and letterboxing live in `alignkit.detectors` (shared with
the toy world). ultralytics is AGPL-3.0, hence an optional extra imported only when `count`
is built.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.detectors import WEIGHTS_FILE, YAML_FILE, default_detector, import_ultralytics, letterbox, load_detector
from alignkit.errors import AlignkitError, MissingWeightsError
from alignkit.prompts import plural
from alignkit.rewards.base import Reward
from alignkit.rewards.registry import register



# --------------------------------------------------------------------------- prompt parsing

_NUMBER_WORDS = {
    "zero": 0, "no": 0, "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11,
    "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}
# Words that end a noun phrase: a number before them does not quantify a class after them
# ("a photo of apples" has no number of apples).
_PHRASE_BREAKS = {"of", "on", "in", "with", "and", "or", "at", "by", "near", "under", "over", "the", ","}
# How many adjectives may stand between a number and its noun ("three big red apples").
_MAX_GAP = 4


def _class_forms(names: dict[int, str]) -> list[tuple[tuple[str, ...], int]]:
    """Token sequences (singular and plural, last word inflected) -> class id, longest first."""
    forms = []
    for cid, name in names.items():
        words = tuple(name.lower().replace("_", " ").split())
        if not words:
            continue
        forms.append((words, cid))
        forms.append((words[:-1] + (plural(words[-1]),), cid))
    return sorted(set(forms), key=lambda f: -len(f[0]))


def parse_count_prompt(prompt: str, names: dict[int, str]) -> tuple[int, int]:
    """'two red circles on a white background' -> (2, id of 'circle').

    The class is the first detector class named in the prompt; its number is the nearest
    number word or digit before it within the same noun phrase.
    """
    tokens = re.findall(r"[a-z]+|\d+|,", prompt.lower())
    forms = _class_forms(names)
    for pos in range(len(tokens)):
        for words, cid in forms:
            if tuple(tokens[pos:pos + len(words)]) == words:
                return _number_before(tokens, pos, prompt, names[cid]), cid
    known = ", ".join(sorted(names.values()))
    raise AlignkitError(f"count: no object class of the detector in the prompt {prompt!r}; "
                        f"name one of: {known}")


def _number_before(tokens: list[str], pos: int, prompt: str, name: str) -> int:
    for back in range(pos - 1, max(-1, pos - 1 - _MAX_GAP), -1):
        token = tokens[back]
        if token.isdigit():
            return int(token)
        if token in _NUMBER_WORDS:
            return _NUMBER_WORDS[token]
        if token in _PHRASE_BREAKS:
            break
    raise AlignkitError(f"count: the prompt {prompt!r} gives no number of '{name}'; "
                        f"say how many, e.g. 'three {plural(name)}' or '3 {plural(name)}'")


# --------------------------------------------------------------------------- the soft count

@dataclass(frozen=True)
class SoftCountConfig:
    # Confidence at which an anchor counts as a detection (ultralytics' predict default 0.25).
    conf: float = 0.25
    # Slope of the presence gate in logit units. At 8 and conf 0.25: p=0.05 -> 4e-7,
    # p=0.1 -> 1.5e-4, p=0.3 -> 0.88, p=0.5 -> 0.9998. At 4, 3000 background anchors at
    # p <= 0.05 still leaked 0.4 of an object (measured in tests/test_rewards_count.py).
    gate_slope: float = 8.0
    # IoU of ultralytics' NMS for the true count in `targets()` (its predictor's 0.7).
    iou: float = 0.7
    # IoU above which a stronger anchor suppresses a weaker one in the soft count. Lower than
    # NMS's: neighbouring anchors on one object overlap at IoU 0.7-0.95, and a soft step
    # centred at 0.7 would let the duplicates right at 0.7 count half an object each (and
    # make the count depend on the order of near-tied anchors). At 0.5 with width 0.05 an
    # overlap of 0.7 suppresses at 98%; only objects overlapping by 0.5-0.7 count differently.
    group_iou: float = 0.5
    # Width of the soft IoU step, in IoU units.
    iou_temperature: float = 0.05
    # Anchors kept for the pairwise suppression (as NMS's max_det); the rest count unsuppressed.
    max_candidates: int = 300
    # Logit gap over which a candidate's membership fades out at the edge of that set.
    member_margin: float = 1.0
    # Logit gap over which "j is stronger than i" goes from 0.5 to 0.73: steep, so that only
    # anchors tied to within ~0.05 logit share their order (1e-5 of noise moves a count by ~1e-3).
    order_temperature: float = 0.01
    # Smoothing of |count - n| near 0.
    delta: float = 0.1


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes (..., N, 4) x (..., M, 4) -> (..., N, M), differentiable."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter + 1e-7)


def _candidates(boxes: Tensor, logits: Tensor, cfg: SoftCountConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The k strongest anchors and how much each survives the soft NMS.

    Returns (candidate logits (B,k), their presence (B,k), the summed presence of the anchors
    outside the candidates (B,), membership of the candidate set (B,k), log of the share not
    suppressed by stronger overlapping candidates (B,k)). Continuous in its inputs (see `soft_count`).
    """
    logits = logits.float()
    # Presence: a sharpened gate at the confidence threshold, in logit space so that the
    # slope is the same for every anchor and background mass stays negligible.
    presence = torch.sigmoid(cfg.gate_slope * (logits - math.log(cfg.conf / (1 - cfg.conf))))
    n = logits.shape[1]
    k = min(cfg.max_candidates, n)
    # Candidates: the k strongest anchors, by logit (the gate saturates; logits keep their order).
    ranked, index = logits.topk(min(k + 1, n), dim=1)
    cand_logits, index = ranked[:, :k], index[:, :k]
    if n > k:
        # The (k+1)-th logit is a continuous function of the pixels; a candidate's membership
        # fades to 0 as its logit comes down to it, so an anchor that enters or leaves the set
        # changes nothing. On a real detector the live anchors sit far above the edge.
        member = ((cand_logits - ranked[:, k:]) / cfg.member_margin).clamp(0, 1)
    else:
        member = torch.ones_like(cand_logits)
    top = presence.gather(1, index)
    # Anchors outside the candidates count (and pass gradient) without pairwise suppression,
    # which would cost O(N^2); they are far below the gate.
    rest = presence.sum(1) - top.sum(1)
    cand = boxes.float().gather(1, index[..., None].expand(-1, -1, 4))
    overlap = torch.sigmoid((box_iou(cand, cand) - cfg.group_iou) / cfg.iou_temperature)
    # Anchor i is discounted by each stronger anchor j that overlaps it. "Stronger" is a steep
    # sigmoid of the logit gap, not a sort: two near-tied anchors suppress each other by half
    # instead of flipping who suppresses whom.
    stronger = torch.sigmoid((cand_logits[:, None, :] - cand_logits[:, :, None]) / cfg.order_temperature)
    stronger = stronger * (1 - torch.eye(k, device=stronger.device, dtype=stronger.dtype))
    suppress = ((top * member)[:, None, :] * overlap * stronger).clamp(max=1 - 1e-6)
    log_keep = torch.log1p(-suppress).sum(-1)
    return cand_logits, top, rest, member, log_keep


def soft_count(boxes: Tensor, logits: Tensor, cfg: SoftCountConfig = SoftCountConfig()) -> Tensor:
    """Soft number of objects per image from anchor boxes (B,N,4 xyxy) and class logits (B,N).

    Continuous in its inputs: no anchor's contribution jumps when a tiny change of the pixels
    reorders two anchors or moves one across the candidate cut (see the comments below), so
    the same image scores the same alone or in a batch up to float noise, on any kernel.
    """
    _, top, rest, member, log_keep = _candidates(boxes, logits, cfg)
    # A candidate at the edge of the set is suppressed as little as the anchors outside it.
    return (top * (1 - member * (1 - log_keep.exp()))).sum(1) + rest


def count_log_likelihood(boxes: Tensor, logits: Tensor, numbers: Tensor,
                         cfg: SoftCountConfig = SoftCountConfig()) -> Tensor:
    """Log-probability, under the detector, that the image holds exactly `numbers` objects.

    Each candidate surviving the soft NMS is an object with probability
    p_i = sigmoid(logit_i) * (share not suppressed) * (membership); the n likeliest should be
    objects, the others not: sum_{r<n} log p_(r) + sum_{r>=n} log(1 - p_(r)).

    Why beside the soft count: the soft count's gate is sharp (so that background does not
    leak), which leaves no gradient where the count is wrong with confidence: an extra object
    the detector is sure of, or a missing one it gives no chance, sit on the gate's flat parts
    (on the toy model, docs/experiments/2026-12-02-toy-count-recipes.md). Here the gradient is
    1 - p on a missing object and p on an extra one: largest where the count is most wrong.
    Continuous: sorting values is continuous, and swapping the n-th and (n+1)-th candidates at
    a tie leaves the sum unchanged.
    """
    cand_logits, _, _, member, log_keep = _candidates(boxes, logits, cfg)
    log_p = F.logsigmoid(cand_logits) + log_keep + torch.log(member.clamp(min=1e-12))
    log_p, _ = log_p.sort(dim=1, descending=True)
    rank = torch.arange(log_p.shape[1], device=log_p.device)[None]
    wanted = rank < numbers.to(log_p.device)[:, None]
    # log(1 - p) written stably for p near 1 (an extra object the detector is sure of).
    log_not = torch.log(-torch.expm1(log_p.clamp(max=-1e-6)))
    return torch.where(wanted, log_p, log_not).sum(1)


# Offsets of the augmented views: the plastic (R2) sequence, a fixed low-discrepancy spread
# over the square [-1, 1]^2, so that views differ in their phase against the detector's strides.
_R2 = (0.7548776662466927, 0.5698402909980532)


def shifted_copies(images: Tensor, views: int, shift: float) -> Tensor:
    """(views*B, C, H, W): view 0 is the image; view i > 0 is shifted by up to `shift` of the
    side (edges padded by replication, as a plain background continues) and mirrored when i is odd.

    The views are fixed, not random, so that a reward reads the same image the same way in
    `score`, `eval` and a resumed run; differentiable in the pixels (pad and crop only).
    """
    h, w = images.shape[-2:]
    pad = max(1, round(shift * max(h, w)))
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    out = [images]
    for i in range(1, views):
        dx, dy = (round(((i * a) % 1 * 2 - 1) * pad) for a in _R2)
        view = padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]
        out.append(view.flip(-1) if i % 2 else view)
    return torch.cat(out)


def count_error(count: Tensor, target: Tensor, delta: float) -> Tensor:
    """Pseudo-Huber |count - target|: 0 at the target, ~|.| beyond delta."""
    return torch.sqrt((count - target) ** 2 + delta * delta) - delta


class CountReward(Reward):
    """Minus the (smoothed) gap between the soft count of the prompted class and its number."""

    proxy_targets = frozenset({"count_nms", "count_nms_correct"})

    def __init__(self, model, imgsz: int | None = None, config: SoftCountConfig = SoftCountConfig(),
                 objective: str = "error", augment: int = 1, shift: float = 0.1):
        super().__init__()
        # Options are checked by the `count` factory, before the detector loads.
        self.objective, self.augment, self.shift = objective, augment, shift
        # The exact count is read after NMS: a step function of the pixels, with no gradient.
        self.differentiable = objective != "exact"
        _, self._nms = import_ultralytics()
        self.model = model
        self.names: dict[int, str] = dict(model.names)
        self.stride = int(max(model.stride))
        self.imgsz = imgsz
        self.config = config

    def parse(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        pairs = [parse_count_prompt(p, self.names) for p in prompts]
        return (torch.tensor([n for n, _ in pairs], dtype=torch.float32),
                torch.tensor([c for _, c in pairs], dtype=torch.long))

    def head_outputs(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(decoded predictions (B,4+nc,N) as ultralytics' NMS takes them, xyxy boxes (B,N,4),
        class logits (B,nc,N)), from the eval-mode forward of the DetectionModel."""
        x = letterbox(images.to(self.device, self.dtype), self.stride, self.imgsz)
        decoded, raw = self.model(x)  # eval mode: (decoded, raw head dict); never predict()
        if "one2many" in raw:
            # End-to-end heads (YOLOv10/26) return top-k picks; count on the dense one-to-many
            # branch instead, decoded the way the head decodes it.
            raw = raw["one2many"]
            decoded = self.model.model[-1]._inference(raw)
        xywh = decoded[:, :4].transpose(1, 2)
        boxes = torch.cat([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], -1)
        return decoded, boxes, raw["scores"]

    def class_outputs(self, images: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        """xyxy boxes (B,N,4) and each image's logits for its prompted class (B,N)."""
        _, boxes, logits = self.head_outputs(images)
        target_logits = logits.gather(1, classes.to(logits.device).view(-1, 1, 1).expand(-1, 1, logits.shape[2]))
        return boxes, target_logits[:, 0]

    def soft_counts(self, images: Tensor, classes: Tensor) -> Tensor:
        return soft_count(*self.class_outputs(images, classes), self.config)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        numbers, classes = self.parse(prompts)  # a bad prompt fails before the detector runs
        views = self.augment
        if views > 1:
            images = shifted_copies(images, views, self.shift)
            numbers, classes = numbers.repeat(views), classes.repeat(views)
        if self.objective == "exact":
            return (self.nms_counts(images, classes) == numbers).float().view(views, -1).mean(0).to(images.device)
        boxes, logits = self.class_outputs(images, classes)
        score = OBJECTIVES[self.objective](boxes, logits, numbers.to(logits.device), self.config)
        return score.view(views, -1).mean(0)

    @torch.no_grad()
    def nms_counts(self, images: Tensor, classes: Tensor) -> Tensor:
        """The detector's count of each image's class after ultralytics' NMS (as its predictor)."""
        decoded, _, _ = self.head_outputs(images)
        detections = self._nms(decoded, conf_thres=self.config.conf, iou_thres=self.config.iou)
        return torch.tensor([float((det[:, 5].long() == int(c)).sum()) for det, c in zip(detections, classes)])

    @torch.no_grad()
    def targets(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        numbers, classes = self.parse(prompts)
        counts = self.nms_counts(images, classes)
        return {"count_nms": counts.to(images.device),
                "count_nms_correct": (counts == numbers).float().to(images.device)}


def _minus_count_error(boxes: Tensor, logits: Tensor, numbers: Tensor, cfg: SoftCountConfig) -> Tensor:
    return -count_error(soft_count(boxes, logits, cfg), numbers, cfg.delta)


# What `score` returns, by the reward's `objective` option.
OBJECTIVES: dict[str, Callable[[Tensor, Tensor, Tensor, SoftCountConfig], Tensor]] = {
    # minus |soft count - n| (pseudo-Huber): readable in objects, but flat where the count is
    # wrong with confidence (see count_log_likelihood).
    "error": _minus_count_error,
    # log P(exactly n objects) under the detector: its gradient is largest where the count is
    # most wrong.
    "likelihood": count_log_likelihood,
}


def _default_detector() -> str:
    """Where `detector` points when it is not given: the default of the detector registry
    (`alignkit.detectors.register_detector`; the toy world registers its own)."""
    try:
        found = default_detector()
    except MissingWeightsError as exc:
        raise MissingWeightsError(f"count: {exc}; or pass detector=DIR (a folder or hub repo with "
                                  f"{YAML_FILE} and {WEIGHTS_FILE})") from None
    if found is None:
        raise MissingWeightsError(f"count: no default detector is installed; pass detector=DIR (a folder or hub "
                                  f"repo with {YAML_FILE} and {WEIGHTS_FILE})")
    return found


@register("count", "object count: soft YOLO count of the prompted class vs the number in the prompt "
          "(objective=exact: 1 if its NMS count is the number, else 0)",
          packages=("ultralytics",), extra="count", bundled=True, gradient_free=(("objective", "exact"),),
          path_options=("detector",),
          default_path=lambda options: None if options.get("detector") else _default_detector())
def count(device=None, dtype=None, detector: str | None = None, imgsz: int | None = None,
          conf: float = 0.25, iou: float = 0.7, objective: str = "error", augment: int = 1,
          shift: float = 0.1) -> Reward:
    """`detector`: folder or hub repo id with model.yaml + model.safetensors, or an ultralytics
    .pt file (default: the toy world's); `imgsz`: resize the longest side to this before padding (default: native size);
    `objective`: `error` (minus |soft count - n|), `likelihood` (log P(exactly n objects) under the detector)
    or `exact` (1.0 if the NMS count equals n, else 0.0; no gradient: `--algorithm grpo`);
    `augment`: average over this many views of each image (1: the image alone), shifted by up to
    `shift` of its side and mirrored (see `shifted_copies`)."""
    if imgsz is not None and (isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32):
        raise AlignkitError(f"count: imgsz must be an integer >= 32, got {imgsz!r}")
    if isinstance(augment, bool) or not isinstance(augment, int) or not 1 <= augment <= 16:
        raise AlignkitError(f"count: augment must be an integer from 1 to 16 (views per image), got {augment!r}")
    for name, value in (("conf", conf), ("iou", iou), ("shift", shift)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise AlignkitError(f"count: {name} must be a number between 0 and 1, got {value!r}")
    model = load_detector(detector if detector is not None else _default_detector())
    if objective not in (*OBJECTIVES, "exact"):
        raise AlignkitError(f"count: objective must be one of {', '.join(OBJECTIVES)}, exact, got {objective!r}")
    reward = CountReward(model, imgsz=imgsz, config=SoftCountConfig(conf=float(conf), iou=float(iou)),
                         objective=objective, augment=augment, shift=float(shift))
    return reward.to(device=device, dtype=dtype)
