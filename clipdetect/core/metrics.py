"""Detection metrics, bootstrap confidence intervals and calibration metrics (the tables that
show them: :mod:`clipdetect.core.tables`).

Conventions: label 1 = fake (generated, the positive class), 0 = real; higher score = more
likely fake. A sample is predicted fake when its score is *strictly above* the threshold.

All ranking metrics are computed from per-score-value class counts, so one vectorised pass
evaluates a whole batch of bootstrap resamples (see :func:`bootstrap_ci`).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.special import logit
from sklearn.metrics import average_precision_score, roc_auc_score

from clipdetect.core.guards import FPR_TARGETS, guard

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("auc", "ap", "acc@0.5", "acc@thr", "eer", *FPR_TARGETS)
COUNTS: tuple[str, ...] = ("n", "n_real", "n_fake")
_RANKING = ("auc", "ap", "eer", *FPR_TARGETS)
_ALIASES: dict[Callable, str] = {roc_auc_score: "auc", average_precision_score: "ap"}
_CELLS_PER_CHUNK = 1_000_000  # resamples x distinct scores held in memory at once


def _check(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"need equally many labels and scores, got {y.size} and {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 (real) and 1 (fake)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y.astype(np.int64), s


def _acc_thresholds(threshold, prob_threshold, scores_are_probs) -> dict[str, float | None]:
    """Decision thresholds on the score scale for the two accuracy metrics."""
    t05 = prob_threshold if scores_are_probs else float(logit(prob_threshold))
    return {"acc@0.5": t05, "acc@thr": None if threshold is None else float(threshold)}


def _counts(y: np.ndarray, inv: np.ndarray, k: int, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Real / fake counts per distinct score value, shape (resamples, k), from indices."""
    b = idx.shape[0]
    keys = (np.arange(b)[:, None] * k + inv[idx]).ravel()
    c1 = np.bincount(keys, weights=y[idx].ravel(), minlength=b * k).reshape(b, k)
    c0 = np.bincount(keys, minlength=b * k).reshape(b, k) - c1
    return c0, c1


def _take(a: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, j[:, None], axis=1)[:, 0]


def _curve_metrics(c0, c1, u, acc_t: Mapping[str, float | None]) -> dict[str, np.ndarray]:
    """All metrics for a batch of count tables ``c0``/``c1`` over ascending values ``u``."""
    n0, n1 = c0.sum(1), c1.sum(1)
    out: dict[str, np.ndarray] = {"n": n0 + n1, "n_real": n0, "n_fake": n1}
    for name, t in acc_t.items():
        above = u > t if t is not None else None
        out[name] = (np.full(n0.shape, np.nan) if above is None else
                     (c1[:, above].sum(1) + c0[:, ~above].sum(1)) / (n0 + n1))
    with np.errstate(divide="ignore", invalid="ignore"):
        below0 = np.cumsum(c0, axis=1) - c0
        out["auc"] = (c1 * (below0 + 0.5 * c0)).sum(1) / (n0 * n1)
        tp = np.cumsum(c1[:, ::-1], axis=1)  # thresholds in descending order
        fp = np.cumsum(c0[:, ::-1], axis=1)
        out["ap"] = (c1[:, ::-1] * tp / np.maximum(tp + fp, 1)).sum(1) / n1
        zero = np.zeros((c0.shape[0], 1))
        fpr = np.hstack([zero, fp / n0[:, None]])
        tpr = np.hstack([zero, tp / n1[:, None]])
    for name, target in FPR_TARGETS.items():
        out[name] = np.where(fpr <= target + 1e-12, tpr, 0.0).max(1)
    d = fpr - (1.0 - tpr)  # non-decreasing from -1 (origin) to +1 (corner)
    i = np.maximum(np.argmax(d >= 0, axis=1), 1)
    d0, d1 = _take(d, i - 1), _take(d, i)
    w = np.divide(-d0, d1 - d0, out=np.zeros_like(d0), where=d1 > d0)
    out["eer"] = _take(fpr, i - 1) + w * (_take(fpr, i) - _take(fpr, i - 1))
    degenerate = (n0 == 0) | (n1 == 0)
    for name in _RANKING:
        out[name] = np.where(degenerate, np.nan, out[name])
    return out


def binary_metrics(y_true, scores, *, threshold: float | None = None,
                   prob_threshold: float = 0.5, scores_are_probs: bool = True) -> dict[str, float]:
    """Point metrics for one set of scores.

    Keys: ``auc`` (ROC-AUC), ``ap`` (average precision), ``acc@0.5`` (accuracy with the
    probability thresholded at ``prob_threshold``; for logits, ``logit(prob_threshold)``),
    ``acc@thr`` (accuracy at ``threshold`` on the score scale; NaN when None), ``eer``
    (equal error rate, linearly interpolated where FPR crosses FNR along the ROC curve),
    ``tpr@fpr=1%`` / ``tpr@fpr=0.1%`` (TPR of the best ROC operating point with FPR <= target,
    no interpolation), and ``n``, ``n_real``, ``n_fake``. With a single class the ranking
    metrics are NaN and a warning is logged; accuracies are still computed.
    """
    y, s = _check(y_true, scores)
    if scores_are_probs and s.size and (s.min() < 0 or s.max() > 1):
        logger.warning("scores_are_probs=True but scores fall outside [0, 1]")
    u, inv = np.unique(s, return_inverse=True)
    c0, c1 = _counts(y, inv, u.size, np.arange(y.size)[None, :])
    if c0.sum() == 0 or c1.sum() == 0:
        logger.warning("only one class present (n_real=%d, n_fake=%d): ranking metrics are NaN",
                       c0.sum(), c1.sum())
    res = _curve_metrics(c0, c1, u, _acc_thresholds(threshold, prob_threshold, scores_are_probs))
    return {k: (int(res[k][0]) if k in COUNTS else float(res[k][0])) for k in (*METRICS, *COUNTS)}


def _resample_chunks(y: np.ndarray, n_boot: int, seed: int, stratified: bool) -> Iterator[np.ndarray]:
    """Bootstrap index matrices of shape (resamples, n), a memory-bounded chunk at a time.

    The chunk size depends on ``n`` only, so a seed gives the same resamples on every path.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // max(y.size, 1))
    real, fake = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        if stratified and real.size and fake.size:
            yield np.hstack([real[rng.integers(0, real.size, (b, real.size))],
                             fake[rng.integers(0, fake.size, (b, fake.size))]])
        else:
            yield rng.integers(0, y.size, (b, y.size))


def _percentile_ci(values: np.ndarray, ci: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = 100.0 * (1.0 - ci) / 2.0
    low, high = np.percentile(values, [alpha, 100.0 - alpha])
    return float(low), float(high)


def _bootstrap_all(y, s, *, n_boot: int, seed: int, stratified: bool,
                   acc_t: Mapping[str, float | None]) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` on ``n_boot`` resamples, vectorised by chunks."""
    u, inv = np.unique(s, return_inverse=True)
    parts = [_curve_metrics(*_counts(y, inv, u.size, idx), u, acc_t)
             for idx in _resample_chunks(y, n_boot, seed, stratified)]
    return {k: np.concatenate([p[k] for p in parts]) for k in METRICS}


def bootstrap_ci(y_true, scores, metric_fn: str | Callable[[np.ndarray, np.ndarray], float], *,
                 n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                 stratified: bool = True, **metric_kw) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` of a metric.

    ``metric_fn`` is either a key of :func:`binary_metrics` (``"auc"``, ``"eer"``, ...;
    ``metric_kw`` go to the thresholds as in :func:`binary_metrics`), sklearn's
    ``roc_auc_score`` / ``average_precision_score`` (mapped to the same fast path), or any
    callable ``f(y, scores) -> float`` evaluated once per resample. The named metrics are
    vectorised over resamples. ``stratified`` resamples reals and fakes separately, so each
    resample keeps the class counts; otherwise resamples lacking a class are skipped.
    """
    y, s = _check(y_true, scores)
    name = metric_fn if isinstance(metric_fn, str) else _ALIASES.get(metric_fn)
    if name is not None:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {METRICS}")
        acc_t = _acc_thresholds(metric_kw.get("threshold"), metric_kw.get("prob_threshold", 0.5),
                                metric_kw.get("scores_are_probs", True))
        vals = _bootstrap_all(y, s, n_boot=n_boot, seed=seed, stratified=stratified, acc_t=acc_t)[name]
        return _percentile_ci(vals, ci)
    vals = []
    for idx in _resample_chunks(y, n_boot, seed, stratified):
        for row in idx:
            yb = y[row]
            both = yb.min() != yb.max()
            vals.append(float(metric_fn(yb, s[row], **metric_kw)) if both else math.nan)
    return _percentile_ci(np.asarray(vals, dtype=float), ci)


def _row(y, s, *, threshold, n_boot, seed, scores_are_probs) -> dict[str, float]:
    row: dict[str, float] = binary_metrics(y, s, threshold=threshold, scores_are_probs=scores_are_probs)
    if n_boot > 0 and y.size:
        acc_t = _acc_thresholds(threshold, 0.5, scores_are_probs)
        boot = _bootstrap_all(y, s, n_boot=n_boot, seed=seed, stratified=True, acc_t=acc_t)
        for name in METRICS:
            row[f"{name}_lo"], row[f"{name}_hi"] = _percentile_ci(boot[name], 0.95)
    for name in METRICS:  # a metric its small-sample guard refuses is not reported at all
        if guard(name, row):
            row.update({key: math.nan for key in (name, f"{name}_lo", f"{name}_hi") if key in row})
    return row


def evaluate_scores(y_true, scores, *, groups: Mapping[str, Sequence] | None = None,
                    threshold: float | None = None, n_boot: int = 1000, seed: int = 0,
                    scores_are_probs: bool = True,
                    reference: Literal["real", "group"] = "real") -> pd.DataFrame:
    """Metric table: an ``overall`` row plus one row per (group column, group value).

    ``groups`` maps a column name (e.g. ``"generator"``) to per-sample values aligned with
    ``y_true``; missing values (None/NaN) belong to no group. With ``reference="real"`` a
    group whose subset holds only fakes is scored against **all** reals of the input (the
    usual per-generator report: each generator's fakes vs the shared real set), and its
    ``vs`` column reads ``"all_real"``; a group of reals only (one photo source) is scored
    against all fakes (``"all_fake"``: its FPR at the threshold is what it measures);
    otherwise the subset is scored as-is (``vs="group"``).
    Columns: ``group``, ``value``, ``vs``, counts, the metrics of :func:`binary_metrics` and,
    when ``n_boot > 0``, 95% stratified bootstrap bounds ``<metric>_lo`` / ``<metric>_hi``.
    A metric its small-sample guard refuses (:func:`clipdetect.core.guards.guard`) is NaN.
    """
    y, s = _check(y_true, scores)
    if reference not in ("real", "group"):
        raise ValueError(f"reference must be 'real' or 'group', got {reference!r}")
    kw = dict(threshold=threshold, n_boot=n_boot, seed=seed, scores_are_probs=scores_are_probs)
    return pd.DataFrame([{"group": group, "value": value, "vs": vs, **_row(y[mask], s[mask], **kw)}
                         for group, value, vs, mask in group_masks(y, groups, reference)])


def group_masks(y: np.ndarray, groups: Mapping[str, Sequence] | None = None, reference: str = "real"):
    """``(group, value, vs, mask)`` of every row of :func:`evaluate_scores`, in its order: the
    ``overall`` row, then one per (group column, value); ``reference`` and ``vs`` as there."""
    yield "overall", "all", "group", np.ones(y.size, dtype=bool)
    for column, values in (groups or {}).items():
        col = pd.Series(np.asarray(values, dtype=object))
        if len(col) != y.size:
            raise ValueError(f"groups[{column!r}] has {len(col)} entries, expected {y.size}")
        for value in sorted(col[col.notna()].unique(), key=str):
            mask, vs = (col == value).to_numpy(), "group"
            if reference == "real" and (y[mask] == 1).all():
                mask, vs = mask | (y == 0), "all_real"
            elif reference == "real" and (y[mask] == 0).all():
                mask, vs = mask | (y == 1), "all_fake"
            yield column, value, vs, mask


def threshold_at_fpr(real_scores, target_fpr: float) -> float:
    """Lowest threshold among the real scores with at most ``target_fpr`` of them above it.

    Calibrates a decision threshold on validation reals alone: the fraction of
    ``real_scores`` strictly greater than the returned value is <= ``target_fpr``.
    """
    r = np.sort(np.asarray(real_scores, dtype=float).ravel())
    if r.size == 0:
        raise ValueError("real_scores is empty")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError("target_fpr must lie in [0, 1]")
    k = int(math.floor(target_fpr * r.size + 1e-9))  # reals allowed above the threshold
    return float(r[max(r.size - k - 1, 0)])


def _calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per equal-width bin of ``p``: (count, number of fakes, sum of predicted probabilities)."""
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1).clip(0)
    return (np.bincount(bins, minlength=n_bins), np.bincount(bins, weights=y, minlength=n_bins),
            np.bincount(bins, weights=p, minlength=n_bins))


def expected_calibration_error(y_true, probs, *, n_bins: int = 15) -> float:
    """ECE over ``n_bins`` equal-width bins of the predicted fake probability.

    Sum over bins of (bin size / n) * |fraction of fakes - mean predicted probability|.
    """
    y, p = _check(y_true, probs)
    size, pos, conf = _calibration_bins(y, p, n_bins)
    return float(np.abs(pos - conf).sum() / max(y.size, 1)) if size.any() else math.nan


def reliability_table(y_true, probs, *, n_bins: int = 15) -> pd.DataFrame:
    """The bins behind :func:`expected_calibration_error`: one row per non-empty bin with
    ``lo``, ``hi``, ``n``, ``mean_prob`` (mean predicted P(fake)) and ``frac_fake``."""
    y, p = _check(y_true, probs)
    size, pos, conf = _calibration_bins(y, p, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    keep = size > 0
    n = np.maximum(size, 1)
    return pd.DataFrame({"lo": edges[:-1][keep], "hi": edges[1:][keep], "n": size[keep],
                         "mean_prob": (conf / n)[keep], "frac_fake": (pos / n)[keep]})


def brier_score(y_true, probs) -> float:
    """Mean squared difference between the predicted fake probability and the label."""
    y, p = _check(y_true, probs)
    return float(np.mean((p - y) ** 2))
