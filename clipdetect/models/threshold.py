"""A detector's decision threshold and temperature, chosen on its validation data."""
from __future__ import annotations

import logging
from typing import Any, Dict, Tuple

import numpy as np

from clipdetect.core.metrics import binary_metrics, expected_calibration_error, fit_temperature

logger = logging.getLogger(__name__)


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


def fit_on_validation(val_logits: np.ndarray, y_val: np.ndarray, *,
                      calibrate: bool = True) -> Tuple[float, float, Dict[str, Any]]:
    """``(threshold, temperature, metrics)`` from validation logits: the temperature is fit on
    them when ``calibrate`` and both classes are present (ECE before/after in
    ``metrics["calibration"]``), and the threshold maximises balanced accuracy of the
    temperature-scaled probability (its metrics in ``metrics["val"]``)."""
    metrics: Dict[str, Any] = {}
    temperature = 1.0
    z = val_logits.astype(np.float64)
    both = 0 < int(np.sum(y_val)) < len(y_val)
    if calibrate and both:
        temperature = fit_temperature(z, y_val)
        metrics["calibration"] = {
            "split": "val", "n": int(len(y_val)), "temperature": temperature,
            "ece_before": expected_calibration_error(y_val, 1.0 / (1.0 + np.exp(-z))),
            "ece_after": expected_calibration_error(y_val, 1.0 / (1.0 + np.exp(-z / temperature)))}
        logger.info("temperature %.4g fit on %d validation rows: ECE %.4f -> %.4f", temperature,
                    len(y_val), metrics["calibration"]["ece_before"], metrics["calibration"]["ece_after"])
    prob = 1.0 / (1.0 + np.exp(-z / temperature))
    threshold = choose_threshold(y_val, prob)
    metrics["val"] = binary_metrics(y_val, prob, threshold=threshold)
    return threshold, temperature, metrics
