"""Over-optimisation: flag candidates whose reward gain is not real, and pick one to keep.

A candidate (a checkpoint, or the final LoRA at a scale) is FLAGGED when its trained reward is
above the base model's while a watched metric (a held-out reward, a true target, or the
diversity across seeds) is worse than the base model's by more than

    tolerance x (the base model's std of that metric over its images)   (default 0.5 std)

for held-out rewards and true targets, and by more than

    rel_tolerance x |the base model's mean|                             (default 5%)

for diversity (one value per prompt: its spread across a handful of prompts says nothing about
noise) and for any metric whose base std is 0 (one image, a constant such as a 0/1 target).

With many images a smaller drop is already real: a held-out reward or true target is also
flagged when it falls by at least MIN_EFFECT base std (a "small" effect) AND the fall is
beyond noise, z = drop / sqrt(s_base^2/n_base + s_cand^2/n_cand) >= Z_CRIT (one-sided, p < 0.01).
E.g. a toy_clip fall of 6.5 points (0.36 base std) over 144 images has z = 2.8: flagged.

A candidate is also FLAGGED when its gain is not confirmed: the trained reward (or a proxy
target read with the reward's own weights, such as the detector's NMS count) rose beyond noise
(the 95% interval of its paired gain over the base images excludes 0), while an independent
true target that stands for that reward (a judge's count, the real JPEG size) did not rise
beyond noise (`find_unconfirmed`). The aligner may have learnt to fool the reward's weights.

The pick: among the candidates not flagged, the best mean trained reward; a tie (within
0.05 base std of the trained reward) goes to the smaller drift from the base images. When the
trained reward prefers a flagged candidate, the held-out and true-target side wins: flagged
candidates are never kept. When none is left, or none beats the base model, it keeps the base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from alignkit.evaluation.metrics import Gain, Stat

TRAINED = "reward"
# The significance clause (see the module docstring): smallest effect, in base stds, and the
# one-sided z a fall must reach to count when it is under `tolerance`.
MIN_EFFECT = 0.2
Z_CRIT = 2.33
# Ties on the trained reward, in base standard deviations.
TIE_TOLERANCE = 0.05


@dataclass(frozen=True)
class Watch:
    """A metric that must not fall while the trained reward rises."""

    metric: str
    # +1: higher is better; -1: lower is better (e.g. JPEG size under `compress`).
    direction: int
    # "held-out reward", "true target" or "diversity", for messages.
    kind: str
    # "std": tolerance in base stds; "relative": a fraction of the base mean.
    rule: str = "std"


@dataclass(frozen=True)
class Flag:
    condition: str
    metric: str
    kind: str
    base: float
    value: float
    # How much worse than base, in `unit`s ("std": base stds; "rel": fraction of |base mean|).
    drop: float
    unit: str
    reward_gain: float
    direction: int = 1
    # "fell": the metric got worse; "unconfirmed": it did not rise while a proxy of it did.
    reason: str = "fell"
    # For "unconfirmed": the 95% intervals of the two paired gains, and what rose.
    interval: tuple[float, float] | None = None
    proxy: str = ""
    proxy_interval: tuple[float, float] | None = None

    @property
    def message(self) -> str:
        if self.reason == "unconfirmed":
            lo, hi = self.interval
            plo, phi = self.proxy_interval
            return (f"{self.condition}: the {self.proxy} rose ({plo:+.4g} to {phi:+.4g}, 95% CI of the paired gain) "
                    f"but the independent {self.kind} '{self.metric}' did not rise beyond noise "
                    f"({self.base:.4g} -> {self.value:.4g}, 95% CI {lo:+.4g} to {hi:+.4g}): a gain the judge does not see")
        amount = f"{self.drop:.2f} base std" if self.unit == "std" else f"{100 * self.drop:.1f}%"
        return (f"{self.condition}: {self.kind} '{self.metric}' {self.verb} {amount} "
                f"({self.base:.4g} -> {self.value:.4g}) while the trained reward rose {self.reward_gain:+.4g}")

    @property
    def verb(self) -> str:
        # Worse means lower for most metrics, higher for e.g. the JPEG size under `compress`.
        return "fell" if self.direction > 0 else "rose"

    def as_dict(self) -> dict:
        return {**asdict(self), "message": self.message}


@dataclass(frozen=True)
class Pick:
    condition: str
    step: int | None
    scale: float
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def find_flags(stats: dict[str, dict[str, Stat]], candidates: list[str], watches: list[Watch],
               tolerance: float, rel_tolerance: float, base: str = "base") -> list[Flag]:
    """Every (candidate, watched metric) pair that signals over-optimisation."""
    flags: list[Flag] = []
    base_stats = stats[base]
    for label in candidates:
        gain = stats[label][TRAINED].mean - base_stats[TRAINED].mean
        if gain <= 0:
            continue  # no reward gain, nothing hacked
        for watch in watches:
            ref, cur = base_stats.get(watch.metric), stats[label].get(watch.metric)
            if ref is None or cur is None:
                continue
            worse = watch.direction * (ref.mean - cur.mean)
            if watch.rule == "std" and ref.std > 0:
                drop, unit, limit = worse / ref.std, "std", tolerance
                if drop >= MIN_EFFECT and worse / _standard_error(ref, cur) >= Z_CRIT:
                    limit = min(limit, drop - 1e-12)  # a small but clearly real fall
            else:
                drop, unit, limit = worse / max(abs(ref.mean), 1e-12), "rel", rel_tolerance
            if drop > limit:
                flags.append(Flag(label, watch.metric, watch.kind, ref.mean, cur.mean, drop, unit, gain,
                                  watch.direction))
    return flags


def find_unconfirmed(stats: dict[str, dict[str, Stat]], gains: dict[str, dict[str, Gain]], candidates: list[str],
                     confirms: dict[str, int], proxies: dict[str, int], base: str = "base") -> list[Flag]:
    """Candidates whose trained reward, or a proxy target, rose beyond noise while an
    independent true target of that reward did not (`confirms`: column -> direction;
    `proxies`: the trained reward and proxy target columns -> direction)."""
    flags: list[Flag] = []
    for label in candidates:
        risen = [(name, gains[label][name]) for name, sign in proxies.items()
                 if sign and name in gains[label] and gains[label][name].rose(sign)]
        if not risen:
            continue
        proxy, proxy_gain = risen[0]
        what = "trained reward" if proxy == TRAINED else f"proxy target '{proxy}'"
        for metric, sign in confirms.items():
            gain = gains[label].get(metric)
            if gain is None or gain.rose(sign):
                continue
            ref, cur = stats[base][metric], stats[label][metric]
            flags.append(Flag(label, metric, "true target", ref.mean, cur.mean, -sign * gain.mean, "abs",
                              stats[label][TRAINED].mean - stats[base][TRAINED].mean, sign, "unconfirmed",
                              (gain.low, gain.high), what, (proxy_gain.low, proxy_gain.high)))
    return flags


def _standard_error(a: Stat, b: Stat) -> float:
    """Standard error of the difference of two means (Welch); inf when either has one value."""
    if a.n < 2 or b.n < 2:
        return float("inf")
    return max((a.std ** 2 / a.n + b.std ** 2 / b.n) ** 0.5, 1e-12)


def pick_candidate(stats: dict[str, dict[str, Stat]], candidates: list[str], flags: list[Flag],
                   where: dict[str, tuple[int | None, float]], drift_metric: str | None,
                   base: str = "base") -> Pick:
    """Which condition to keep, and why, in one line (see the module docstring)."""
    flagged = {f.condition for f in flags}
    base_reward = stats[base][TRAINED]
    ok = [c for c in candidates if c not in flagged]
    by_reward = sorted(candidates, key=lambda c: stats[c][TRAINED].mean, reverse=True)

    if not ok:
        worst = max(flags, key=lambda f: f.drop) if flags else None
        why = f"every tuned candidate is flagged (e.g. {worst.message})" if worst else "there is no tuned candidate"
        return Pick(base, 0, 0.0, f"keep base: {why}")
    best = max(ok, key=lambda c: stats[c][TRAINED].mean)
    best_mean = stats[best][TRAINED].mean
    if best_mean <= base_reward.mean:
        return Pick(base, 0, 0.0, f"keep base: no unflagged candidate beats the base model's trained reward "
                                  f"({base_reward.mean:.4g}; best {best} {best_mean:.4g})")

    # Ties on the trained reward go to the candidate that moved least from the base images.
    tie = TIE_TOLERANCE * base_reward.std if base_reward.std > 0 else 1e-9 * max(abs(best_mean), 1.0)
    tied = [c for c in ok if best_mean - stats[c][TRAINED].mean <= tie]
    tie_note = ""
    if len(tied) > 1 and drift_metric:
        best = min(tied, key=lambda c: stats[c].get(drift_metric, Stat(float("inf"), 0, 0)).mean)
        tie_note = f"; tied on reward with {len(tied) - 1} other(s), it drifts least ({drift_metric})"

    step, scale = where[best]
    mean = stats[best][TRAINED].mean
    reason = (f"keep {best} (step {step}, LoRA scale {scale:g}): best trained reward among {len(ok)} unflagged "
              f"candidate(s), {mean:.4g} ({mean - base_reward.mean:+.4g} vs base){tie_note}")
    top = by_reward[0]
    if top in flagged and stats[top][TRAINED].mean > mean:
        first = next(f for f in flags if f.condition == top)
        reason += (f"; {top} scores higher ({stats[top][TRAINED].mean:.4g}) but its {first.kind} "
                   f"'{first.metric}' {first.verb} beyond tolerance, so the held-out side wins")
    return Pick(best, step, scale, reason)
