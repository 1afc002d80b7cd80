"""Small-sample guards: how many samples each printed metric needs, in one table.

Every place that prints or saves a metric (``train``'s summary, ``evaluate``'s tables,
``report``, ``demo``, the figures) asks :func:`guard` first and shows ``n/a (needs ≥ N reals)``
instead of a number computed from fewer samples than the metric can resolve:

* a TPR at an FPR of ``f`` needs ``1 / f`` reals (below that the smallest non-zero FPR,
  1 / n_real, is coarser than the target, and "TPR at 0.1 % FPR" from 7 reals is TPR at 0 %);
* ECE needs :data:`MIN_ECE_ROWS` rows (15 bins of a handful of rows measure noise);
* the ranking metrics (AUC, AP, EER) need one real and one fake, accuracies and Brier one row.

A confidence interval wider than :data:`WIDE_CI` is called wide where it is printed, and one
resampled from fewer than :data:`FEW_PER_CLASS` reals or fakes unreliable.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

#: rows an ECE is computed from at least
MIN_ECE_ROWS = 100
#: a 95 % CI wider than this (high − low) is flagged as wide where it is printed
WIDE_CI = 0.1
#: a bootstrap CI from fewer reals or fakes than this is flagged: resampling a handful of
#: images cannot show how far the metric could move (one fake ranked first gives [1.000, 1.000])
FEW_PER_CLASS = 10
#: FPR targets of the ``tpr@fpr=...`` metrics
FPR_TARGETS: Dict[str, float] = {"tpr@fpr=1%": 0.01, "tpr@fpr=0.1%": 0.001}
_NEEDS_BOTH = ("auc", "ap", "eer", "delta_auc")


def reals_needed(target_fpr: float) -> int:
    """Reals needed before one false positive is a rate of at most ``target_fpr`` (1 / target)."""
    return int(math.ceil(1.0 / target_fpr - 1e-9))


def _count(counts: Mapping[str, Any], key: str) -> Optional[int]:
    v = counts.get(key)
    try:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
    except (TypeError, ValueError):
        return None


def guard(metric: str, counts: Mapping[str, Any]) -> Optional[str]:
    """Why ``metric`` must not be shown for a selection with ``counts`` (``n``, ``n_real``,
    ``n_fake``), e.g. ``"needs ≥ 1000 reals"``; None when it may be shown (or nothing is known)."""
    n_real, n_fake = _count(counts, "n_real"), _count(counts, "n_fake")
    n = _count(counts, "n")
    if n is None and n_real is not None and n_fake is not None:
        n = n_real + n_fake
    if metric in FPR_TARGETS:
        need = reals_needed(FPR_TARGETS[metric])
        if n_real is not None and n_real < need:
            return f"needs ≥ {need} reals"
        return "needs fakes" if n_fake == 0 else None
    if metric == "ece" and n is not None and n < MIN_ECE_ROWS:
        return f"needs ≥ {MIN_ECE_ROWS} rows"
    if metric in _NEEDS_BOTH and (n_real == 0 or n_fake == 0):
        return "needs reals and fakes"
    return None


def guarded(metrics: Mapping[str, Any], counts: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A copy of ``metrics`` (a dict of one selection's values, with its counts or ``counts``)
    in which every metric its guard refuses is None (with its ``_lo``/``_hi`` bounds), and
    ``not_shown`` lists why."""
    counts = counts if counts is not None else metrics
    out: Dict[str, Any] = dict(metrics)
    reasons = {}
    for key in metrics:
        why = guard(key, counts)
        if why:
            reasons[key] = why
            out.update({k: None for k in (key, f"{key}_lo", f"{key}_hi") if k in out})
    if reasons:
        out["not_shown"] = {**dict(out.get("not_shown") or {}), **reasons}
    return out


def few(counts: Mapping[str, Any]) -> Optional[str]:
    """``"1 fake"`` when a class has fewer than :data:`FEW_PER_CLASS` samples, else None."""
    small = [(_count(counts, k), name) for k, name in (("n_real", "real"), ("n_fake", "fake"))]
    small = [(n, name) for n, name in small if n is not None and 0 < n < FEW_PER_CLASS]
    return " and ".join(f"{n} {name}" for n, name in small) or None


def ci_note(lo: Any, hi: Any, counts: Optional[Mapping[str, Any]] = None) -> str:
    """``" (wide: ±0.18)"`` for a CI wider than :data:`WIDE_CI`, ``" (only 1 fake: CI unreliable)"``
    when ``counts`` show a class with fewer than :data:`FEW_PER_CLASS` samples, else ``""``."""
    handful = few({} if counts is None else counts)
    if handful:
        return f" (only {handful}: CI unreliable)"
    try:
        width = float(hi) - float(lo)
    except (TypeError, ValueError):
        return ""
    return f" (wide: ±{width / 2:.2f})" if math.isfinite(width) and width > WIDE_CI else ""
