"""Post-hoc calibration on the validation split (``clipdetect calibrate``): no test label is looked at.

* **Threshold for a target false-positive rate**: chosen on the validation *real* images
  alone (:func:`clipdetect.models.thresholds.fpr_threshold`): at most ``target_fpr`` of them
  score above it. It is found on logits and stored on P(fake), the scale ``predict`` writes.
* **Probability calibration** (optional): Platt scaling or a temperature, refitted on the
  validation split with the guards training uses (:func:`clipdetect.models.calibration.fit_calibration`);
  a fit that is not applied keeps the detector's calibration. Rankings (AUC, TPR at FPR)
  never change; probabilities (ECE, Brier) do.

Both are written into the detector (``calibration``, ``threshold``, ``threshold_target`` and
``extra["calibration"]`` with the validation numbers); re-save the bundle to keep them.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from clipdetect.core.guards import reals_needed
from clipdetect.core.metrics import brier_score, expected_calibration_error
from clipdetect.eval.selection import split_params, split_rows
from clipdetect.models.calibration import Calibration, fit_calibration
from clipdetect.models.thresholds import fpr_threshold

logger = logging.getLogger(__name__)


@dataclass
class CalibrationResult:
    """What calibration chose and how it behaves on the validation split."""

    target_fpr: Optional[float]
    threshold: float           # on P(fake), as stored in the detector
    logit_threshold: Optional[float]
    calibration: Dict[str, Any]  # the detector's calibration after this run (method and parameters)
    split: str
    n_val: int
    n_val_real: int
    val_fpr: float             # achieved on the validation reals
    val_tpr: float             # on the validation fakes (NaN when there are none)
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    fit: Dict[str, Any] = field(default_factory=dict)  # the refit's record (applied, reason), if any
    created: str = ""

    @property
    def temperature(self) -> Optional[float]:
        return self.calibration.get("temperature") if self.calibration.get("method") == "temperature" else None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def calibrate_scores(logits, y, *, target_fpr: Optional[float] = 0.01, method: Optional[str] = None,
                     old: Optional[Calibration] = None, old_threshold: float = 0.5) -> CalibrationResult:
    """Calibrate from validation logits ``logits`` and labels ``y`` (pure function).

    ``method`` ("platt", "temperature"; None keeps ``old``) refits the probability calibration;
    ``target_fpr=None`` keeps the decision rule (the old threshold, moved to the new scale).
    """
    old = old or Calibration()
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y).ravel().astype(np.int64)
    reals = z[y == 0]
    if reals.size == 0:
        raise ValueError("the validation split has no real images; a target-FPR threshold needs them")
    cal, fit = old, {}
    if method is not None:
        fitted, fit = fit_calibration(z, y, method)
        cal = fitted if fit["applied"] else old
    if target_fpr is not None:
        if target_fpr * reals.size < 1:
            logger.warning("%d validation reals cannot resolve an FPR of %g (the threshold sits above all "
                           "of them); use more validation data for a meaningful estimate",
                           reals.size, target_fpr)
        zt = fpr_threshold(reals, target_fpr)
    else:  # keep the decision rule: the same logit threshold on the new probability scale
        zt = old.logit_of(min(max(float(old_threshold), 1e-12), 1 - 1e-12))
    threshold = float(cal.probability(zt))
    p_old, p_new = old.probability(z), cal.probability(z)
    fakes = p_new[y == 1]
    return CalibrationResult(
        target_fpr=target_fpr, threshold=threshold, logit_threshold=zt, calibration=cal.to_json(), split="val",
        n_val=int(y.size), n_val_real=int(reals.size), val_fpr=float((p_new[y == 0] > threshold).mean()),
        val_tpr=float((fakes > threshold).mean()) if fakes.size else math.nan,
        ece_before=expected_calibration_error(y, p_old), ece_after=expected_calibration_error(y, p_new),
        brier_before=brier_score(y, p_old), brier_after=brier_score(y, p_new), fit=fit,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"))


def calibrate_detector(detector, cache, *, target_fpr: Optional[float] = 0.01, method: Optional[str] = None,
                       split: str = "val", val: Optional[float] = None, test: Optional[float] = None,
                       split_seed: Optional[int] = None) -> CalibrationResult:
    """Refit the threshold at ``target_fpr`` and/or the calibration (``method``) on ``split`` of
    ``cache``; update ``detector``.

    Uses the same split fractions and seed as training (recorded in the detector), so the
    validation rows are the ones training held out. Refuses ``split="test"``.
    """
    if split == "test":
        raise ValueError("calibrating on the test split would leak test labels into the detector; "
                         "use --split val")
    params = split_params(detector, val=val, test=test, seed=split_seed)
    rows = split_rows(cache, split, params)
    logits = np.asarray(detector.logits(detector.features(cache, rows)), dtype=np.float64).ravel()
    result = calibrate_scores(logits, cache.labels(rows), target_fpr=target_fpr, method=method,
                              old=detector.calibration, old_threshold=float(detector.threshold))
    result.split = split
    detector.calibration = Calibration.from_json(result.calibration)
    detector.threshold = result.threshold
    if target_fpr is not None:
        need = reals_needed(target_fpr) if target_fpr > 0 else math.inf
        detector.threshold_target = {"metric": "fpr", "value": float(target_fpr), "on": f"{split} reals",
                                     "n_reals": result.n_val_real, "achieved_fpr": result.val_fpr,
                                     "resolved": bool(result.n_val_real >= need), "tpr": result.val_tpr,
                                     "set_by": "clipdetect calibrate"}
    calibration = {**result.to_dict(), "cache": str(cache.root), **asdict(params)}
    detector.extra = {**(getattr(detector, "extra", None) or {}), "calibration": calibration}
    logger.info("calibrated on %d %s rows (%d real): %s, threshold P(fake) > %.6g (val FPR %.4f, TPR %.4f)",
                result.n_val, split, result.n_val_real, detector.calibration.describe(), result.threshold,
                result.val_fpr, result.val_tpr)
    return result
