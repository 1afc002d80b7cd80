"""Detectors compared on the same rows: paired AUC differences and the logistic-regression probe."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd

from clipdetect.eval.evaluate import overall_row
from clipdetect.eval.selection import split_params


def baseline_probe(detector, cache, *, train_cache=None):
    """The logistic-regression probe (:func:`clipdetect.models.baseline.fit_probe_on_cache`) for
    ``detector``: fitted on the train rows of the cache it was trained on (``train_cache``, else
    the path recorded in the bundle, else ``cache``) with its split fractions and seed, on its
    feature set. Returns ``(probe, None)`` or ``(None, reason)`` when no train rows are at hand."""
    from clipdetect.features.cache import FeatureCache
    from clipdetect.models.baseline import fit_probe_on_cache

    if train_cache is None:
        recorded = (getattr(detector, "extra", None) or {}).get("cache")
        train_cache = cache
        if recorded and Path(str(recorded)).resolve() != Path(str(cache.root)).resolve():
            if not (Path(str(recorded)) / "manifest.json").is_file():
                return None, (f"the detector's training cache {recorded!r} is not at hand; pass "
                              "--baseline-cache DIR (the cache it was trained on)")
            train_cache = FeatureCache(recorded)
    elif not hasattr(train_cache, "features"):
        train_cache = FeatureCache(train_cache)
    detector.check_backbone(train_cache.backbone)
    p = split_params(detector)
    try:
        probe = fit_probe_on_cache(train_cache, feature_set=detector.feature_set, val_fraction=p.val,
                                   test_fraction=p.test, split_seed=p.seed)
    except ValueError as exc:
        return None, str(exc)
    return probe, None


def paired_auc_draws(y, scores_a, scores_b, *, n_boot: int = 1000, seed: int = 0):
    """(AUC(a), AUC(b), n_boot bootstrap draws of AUC(a) − AUC(b)) on the same samples: each
    draw resamples reals and fakes (stratified) once and scores both detectors on it."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(np.int64)
    s = np.stack([np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)])
    real, fake = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    if real.size == 0 or fake.size == 0:
        raise ValueError("a paired AUC difference needs reals and fakes")

    def aucs(idx_real, idx_fake):
        idx = np.concatenate([idx_real, idx_fake], axis=-1)
        r = rankdata(s[:, idx], axis=-1)[..., idx_real.shape[-1]:].sum(-1)
        return (r - fake.size * (fake.size + 1) / 2.0) / (real.size * fake.size)

    point = aucs(real, fake)
    rng = np.random.default_rng(seed)
    draws = (aucs(rng.choice(real, real.size), rng.choice(fake, fake.size)) for _ in range(n_boot))
    diffs = np.array([a - b for a, b in draws], dtype=np.float64)
    return float(point[0]), float(point[1]), diffs


def paired_auc_difference(y, scores_a, scores_b, *, n_boot: int = 1000, seed: int = 0) -> Dict[str, float]:
    """AUC(a) − AUC(b) on the same samples, with a paired stratified bootstrap 95% CI.

    Both detectors are scored on the same resample each time, so the interval reflects
    the difference itself (much narrower than comparing two separate CIs). ``p_le_0`` is
    the fraction of resamples where a is not better than b.
    """
    auc_a, auc_b, diffs = paired_auc_draws(y, scores_a, scores_b, n_boot=n_boot, seed=seed)
    lo, hi = (np.percentile(diffs, [2.5, 97.5]) if n_boot else (math.nan, math.nan))
    return {"auc_a": auc_a, "auc_b": auc_b, "delta_auc": auc_a - auc_b,
            "delta_auc_lo": float(lo), "delta_auc_hi": float(hi),
            "p_le_0": float((diffs <= 0).mean()) if n_boot else math.nan}


def compare_reports(reports: Dict[str, Any], *, n_boot: int = 1000, seed: int = 0,
                    reference: Optional[str] = None) -> pd.DataFrame:
    """One row per detector (``reports``: name → :class:`~clipdetect.eval.evaluate.EvalReport`):
    its overall metrics, plus ``delta_auc`` = AUC(this) − AUC(reference)
    with a paired bootstrap 95% CI (positive = better than the reference; ``reference``
    defaults to the first report). All reports must cover the same rows."""
    names = list(reports)
    reference = names[0] if reference is None else reference
    if reference not in reports:
        raise ValueError(f"reference {reference!r} is not one of the compared detectors {names}")
    base = reports[reference].scores
    rows = []
    for name in names:
        rep = reports[name]
        if not np.array_equal(rep.scores["row"].to_numpy(), base["row"].to_numpy()):
            raise ValueError(f"detector {name!r} was evaluated on other rows than {reference!r}; "
                             "compare detectors that share the split fractions and seed")
        row = {"detector": name, **overall_row(rep.table)}
        if name != reference:
            d = paired_auc_difference(base["label"], rep.scores["logit"], base["logit"], n_boot=n_boot,
                                      seed=seed)
            row.update({k: d[k] for k in ("delta_auc", "delta_auc_lo", "delta_auc_hi", "p_le_0")})
        rows.append(row)
    return pd.DataFrame(rows)
