"""Post-hoc calibration on the validation split: no test label is ever looked at.

* **Threshold for a target false-positive rate**: chosen on the validation *real* images
  alone (:func:`metrics.threshold_at_fpr`): at most ``target_fpr`` of them score above it.
  The threshold is found on logits (halfway between two real scores) and stored on the
  probability scale the detector uses
  (``P(fake) = sigmoid(logit / T)``), so it does not move when the temperature changes.
* **Temperature scaling**: one scalar ``T`` fit by NLL on the validation split
  (:func:`metrics.fit_temperature`); rankings (AUC, TPR at FPR) are unchanged, the
  probabilities (ECE, Brier) improve.

Both are written into the detector (``threshold``, ``temperature``, and
``extra["calibration"]`` with the validation numbers); re-save the bundle to keep them.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np

from clipdetect.eval.selection import split_params, split_rows
from clipdetect.core.metrics import brier_score, expected_calibration_error, fit_temperature, threshold_at_fpr

logger = logging.getLogger(__name__)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _midpoint_threshold(reals: np.ndarray, target_fpr: float) -> float:
    """:func:`threshold_at_fpr` moved halfway to the next higher real score, so that
    rounding (float32 logits, the sigmoid) cannot flip the real sitting exactly on it."""
    zt = threshold_at_fpr(reals, target_fpr)
    above = reals[reals > zt]
    nxt = float(above.min()) if above.size else zt + max(1e-3, 1e-3 * abs(zt))
    return 0.5 * (zt + nxt)


@dataclass
class CalibrationResult:
    """What calibration chose and how it behaves on the validation split."""

    target_fpr: Optional[float]
    threshold: float           # on P(fake), as stored in the detector
    logit_threshold: Optional[float]
    temperature: float
    split: str
    n_val: int
    n_val_real: int
    val_fpr: float             # achieved on the validation reals
    val_tpr: float             # on the validation fakes (NaN when there are none)
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    created: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def calibrate_scores(logits, y, *, target_fpr: Optional[float] = 0.01, temperature: bool = True,
                     old_temperature: float = 1.0, old_threshold: float = 0.5) -> CalibrationResult:
    """Calibrate from validation logits ``logits`` and labels ``y`` (pure function).

    ``target_fpr=None`` keeps the decision rule (the old threshold moves with the temperature);
    ``temperature=False`` keeps ``old_temperature``.
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y).ravel().astype(np.int64)
    reals = z[y == 0]
    if reals.size == 0:
        raise ValueError("the validation split has no real images; a target-FPR threshold needs them")
    both = (y == 0).any() and (y == 1).any()
    t = fit_temperature(z, y) if temperature and both else float(old_temperature)
    if temperature and not both:
        logger.warning("validation split has one class only: temperature left at %.4g", t)
    if target_fpr is not None:
        if not 0.0 <= target_fpr < 1.0:
            raise ValueError(f"target FPR must be in [0, 1), got {target_fpr}")
        if target_fpr * reals.size < 1:
            logger.warning("%d validation reals cannot resolve an FPR of %g (the threshold sits above all "
                           "of them); use more validation data for a meaningful estimate",
                           reals.size, target_fpr)
        zt = _midpoint_threshold(reals, target_fpr)
        threshold = float(_sigmoid(zt / t))
    else:  # keep the decision rule: the same logit threshold on the new probability scale
        old = min(max(float(old_threshold), 1e-12), 1 - 1e-12)
        zt = old_temperature * math.log(old / (1 - old))
        threshold = float(_sigmoid(zt / t))
    p_old, p_new = _sigmoid(z / old_temperature), _sigmoid(z / t)
    fakes = p_new[y == 1]
    return CalibrationResult(
        target_fpr=target_fpr, threshold=threshold, logit_threshold=zt, temperature=float(t), split="val",
        n_val=int(y.size), n_val_real=int(reals.size), val_fpr=float((p_new[y == 0] > threshold).mean()),
        val_tpr=float((fakes > threshold).mean()) if fakes.size else math.nan,
        ece_before=expected_calibration_error(y, p_old), ece_after=expected_calibration_error(y, p_new),
        brier_before=brier_score(y, p_old), brier_after=brier_score(y, p_new),
        created=time.strftime("%Y-%m-%dT%H:%M:%S"))


def calibrate_detector(detector, cache, *, target_fpr: Optional[float] = 0.01, temperature: bool = True,
                       split: str = "val", val: Optional[float] = None, test: Optional[float] = None,
                       split_seed: Optional[int] = None) -> CalibrationResult:
    """Fit temperature and/or the target-FPR threshold on ``split`` of ``cache``; update ``detector``.

    Uses the same split fractions and seed as training (recorded in the detector), so the
    validation rows are the ones training held out. Refuses ``split="test"``.
    """
    if split == "test":
        raise ValueError("calibrating on the test split would leak test labels into the detector; "
                         "use --split val")
    params = split_params(detector, val=val, test=test, seed=split_seed)
    rows = split_rows(cache, split, params)
    x = detector.features(cache, rows)
    logits = np.asarray(detector.decision_function(x), dtype=np.float64).ravel()
    result = calibrate_scores(logits, cache.labels(rows), target_fpr=target_fpr, temperature=temperature,
                              old_temperature=float(detector.temperature),
                              old_threshold=float(detector.threshold))
    result.split = split
    detector.temperature = result.temperature
    detector.threshold = result.threshold
    extra = dict(getattr(detector, "extra", None) or {})
    extra["calibration"] = {**result.to_dict(), "cache": str(cache.root), **asdict(params)}
    detector.extra = extra
    logger.info("calibrated on %d %s rows (%d real): T = %.4g, threshold P(fake) > %.6g "
                "(val FPR %.4f, TPR %.4f)",
                result.n_val, split, result.n_val_real, result.temperature, result.threshold, result.val_fpr,
                result.val_tpr)
    return result
