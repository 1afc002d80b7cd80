"""The generalisation benchmark: leave-one-source-out and leave-one-family-out folds, each
detector variant against the final-embedding MLP and a logistic probe, with paired CIs.

Folds (rows of the evaluation view only; training rows come from the cache's stored or
derived train/val splits, restricted as below):

* ``loso`` — for each source S: train on every other source (their train rows; their val
  rows pick the epoch, calibrate and set the threshold); test on **all** of S's images. A
  source with one class is completed by the other class from the other sources' *test*
  rows (never trained on) and the fold says so (``completed``). ``fpr`` is the share of S's
  real photos the fold's detector calls fake at its own threshold: the false alarms a user
  of a fresh photo collection would see.
* ``lofo`` — for each generator family F: train without any F fake; test on all F fakes
  against the test-split reals.
* ``sets`` — for each named set of sources (``hold_out_sets``, e.g. the sources added to a
  corpus last): train on every other source, test on all images of the set together, with
  the set's ``fpr`` as in ``loso``. One fold per set: an out-of-source test of a whole new
  batch of collections and generators.

Variants (:data:`VARIANTS`) switch the generalisation aids on and off: per-block features
(``layers``), degraded views in training (``views``: every view of the cache, else the
original only), within-group AUC pairs (``groups``), fusion of an image-embedding MLP
with a per-block head (``fusion``), an ensemble of ``ensemble_size`` heads that differ only
in their seed, averaged as standardised logits (``ensemble``), balanced batches (``balance``:
TrainConfig ``balance`` = ``config.balance``: "source"/"sqrt" so a large source does not drown
small ones within a class, "content" so every content cluster holds fakes and reals in the same
proportion), and training on the degraded views only (``degraded``: every view but ``orig``, so
the original files' format cues are never seen) and Gaussian noise on the training features
(``noise``: TrainConfig ``feature_noise`` = ``config.noise``, half of every batch's rows jittered
by that many times each feature's standard deviation). ``baseline`` is the default detector: the
paper's MLP on the final embedding, original views. ``probe`` (logistic regression on the final
embedding) is fitted on every fold too. Every comparison is paired (same test images), and the mean
over folds gets its CI from the same bootstrap draws in every fold.

With one training seed the CIs resample the test images, not the training run, and the same
variant moves by its seed alone (on the corpus, as far as 0.006 in mean AUC). ``seeds=N`` trains
every variant with seeds ``seed … seed+N−1`` in every fold (the probe is deterministic): a fold's
AUC difference is the mean over seeds of the same-seed differences, and each of its bootstrap
draws also resamples the seeds (:func:`combine_seed_draws`), so the CI holds both the test
images' and the training run's noise.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from clipdetect.core.metrics import binary_metrics, expected_calibration_error
from clipdetect.data.views import ORIG
from clipdetect.eval.compare import paired_auc_draws
from clipdetect.features.splits import SplitSpec

logger = logging.getLogger(__name__)

__all__ = ["VARIANTS", "BenchmarkConfig", "plan_folds", "run_benchmark"]

#: name → the aids it switches on: layers, views, groups, fusion, ensemble, balance, degraded, noise
_AIDS = ("layers", "views", "groups", "fusion", "ensemble", "balance", "degraded", "noise")
VARIANTS: Dict[str, Dict[str, bool]] = {
    name: {aid: aid in on for aid in _AIDS} for name, on in (
        ("baseline", ()), ("layers", ("layers",)), ("views", ("views",)), ("groups", ("groups",)),
        ("fusion", ("layers", "fusion")), ("ensemble", ("ensemble",)), ("layers+views", ("layers", "views")),
        ("views+ensemble", ("views", "ensemble")), ("balance", ("balance",)), ("views+balance", ("views", "balance")),
        ("layers+views+balance", ("layers", "views", "balance")), ("degraded", ("views", "degraded")),
        ("noise", ("noise",)), ("views+noise", ("views", "noise")),
        ("full", ("layers", "views", "groups", "fusion")))}
PROTOCOLS = ("loso", "lofo", "sets")
#: protocols whose held-out images are whole sources (their reals give ``fpr``)
SOURCE_PROTOCOLS = ("loso", "sets")


@dataclass
class BenchmarkConfig:
    """What one benchmark run does; saved as ``benchmark_config.json`` next to its results."""

    cache: str = ""
    protocols: List[str] = field(default_factory=lambda: ["loso", "lofo"])
    variants: List[str] = field(default_factory=lambda: ["baseline", "layers+views", "full"])
    eval_view: Optional[str] = None  # None: norm:256:90 when the cache has it, else orig
    also_views: List[str] = field(default_factory=list)  # the same held-out images scored in these views too
    train_view: str = "orig"  # the view variants without 'views' train on
    min_images: int = 20  # sources / families with fewer test images are not held out
    only: Optional[List[str]] = None  # hold out just these sources / families (loso, lofo)
    hold_out_sets: Dict[str, List[str]] = field(default_factory=dict)  # protocol "sets": name → sources
    layers_width: int = 256  # hidden width of per-block heads
    ensemble_size: int = 5  # members of an 'ensemble' variant (seeds seed, seed + 1, ...)
    balance: str = "source"  # TrainConfig.balance of a 'balance' variant ("source" or "sqrt")
    noise: float = 0.5  # TrainConfig.feature_noise of a 'noise' variant
    n_boot: int = 1000
    seed: int = 0
    seeds: int = 1  # training seeds per variant and fold: seed, seed + 1, ...; CIs then include their spread
    train: Dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for every variant

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS] + [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ValueError(f"unknown variant(s)/protocol(s) {bad}; variants {sorted(VARIANTS)}, "
                             f"protocols {PROTOCOLS}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1 (training runs per variant and fold), got {self.seeds}")
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1 (heads averaged by an ensemble variant), "
                             f"got {self.ensemble_size}")
        if self.balance not in ("source", "sqrt", "content"):
            raise ValueError(f"balance {self.balance!r} is not 'source', 'sqrt' or 'content' (the weighting of a "
                             "balance variant)")
        if not self.noise >= 0:
            raise ValueError(f"noise must be >= 0 (the noise variants' feature noise, times each feature's std), "
                             f"got {self.noise!r}")
        if ("sets" in self.protocols) != bool(self.hold_out_sets):
            raise ValueError("protocol 'sets' and hold_out_sets (--hold-out NAME=SOURCE,...) go together")


@dataclass
class Fold:
    protocol: str
    held_out: str
    train: np.ndarray  # rows of every view
    val: np.ndarray
    test: np.ndarray  # rows of the evaluation view
    completed: str = ""  # "reals" / "fakes" added from other sources' test rows
    members: tuple = ()  # the held-out sources of a "sets" fold


def _column(cache, name: str) -> np.ndarray:
    return cache.columns(name)[name].astype(str).to_numpy()


def plan_folds(cache, config: BenchmarkConfig, eval_view: str) -> List[Fold]:
    """Every fold of the configured protocols (held-out sets below ``min_images`` skipped)."""
    split = SplitSpec.of(config.train).labels(cache)
    y, view = cache.labels(), _column(cache, "view")
    ev = view == eval_view
    folds: List[Fold] = []
    source = _column(cache, "source") if set(config.protocols) & set(SOURCE_PROTOCOLS) else None
    held_sets = {s: (s,) for s in sorted(set(source[source != ""]))} if "loso" in config.protocols else {}
    sets = {name: tuple(members) for name, members in config.hold_out_sets.items()}
    for protocol, named in (("loso", held_sets), ("sets", sets)):
        for name, members in named.items():
            held = np.isin(source, members)
            test = np.flatnonzero(held & ev)
            completed = ""
            if len(set(y[test])) < 2:
                missing = 1 - int(y[test][0]) if len(test) else 0
                extra = np.flatnonzero(~held & ev & (split == "test") & (y == missing))
                completed = "fakes" if missing else "reals"
                test = np.sort(np.concatenate([test, extra]))
            folds.append(Fold(protocol, name, np.flatnonzero(~held & (split == "train")),
                              np.flatnonzero(~held & (split == "val")), test, completed, members))
    if "lofo" in config.protocols:
        family = _column(cache, "family")
        for f in sorted(set(family[y == 1])):
            held = (family == f) & (y == 1)
            test = np.flatnonzero(ev & (held | ((y == 0) & (split == "test"))))
            folds.append(Fold("lofo", f, np.flatnonzero(~held & (split == "train")),
                              np.flatnonzero(~held & (split == "val")), test))
    wanted = set(config.only or [])
    keep = []
    for fold in folds:
        n_held = int((_held_mask(cache, fold, y)).sum())
        if (wanted and fold.protocol != "sets" and fold.held_out not in wanted) or n_held < config.min_images or \
                len(set(y[fold.test])) < 2 or len(set(y[fold.train])) < 2:
            logger.info("benchmark: skipping %s fold %r (%d held-out images)", fold.protocol, fold.held_out, n_held)
            continue
        keep.append(fold)
    return keep


def _held_mask(cache, fold: Fold, y: np.ndarray) -> np.ndarray:
    if fold.protocol in SOURCE_PROTOCOLS:
        return np.isin(_column(cache, "source")[fold.test], fold.members)
    return (_column(cache, "family")[fold.test] == fold.held_out) & (y[fold.test] == 1)


def variant_rows(rows: np.ndarray, aids: Dict[str, bool], views: np.ndarray, train_view: str) -> np.ndarray:
    """The rows of ``rows`` a variant with ``aids`` trains on: every view but the original files
    (``degraded``), every view (``views``), else those of ``train_view``."""
    if aids["degraded"]:
        return rows[views[rows] != ORIG]
    if aids["views"]:
        return rows
    return rows[views[rows] == train_view]


def train_variant(cache, fold: Fold, name: str, config: BenchmarkConfig, views: np.ndarray,
                  seed: Optional[int] = None):
    from clipdetect.models.detector import Detector
    from clipdetect.models.fusion import fuse_detectors
    from clipdetect.models.train import TrainConfig

    seed = config.seed if seed is None else seed
    v = VARIANTS[name]
    tr, va = (variant_rows(r, v, views, config.train_view) for r in (fold.train, fold.val))
    base = {**config.train, "auc_pairs": "group" if v["groups"] else "all", "seed": seed}
    if v["balance"]:
        base["balance"] = config.balance
    if v["noise"]:
        base["feature_noise"] = config.noise

    def fit(feature_set, member_seed=seed):
        extra = {"width": config.layers_width} if feature_set == "layers" else {}
        return Detector.fit_rows(cache, tr, va, feature_set=feature_set,
                                 config=TrainConfig(**{**base, **extra, "seed": member_seed}))

    if v["fusion"]:
        return fuse_detectors([fit("image"), fit("layers")], cache, va, seed=seed)
    feature_set = "layers" if v["layers"] else "image"
    if v["ensemble"] and config.ensemble_size > 1:
        members = [fit(feature_set, seed + k) for k in range(config.ensemble_size)]
        return fuse_detectors(members, cache, va, method="mean", seed=seed)
    return fit(feature_set)


def _probe(cache, fold: Fold, config: BenchmarkConfig, views: np.ndarray):
    from clipdetect.models.baseline import fit_logistic_probe

    tr = fold.train[views[fold.train] == config.train_view]
    va = fold.val[views[fold.val] == config.train_view]
    return fit_logistic_probe(cache.features("image", tr), cache.labels(tr), X_val=cache.features("image", va),
                              y_val=cache.labels(va), backbone=cache.backbone)


def _scores(det, cache, rows) -> Dict[str, np.ndarray]:
    from clipdetect.eval.evaluate import logit_threshold

    logits = np.asarray(det.logits(det.features(cache, rows)), dtype=np.float64)
    return {"logit": logits, "prob": np.asarray(det.calibration.probability(logits), dtype=np.float64),
            "threshold": float(det.threshold), "threshold_logit": float(logit_threshold(det))}


def _fold_row(fold: Fold, name: str, view: str, y: np.ndarray, s: Dict[str, Any], held: np.ndarray) -> Dict[str, Any]:
    m = binary_metrics(y, s["logit"], scores_are_probs=False)
    fake_call = s["prob"] > s["threshold"]
    by_source = fold.protocol in SOURCE_PROTOCOLS
    reals = held & (y == 0) if by_source else (y == 0)
    return {"protocol": fold.protocol, "held_out": fold.held_out, "variant": name, "view": view,
            "completed": fold.completed,
            "n_real": int((y == 0).sum()), "n_fake": int(y.sum()), "auc": m["auc"], "ap": m["ap"],
            "n_held_real": int(reals.sum()) if by_source else 0,
            "fpr": float(fake_call[reals].mean()) if reals.any() and by_source else math.nan,
            "tpr": float(fake_call[y == 1].mean()),
            "ece": expected_calibration_error(y, s["prob"]), "threshold": s["threshold"],
            "threshold_logit": s["threshold_logit"]}


def run_benchmark(cache, config: BenchmarkConfig, *, on_fold=None) -> Dict[str, Any]:
    """Run every fold and variant; returns ``{"folds": DataFrame, "deltas": DataFrame,
    "summary": DataFrame, "scores": DataFrame, "eval_view": str}`` (see :mod:`benchmark_report`
    for the tables). ``on_fold(result)`` gets the tables of the folds done so far after each
    fold (the CLI writes them, so a run cut short keeps what it measured)."""
    views = _column(cache, "view")
    eval_view = config.eval_view or ("norm:256:90" if "norm:256:90" in set(views) else "orig")
    missing = [v for v in [config.train_view, *config.also_views] if v not in set(views)]
    if missing:
        raise ValueError(f"view(s) {missing} are not in the cache (views: {sorted(set(views))})")
    folds = plan_folds(cache, config, eval_view)
    if not folds:
        raise ValueError("no fold to run: the cache needs 'source'/'family' columns with held-out sets of at "
                         f"least {config.min_images} images (--min-images) and both classes to train on")
    y_all, keys = cache.labels(), _column(cache, "key")
    row_of = {(k, v): i for i, (k, v) in enumerate(zip(keys, views))}
    seeds = [config.seed + k for k in range(config.seeds)]
    rows, score_frames, draws, seed_aucs = [], [], {}, {}
    for i, fold in enumerate(folds, 1):
        logger.info("benchmark fold %d/%d: %s holds out %r (%d test images)", i, len(folds), fold.protocol,
                    fold.held_out, len(fold.test))
        detectors = {("probe", seeds[0]): _probe(cache, fold, config, views),
                     **{(v, s): train_variant(cache, fold, v, config, views, seed=s)
                        for s in seeds for v in config.variants}}
        held_all = _held_mask(cache, fold, y_all)
        for view in [eval_view, *[v for v in config.also_views if v != eval_view]]:
            found = [(j, row_of.get((keys[r], view))) for j, r in enumerate(fold.test)]
            pick = np.array([j for j, r in found if r is not None], dtype=np.int64)
            test = np.array([r for _, r in found if r is not None], dtype=np.int64)
            y, held = y_all[test], held_all[pick]
            if len(set(y)) < 2:
                continue
            scored = {key: _scores(det, cache, test) for key, det in detectors.items()}
            frame = pd.DataFrame({"protocol": fold.protocol, "held_out": fold.held_out, "view": view,
                                  "key": keys[test], "label": y, "held": held})
            for (name, s), sc in scored.items():
                rows.append({**_fold_row(fold, name, view, y, sc, held), "seed": s})
                frame[name if s == seeds[0] else f"{name}@{s}"] = sc["logit"]
            for name in ["probe", *config.variants]:
                for ref in ("baseline", "probe"):
                    if ref == name or (ref, seeds[0]) not in scored:
                        continue
                    per_seed = [paired_auc_draws(y, scored.get((name, s), scored[(name, seeds[0])])["logit"],
                                                 scored.get((ref, s), scored[(ref, seeds[0])])["logit"],
                                                 n_boot=config.n_boot, seed=config.seed + i) for s in seeds]
                    key = (fold.protocol, fold.held_out, name, ref, view)  # the probe has only the first seed
                    seed_aucs[key] = [(a, b) for a, b, _ in per_seed]
                    draws[key] = combine_seed_draws(per_seed, seed=(config.seed, i))
            score_frames.append(frame)
        if on_fold is not None and i < len(folds):
            on_fold({**_tables(rows, draws, seed_aucs, score_frames, eval_view, config),
                     "partial": f"{i} of {len(folds)} folds"})
    return _tables(rows, draws, seed_aucs, score_frames, eval_view, config)


def combine_seed_draws(per_seed: List[tuple], *, seed: Any = 0) -> tuple:
    """One fold's paired AUC difference over training seeds: ``per_seed`` holds each seed's
    ``(AUC(a), AUC(b), draws)`` from :func:`paired_auc_draws` with the same bootstrap seed (so
    draw ``b`` resamples the same test images in every seed). Returns the AUCs averaged over
    seeds and draws that also resample the seeds: draw ``b`` is the mean of draw ``b`` of N seeds
    picked with replacement, so the spread between training runs widens the CI. One seed: as is."""
    if len(per_seed) == 1:
        return per_seed[0]
    d = np.stack([np.asarray(p[2], dtype=np.float64) for p in per_seed])  # seeds × draws
    pick = np.random.default_rng(seed).integers(0, len(per_seed), size=(d.shape[1], len(per_seed)))
    combined = d[pick, np.arange(d.shape[1])[:, None]].mean(axis=1)
    return float(np.mean([p[0] for p in per_seed])), float(np.mean([p[1] for p in per_seed])), combined


def _tables(rows, draws, seed_aucs, score_frames, eval_view: str, config: BenchmarkConfig) -> Dict[str, Any]:
    from clipdetect.eval.benchmark_report import delta_tables, seed_table, summary_table

    folds_df = pd.DataFrame(rows)
    deltas, mean_deltas = delta_tables(draws)
    return {"folds": folds_df, "deltas": deltas, "summary": summary_table(folds_df, mean_deltas),
            "seeds": seed_table(seed_aucs, config.seed),
            "scores": pd.concat(score_frames, ignore_index=True), "eval_view": eval_view,
            "config": dataclasses.asdict(config)}
