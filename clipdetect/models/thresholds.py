"""A detector's decision threshold, on its calibrated P(fake) (``label = probability > threshold``).

It targets a stated false-positive rate on the validation *reals* (:func:`fpr_threshold`;
default 5 %), or, on request, the best balanced accuracy (:func:`choose_threshold`). Its target
is recorded as a plain dict (``threshold_target``, :func:`describe_target`) that ``predict``,
``report`` and the bundle carry. :func:`fit_on_validation` fits the calibration
(:mod:`clipdetect.models.calibration`) and then the threshold.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from clipdetect.core.metrics import binary_metrics, threshold_at_fpr
from clipdetect.models.calibration import Calibration, fit_calibration

logger = logging.getLogger(__name__)

__all__ = ["THRESHOLD_RULES", "choose_threshold", "fpr_threshold", "describe_target", "fit_on_validation"]

THRESHOLD_RULES = ("fpr", "balanced")


def choose_threshold(y, prob) -> float:
    """The threshold t maximising balanced accuracy of ``prob > t`` (midpoint between scores)."""
    y, prob = np.asarray(y).astype(int), np.asarray(prob, dtype=np.float64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        logger.warning("threshold needs both classes in the validation data: using 0.5")
        return 0.5
    u, inv = np.unique(prob, return_inverse=True)
    pos = np.bincount(inv, weights=(y == 1), minlength=len(u))
    neg = np.bincount(inv, weights=(y == 0), minlength=len(u))
    # candidate k: predict fake for u[k:], i.e. t between u[k-1] and u[k]; k = len(u) means none fake
    tpr = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]]) / n_pos
    tnr = np.concatenate([[0.0], np.cumsum(neg)]) / n_neg
    k = int(np.argmax(tpr + tnr))
    lo = u[k - 1] if k > 0 else max(0.0, u[0] - 1e-6)
    hi = u[k] if k < len(u) else min(1.0, u[-1] + 1e-6)
    return float((lo + hi) / 2)


def fpr_threshold(real_logits, target_fpr: float) -> float:
    """The logit threshold with at most ``target_fpr`` of ``real_logits`` above it, moved halfway
    to the next higher real score (so rounding cannot flip the real sitting on it)."""
    reals = np.asarray(real_logits, dtype=np.float64).ravel()
    if reals.size == 0:
        raise ValueError("a target-FPR threshold needs real images in the validation split; it has none")
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target FPR must be in [0, 1), got {target_fpr}")
    zt = threshold_at_fpr(reals, target_fpr)
    above = reals[reals > zt]
    nxt = float(above.min()) if above.size else zt + max(1e-3, 1e-3 * abs(zt))
    return 0.5 * (zt + nxt)


def describe_target(target: Optional[Dict[str, Any]]) -> str:
    """One line for a ``threshold_target`` record (predict, report, model card)."""
    t = dict(target or {})
    if t.get("metric") == "fpr":
        text = f"FPR {t['value']:g} on {t.get('n_reals', '?')} {t.get('on', 'validation reals')}"
        if t.get("achieved_fpr") is not None:
            text += f" (achieved {t['achieved_fpr']:.4f})"
        if t.get("resolved") is False:
            text += f"; {t.get('n_reals')} reals cannot resolve it (needs >= {math.ceil(1 / t['value'])})"
        return text
    if t.get("metric") == "balanced_accuracy":
        return f"best balanced accuracy on {t.get('n', '?')} validation rows"
    if t.get("metric") == "fixed":
        return f"fixed at {t.get('value')}" + (f" ({t['reason']})" if t.get("reason") else "")
    return "none recorded (P(fake) > 0.5 unless set)"


def _threshold(z, y, cal: Calibration, rule: str, target_fpr: float) -> Tuple[float, Dict[str, Any]]:
    reals = z[y == 0]
    if rule == "fpr" and reals.size:
        zt = fpr_threshold(reals, target_fpr)
        threshold = float(cal.probability(zt))
        achieved = float((cal.probability(reals) > threshold).mean())
        fakes = z[y == 1]
        need = math.ceil(1.0 / target_fpr - 1e-9) if target_fpr > 0 else math.inf
        target = {"metric": "fpr", "value": float(target_fpr), "on": "validation reals", "n_reals": int(reals.size),
                  "achieved_fpr": achieved, "resolved": bool(reals.size >= need),
                  "tpr": float((cal.probability(fakes) > threshold).mean()) if fakes.size else None}
        if reals.size < need:
            logger.warning("the threshold targets FPR %g on %d validation reals, which cannot resolve it (>= %d "
                           "needed): it sits above every validation real, and its FPR on new photos is unknown",
                           target_fpr, reals.size, need)
        return threshold, target
    if rule == "fpr":
        logger.warning("no real images in the validation split: the threshold falls back to best balanced accuracy")
    threshold = choose_threshold(y, cal.probability(z))
    return threshold, {"metric": "balanced_accuracy", "on": "validation", "n": int(y.size)}


def fit_on_validation(val_logits, y_val, *, calibration: str = "platt", threshold_rule: str = "fpr",
                      target_fpr: float = 0.05) -> Tuple[Calibration, float, Dict[str, Any], Dict[str, Any]]:
    """``(calibration, threshold, threshold_target, metrics)`` from validation logits.

    The calibration (:func:`fit_calibration`, its record in ``metrics["calibration"]``) is
    fitted first; the threshold is then chosen on the calibrated probability by
    ``threshold_rule``: "fpr" (at most ``target_fpr`` of the validation reals above it) or
    "balanced" (best balanced accuracy). ``metrics["val"]`` holds the validation metrics at it.
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {threshold_rule!r} is not one of {THRESHOLD_RULES}")
    z = np.asarray(val_logits, dtype=np.float64).ravel()
    y = np.asarray(y_val).ravel().astype(np.int64)
    cal, record = fit_calibration(z, y, calibration)
    threshold, target = _threshold(z, y, cal, threshold_rule, target_fpr)
    val = binary_metrics(y, cal.probability(z), threshold=threshold)
    return cal, threshold, target, {"calibration": record, "val": val}
