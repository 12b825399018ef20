"""`alignkit eval`: generate, score, measure over-optimisation, report.

Reads top to bottom: resolve what to evaluate, generate every condition (base, each
checkpoint, the final LoRA at each scale) on the same prompts and seeds, score every image
with the trained and held-out rewards, measure diversity and drift, flag over-optimisation,
pick a candidate, write the report. Every stage reuses what the output folder already holds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from alignkit.runfolder.lock import RunLock
from alignkit.errors import AlignkitError
from alignkit.evaluation import metrics as M
from alignkit.evaluation.config import (Condition, EvalConfig, Settings, plan_conditions, resolve_prompts,
                                        resolve_seeds, resolve_settings)
from alignkit.evaluation.generate import PipelineGenerator
from alignkit.evaluation.heldout import (Scorer, confirming_targets, default_heldout, heldout_scorers,
                                        trained_scorer)
from alignkit.evaluation.judges import JudgeScorer, check_independent, default_judges
from alignkit.evaluation.overopt import TRAINED, Flag, Pick, Watch, find_flags, find_unconfirmed, pick_candidate
from alignkit.evaluation.source import EvalSource, open_source
from alignkit.models import NamedModel, find_model
from alignkit.rewards.spec import parse_named_options
from alignkit.evaluation.store import Store
from alignkit.rewards.base import check_prompts

# Rewards whose backbone is the best embedding for diversity and drift, in order.
EMBED_PREFERENCE = ("clip", "toy_clip", "pickscore", "hps", "aesthetic")


@dataclass
class ImageRecord:
    key: str
    condition: Condition
    prompt: str
    seed: int
    # uint8 (3,H,W), exactly the saved PNG.
    image: Tensor
    scores: dict[str, float] = field(default_factory=dict)
    # The embedder's features of this image, when there is one (for diversity and drift).
    embedding: Tensor | None = None

    def as_float(self) -> Tensor:
        return self.image.float() / 255


@dataclass
class EvalResult:
    config: EvalConfig
    source: EvalSource
    output_dir: Path
    settings: Settings
    reward_spec: str
    prompts: list[str]
    seeds: list[int]
    conditions: list[Condition]
    records: list[ImageRecord]
    # condition label -> metric -> Stat
    stats: dict[str, dict[str, M.Stat]]
    # metric -> "trained reward", "reward part", "held-out reward", "true target", "proxy target",
    # "diversity", "drift"
    kinds: dict[str, str]
    watches: list[Watch]
    flags: list[Flag]
    pick: Pick
    embedder: str
    notes: list[str]
    # image key -> its PNG, relative to output_dir.
    image_paths: dict[str, str] = field(default_factory=dict)
    pipeline_calls: int = 0
    # condition label -> metric -> paired gain over the base images (trained reward, targets).
    gains: dict[str, dict[str, M.Gain]] = field(default_factory=dict)
    # The true targets that must rise with the trained reward (metric -> direction).
    confirms: dict[str, int] = field(default_factory=dict)
    # The judges used, as "name: what it reads with".
    judges: list[str] = field(default_factory=list)


def evaluate(config: EvalConfig, log=print, write: Callable[[EvalResult], None] | None = None) -> EvalResult:
    """Run the whole evaluation; `log` receives one-line progress notes. The output folder is
    written under its lock (`RunLock`, as `alignkit train` holds its run folder), so two
    evaluations never write into one folder; `write(result)` runs before the lock is released
    (the report files of `alignkit.evaluation.run`)."""
    config.validate()
    source = open_source(config.path, config.model)
    from alignkit.devices import resolve_device

    device = resolve_device(config.device)
    settings = resolve_settings(config, source)
    prompts = resolve_prompts(config, source)
    seeds = resolve_seeds(config, source)

    # The rewards: unknown names fail here, before any model loads.
    spec = config.reward or source.config.get("reward")
    if not spec:
        raise AlignkitError(f"{source.root} has no config.yaml naming its reward; pass --reward SPEC (the reward it was tuned on)")
    options = _reward_options(config, source, str(spec))
    trained = trained_scorer(str(spec), options, device)
    # Notes (skipped rewards, fallbacks) go into the report, printed once at the end.
    named = find_model(source.model)
    heldout, notes = heldout_scorers(config.heldout, trained.names, _substitutes(named), options, device)
    judges = _judges(config, trained, named, device)
    # Only now, with every input checked, does anything get written: under the folder's lock.
    out = Path(config.output_dir) if config.output_dir else source.root / "eval"
    Store.check_writable(out)
    lock = RunLock(out, command="alignkit eval").acquire()
    try:
        result = _evaluate_into(Store(out), config, source, device, settings, prompts, seeds, spec, trained,
                                heldout, notes, judges, log)
        if write is not None:
            write(result)
    except BaseException:
        lock.discard()  # the lock file, and the folders made for it while still empty
        raise
    lock.release()
    return result


def _evaluate_into(store: Store, config: EvalConfig, source: EvalSource, device: str, settings: Settings,
                   prompts: list[str], seeds: list[int], spec, trained: Scorer, heldout: list[Scorer],
                   notes: list[str], judges: list[JudgeScorer], log) -> EvalResult:
    """Generate, score and analyse every condition, the images and scores cached in `store`."""
    if len(seeds) < 2:
        notes.append("one seed per prompt: diversity needs at least 2 (--seeds 2 or more)")
    conditions = plan_conditions(source, config.scales)
    sampler = PipelineGenerator(source.model, device, config.batch_size)
    if any(not store.has_image(store.image_key(source.model, c, p, s, settings))
           for c in conditions for p in prompts for s in seeds):
        # Load every LoRA before generating anything: one that does not fit fails in a second;
        # and a prompt the trained reward cannot read (count's number and class) fails now,
        # not after every image is generated. A side the model cannot generate fails here too.
        sampler.check_resolution(settings.resolution)
        for checkpoint in source.checkpoints:
            sampler.load_lora(checkpoint)
        check_prompts(trained.reward, prompts)
    records = _generate(conditions, prompts, seeds, settings, source.model, sampler, store, log)
    heldout = _score(records, [trained, *heldout, *judges], store, config.batch_size, notes, log)
    embedder = _image_metrics(records, [*heldout, trained], store, notes, config.batch_size)
    store.flush()

    lpips, note = M.lpips_metric(device)
    if note:
        notes.append(note)
    proxies = set(store.meta.get("proxy_targets", []))
    kinds = _kinds(records, trained, heldout, proxies)
    stats = _stats(records, conditions, prompts, lpips)
    watches = _watches(kinds, trained, [*heldout, *judges], stats)
    candidates = [c.label for c in conditions if c.checkpoint is not None and c.scale > 0]
    flags = find_flags(stats, candidates, watches, config.tolerance, config.rel_tolerance)
    # A gain must show in an independent true target of the trained reward, not only in proxies.
    confirms = {name: sign for name, sign in confirming_targets(trained, judges).items() if kinds.get(name) == "true target"}
    proxy_directions = {TRAINED: +1, **{name: sign for name, sign in trained.target_directions().items() if name in proxies}}
    gains = _gains(records, conditions, [*proxy_directions, *confirms])
    flags += find_unconfirmed(stats, gains, candidates, confirms, proxy_directions)
    where = {c.label: (c.step, c.scale) for c in conditions}
    drift = "drift/embed" if any("drift/embed" in s for s in stats.values()) else "drift/mse"
    pick = pick_candidate(stats, candidates, flags, where, drift)
    return EvalResult(config, source, store.root, settings, str(spec), prompts, seeds, conditions, records,
                      stats, kinds, watches, flags, pick, embedder, notes,
                      {r.key: store.relpath(r.key) for r in records}, sampler.calls, gains, confirms,
                      [f"{j.spec}: {j.judge.description}" for j in judges])


def _substitutes(named: NamedModel | None) -> dict[str, str]:
    """The rewards a named model watches instead of generic ones (toy_clip for clip on the toy)."""
    return dict(named.reward_substitutes) if named is not None else {}


def _judges(config: EvalConfig, trained: Scorer, named: NamedModel | None, device: str) -> list[JudgeScorer]:
    """The independent judges: the ones named with --judge, else the model's own (the toy world's rules)."""
    names = config.judges if config.judges else default_judges(named.judges if named else ())
    options = parse_named_options(config.judge_options, names, "judge",
                                  f"is not a judge of this evaluation ({', '.join(names) or 'none'})")
    judges = [JudgeScorer(name, options.get(name, {}), device) for name in names]
    for judge in judges:
        check_independent(judge, lambda: trained.reward)
    return judges


def _gains(records: list[ImageRecord], conditions: list[Condition], metrics: list[str]) -> dict[str, dict[str, M.Gain]]:
    """Paired gains over the base images (same prompt and seed) of each condition."""
    base = {(r.prompt, r.seed): r for r in records if r.condition.checkpoint is None}
    out: dict[str, dict[str, M.Gain]] = {}
    for condition in conditions:
        rows = [r for r in records if r.condition == condition]
        out[condition.label] = {}
        for metric in metrics:
            pairs = [(base[(r.prompt, r.seed)].scores[metric], r.scores[metric]) for r in rows
                     if metric in r.scores and metric in base[(r.prompt, r.seed)].scores]
            if pairs:
                out[condition.label][metric] = M.Gain.paired([b for b, _ in pairs], [c for _, c in pairs])
    return out


def _reward_options(config: EvalConfig, source: EvalSource, spec: str) -> dict:
    """Per-reward options: the run's `reward_options`, then --reward-option on top."""
    from alignkit.rewards import check_reward_options, parse_reward_options, parse_spec

    merged = check_reward_options(source.config.get("reward_options") or {}, f"{source.root}/config.yaml")
    names = [n for n, _ in parse_spec(spec)]
    items = list(config.reward_options)
    if len(names) == 1:
        # As for `alignkit train`, a single trained reward's options need no `name.` prefix.
        items = [i if "." in i.partition("=")[0] else f"{names[0]}.{i}" for i in items]
    # Options may name any reward evaluation uses: the trained ones and the held-out ones.
    watched = ([n for n, _ in parse_spec(config.heldout)] if config.heldout
               else default_heldout(names, _substitutes(find_model(source.model))))
    names += [n for n in watched if n not in names]
    for name, values in parse_reward_options(items, "+".join(names)).items():
        merged.setdefault(name, {}).update(values)
    return merged


def _generate(conditions, prompts, seeds, settings, model, sampler, store, log) -> list[ImageRecord]:
    """Every (condition, prompt, seed) image, from the cache or the pipeline."""
    records: list[ImageRecord] = []
    for condition in conditions:
        fresh = 0
        for prompt in prompts:
            keys = [store.image_key(model, condition, prompt, seed, settings) for seed in seeds]
            missing = [seed for seed, key in zip(seeds, keys) if not store.has_image(key)]
            if missing:
                images = dict(zip(missing, sampler.generate(condition, prompt, missing, settings)))
                for seed, key in zip(seeds, keys):
                    if seed in images:
                        store.save_image(key, images[seed], store.image_path(key, condition, prompt, seed))
                fresh += len(missing)
            for seed, key in zip(seeds, keys):
                records.append(ImageRecord(key, condition, prompt, seed, store.load_image(key)))
        store.flush()  # an interrupted run keeps every finished condition
        log(f"{condition.label}: {fresh} image(s) generated, {len(prompts) * len(seeds) - fresh} reused")
    return records


def _score(records, scorers: list[Scorer], store: Store, batch_size: int, notes, log) -> list[Scorer]:
    """Score every record with every scorer; returns the held-out scorers that worked."""
    working = []
    for scorer in scorers:
        todo = [r for r in records if store.scores(r.key, scorer.scorer_id) is None]
        if todo and scorer.role == "trained":
            # Which of its targets the reward reads with its own weights, remembered for re-runs
            # that load nothing.
            store.meta["proxy_targets"] = sorted(scorer.reward.proxy_targets)
            store.mark()
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                batch = torch.stack([r.as_float() for r in chunk])
                columns = scorer.score(batch, [r.prompt for r in chunk])
                for i, r in enumerate(chunk):
                    store.set_scores(r.key, scorer.scorer_id, {k: float(v[i]) for k, v in columns.items()})
        except AlignkitError as exc:
            if scorer.role in ("trained", "judge"):
                raise
            # A held-out reward that cannot load is a note, never a failed evaluation.
            notes.append(f"skipped held-out reward '{scorer.spec}': {exc}")
            continue
        if todo:
            log(f"scored {len(todo)} image(s) with {scorer.role} reward '{scorer.spec}'")
        for r in records:
            r.scores.update(store.scores(r.key, scorer.scorer_id))
        if scorer.role == "heldout":
            working.append(scorer)
    return working


def _image_metrics(records: list[ImageRecord], scorers: list[Scorer], store: Store, notes: list[str],
                   batch_size: int) -> str:
    """Per-image drift and per-image embeddings; returns the embedder's name."""
    embedder, embeddings = _embeddings(records, scorers, store, notes, batch_size)
    base = {(r.prompt, r.seed): r for r in records if r.condition.checkpoint is None}
    for r in records:
        r.embedding = embeddings[r.key] if embeddings is not None else None
    for r in records:
        ref = base[(r.prompt, r.seed)]
        r.scores["drift/mse"] = float(M.pixel_mse(r.as_float()[None], ref.as_float()[None])[0])
        if embeddings is not None:
            r.scores["drift/embed"] = float(M.pairwise_distance(embeddings[r.key][None], embeddings[ref.key][None], "cosine")[0])
    return embedder.name if embedder else "pixel"


def _embeddings(records, scorers: list[Scorer], store: Store, notes,
                batch_size: int) -> tuple[M.Embedder | None, dict | None]:
    """Embeddings of every record from the first reward that has one (`Reward.embed_images`),
    cached by the reward's spec."""
    ordered = sorted(scorers, key=lambda s: EMBED_PREFERENCE.index(s.spec) if s.spec in EMBED_PREFERENCE else len(EMBED_PREFERENCE))
    for scorer in ordered:
        name = f"reward:{scorer.spec}"
        cached = {r.key: store.embedding(r.key, name) for r in records}
        if all(v is not None for v in cached.values()):
            return M.Embedder(name, lambda x: x), cached  # everything is in the cache: load nothing
        if scorer.scorer_id in store.meta["no_embedder"]:
            continue  # learnt on an earlier run: do not load it just to look again
        try:
            embedder = M.Embedder(name, scorer.reward.embed_images)
        except AlignkitError:
            continue
        todo = [r for r in records if cached[r.key] is None]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            features = embedder(torch.stack([r.as_float() for r in chunk]).to(scorer.reward.device))
            if features is None:  # this reward has no embedding: remember it, try the next
                store.meta["no_embedder"].append(scorer.scorer_id)
                store.mark()
                break
            for r, feature in zip(chunk, features):
                cached[r.key] = feature
                store.set_embedding(r.key, name, feature)
        else:
            return embedder, cached
    notes.append("no loaded reward has an image embedding: diversity is measured in pixel space only")
    return None, None


def _stats(records: list[ImageRecord], conditions: list[Condition], prompts: list[str],
           lpips=None) -> dict[str, dict[str, M.Stat]]:
    """Mean, std and n of every per-image score, plus the diversity across seeds, per condition."""
    from alignkit.evaluation.metrics import diversity, pixel_embedder

    pixel = pixel_embedder()
    stats: dict[str, dict[str, M.Stat]] = {}
    for condition in conditions:
        rows = [r for r in records if r.condition == condition]
        values: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            for name, value in r.scores.items():
                values[name].append(value)
        stats[condition.label] = {name: M.Stat.of(v) for name, v in values.items()}
        # Diversity: one value per prompt (its seeds' mean pairwise distance), then over prompts.
        per_prompt: dict[str, list[float]] = defaultdict(list)
        for prompt in prompts:
            group = [r for r in rows if r.prompt == prompt]
            images = torch.stack([r.as_float() for r in group])
            measures = [("diversity/pixel", diversity(pixel(images), "rms")),
                        ("diversity/embed", _embed_diversity(group))]
            if lpips is not None:
                measures.append(("diversity/lpips", M.lpips_diversity(images, lpips)))
            for name, value in measures:
                if value is not None:
                    per_prompt[name].append(value)
        stats[condition.label].update({name: M.Stat.of(v) for name, v in per_prompt.items()})
    return stats


def _embed_diversity(group: list[ImageRecord]) -> float | None:
    features = [r.embedding for r in group]
    if any(f is None for f in features):
        return None
    return M.diversity(torch.stack(features), "cosine")


def _kinds(records, trained: Scorer, heldout: list[Scorer], proxies: set[str]) -> dict[str, str]:
    kinds: dict[str, str] = {TRAINED: "trained reward"}
    names = {name for r in records for name in r.scores}
    held = {s.spec for s in heldout}
    for name in sorted(names - {TRAINED}):
        if name.startswith("reward/"):
            kinds[name] = "reward part"
        elif name in held:
            kinds[name] = "held-out reward"
        elif name.startswith("drift/"):
            kinds[name] = "drift"
        elif name in proxies:
            kinds[name] = "proxy target"  # read with the reward's own weights: never the truth
        else:
            kinds[name] = "true target"
    kinds["diversity/embed"] = kinds["diversity/pixel"] = kinds["diversity/lpips"] = "diversity"
    return kinds


def _watches(kinds, trained: Scorer, heldout: list, stats) -> list[Watch]:
    """Held-out rewards, true targets with a known direction (the judges' among them), and the
    primary diversity. Proxy targets are never watched: they share the reward's weights."""
    directions: dict[str, int] = {}
    for scorer in [trained, *heldout]:
        for name, sign in scorer.target_directions().items():
            directions.setdefault(name, sign)
    watches = [Watch(name, +1, kind) for name, kind in kinds.items() if kind == "held-out reward"]
    watches += [Watch(name, directions[name], kind) for name, kind in kinds.items()
                if kind == "true target" and name in directions]
    has_embed = any("diversity/embed" in s for s in stats.values())
    watches.append(Watch("diversity/embed" if has_embed else "diversity/pixel", +1, "diversity", rule="relative"))
    return watches
