"""A detector's probability calibration: its logit → P(fake), the one home of it.

Every detector (a head trained by ``clipdetect train``, a distilled student's head, a
re-calibrated bundle) maps its logit ``z`` to P(fake) with a :class:`Calibration`:

* ``platt`` (the default fitted at the end of training): ``P = sigmoid(scale * z + offset)``,
  two parameters fitted by NLL on validation rows with Platt's smoothed targets;
* ``temperature`` (bundles written before Platt scaling, or asked for): ``P = sigmoid(z / T)``;
* ``none``: ``P = sigmoid(z)``.

A fit is **not applied** (the detector keeps ``none``, and a warning says why) when the
validation split is too small (:data:`MIN_ROWS` rows, :data:`MIN_PER_CLASS` of each class),
when the fitted parameters sit on a bound of the search (a degenerate fit, such as a perfectly
separated validation set), or when it makes the validation ECE worse.

The decision threshold on the calibrated probability: :mod:`clipdetect.models.thresholds`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from clipdetect.core.guards import MIN_ECE_ROWS
from clipdetect.core.metrics import expected_calibration_error
from clipdetect.core.numerics import logistic_loss, logit, sigmoid

logger = logging.getLogger(__name__)

__all__ = ["Calibration", "CALIBRATION_METHODS", "MIN_ROWS", "MIN_PER_CLASS", "fit_temperature", "fit_platt",
           "fit_calibration"]

#: each method and the parameters it uses (what its record holds)
_PARAMETERS = {"platt": ("scale", "offset"), "temperature": ("temperature",), "none": ()}
CALIBRATION_METHODS = tuple(_PARAMETERS)
#: a calibration is fitted only on at least this many validation rows (the rows an ECE needs to be
#: shown at all: whether a fit helps is judged by it), and this many of each class
MIN_ROWS, MIN_PER_CLASS = MIN_ECE_ROWS, 10
#: search bounds: Platt's scale and |offset|, the temperature (a fit on a bound is not applied)
SCALE_BOUNDS, OFFSET_BOUND, TEMPERATURE_BOUNDS = (1e-2, 1e2), 50.0, (1e-2, 1e2)


@dataclass(frozen=True)
class Calibration:
    """Logit → P(fake). ``method`` is "platt" (``scale``, ``offset``), "temperature"
    (``temperature``) or "none"."""

    method: str = "none"
    scale: float = 1.0
    offset: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method {self.method!r} is not one of {CALIBRATION_METHODS}")
        if not (self.temperature > 0 and self.scale > 0):
            raise ValueError(f"temperature and scale must be > 0, got T={self.temperature!r}, "
                             f"scale={self.scale!r}")

    @classmethod
    def of_temperature(cls, temperature: float) -> "Calibration":
        return cls(method="temperature", temperature=float(temperature))

    @classmethod
    def platt(cls, scale: float, offset: float) -> "Calibration":
        return cls(method="platt", scale=float(scale), offset=float(offset))

    def calibrated_logit(self, logits) -> np.ndarray:
        """The argument of the sigmoid: ``scale*z + offset``, ``z / T`` or ``z`` (float64)."""
        z = np.asarray(logits).astype(np.float64)
        if self.method == "platt":
            return self.scale * z + self.offset
        if self.method == "temperature":
            return z / self.temperature  # exactly what bundles with a temperature always computed
        return z

    def probability(self, logits) -> np.ndarray:
        """P(fake) of raw head logits."""
        return sigmoid(self.calibrated_logit(logits))

    def logit_of(self, probability: float) -> float:
        """The raw logit whose P(fake) is ``probability`` (±inf at 0 and 1)."""
        a = logit(probability)
        if self.method == "platt":
            return (a - self.offset) / self.scale
        if self.method == "temperature":
            return a * self.temperature
        return a

    def to_json(self) -> Dict[str, Any]:
        return {"method": self.method, **{k: getattr(self, k) for k in _PARAMETERS[self.method]}}

    @classmethod
    def from_json(cls, d: Optional[Dict[str, Any]]) -> "Calibration":
        d = dict(d or {})
        return cls(**{k: d[k] for k in ("method", "scale", "offset", "temperature") if k in d})

    def describe(self) -> str:
        if self.method == "platt":
            return f"Platt scaling, P(fake) = sigmoid({self.scale:.4g} * logit {self.offset:+.4g})"
        if self.method == "temperature":
            return f"temperature scaling, P(fake) = sigmoid(logit / {self.temperature:.4g})"
        return "none, P(fake) = sigmoid(logit)"


def _logits_labels(logits, y_true) -> Tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y_true).ravel()
    if z.shape != y.shape or not z.size or not np.isin(y, (0, 1)).all() or not np.isfinite(z).all():
        raise ValueError(f"calibration needs equally many finite logits and 0/1 labels, got {z.size} and {y.size}")
    return z, y.astype(np.int64)


def fit_temperature(logits, y_true, *, bounds: Tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """Temperature ``T > 0`` minimising the NLL of ``sigmoid(logits / T)`` (search on log T)."""
    from scipy.optimize import minimize_scalar

    z, y = _logits_labels(logits, y_true)

    def nll(log_t: float) -> float:
        return logistic_loss(z / math.exp(log_t), y)

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])),
                          method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def fit_platt(logits, y_true, *, scale_bounds: Tuple[float, float] = SCALE_BOUNDS,
              offset_bound: float = OFFSET_BOUND) -> Tuple[float, float]:
    """Platt scaling: ``(scale, offset)`` minimising the NLL of ``sigmoid(scale * logit + offset)``.

    Fitted against Platt's smoothed targets ((n_fake + 1) / (n_fake + 2) for fakes,
    1 / (n_real + 2) for reals), as scikit-learn's sigmoid calibration does, so a perfectly
    separated set does not drive the scale to infinity; the search runs on log(scale) within
    ``scale_bounds`` and on the offset within ±``offset_bound``.
    """
    from scipy.optimize import minimize

    z, y = _logits_labels(logits, y_true)
    n1 = float(y.sum())
    t = np.where(y == 1, (n1 + 1.0) / (n1 + 2.0), 1.0 / (y.size - n1 + 2.0))

    def nll(params: np.ndarray) -> Tuple[float, np.ndarray]:
        a, b = math.exp(params[0]), params[1]
        s = a * z + b
        d = sigmoid(s) - t  # dNLL/ds per sample
        return logistic_loss(s, t), np.array([np.mean(d * a * z), np.mean(d)])

    res = minimize(nll, np.zeros(2), jac=True, method="L-BFGS-B",
                   bounds=[(math.log(scale_bounds[0]), math.log(scale_bounds[1])), (-offset_bound, offset_bound)])
    return float(math.exp(res.x[0])), float(res.x[1])


def _on_bound(value: float, lo: float, hi: float) -> bool:
    return value <= lo * (1 + 1e-3) or value >= hi * (1 - 1e-3)


def fit_calibration(logits, y, method: str = "platt") -> Tuple[Calibration, Dict[str, Any]]:
    """Fit ``method`` on validation logits and labels; ``(calibration, record)``.

    The record holds ``method``, ``n``, ``n_real``, ``n_fake``, ``ece_before``, ``ece_after``,
    the fitted parameters, ``applied`` and, when not applied, ``reason``; the returned
    calibration is the fit when applied, else ``none``. See the module docstring for the guards.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration {method!r} is not one of {CALIBRATION_METHODS}")
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y).ravel().astype(np.int64)
    n_fake = int(y.sum())
    record: Dict[str, Any] = {"method": method, "split": "val", "n": int(y.size), "n_real": int(y.size - n_fake),
                              "n_fake": n_fake, "applied": False}
    if method == "none":
        record["reason"] = "not asked for"
        return Calibration(), record
    if y.size < MIN_ROWS or min(n_fake, y.size - n_fake) < MIN_PER_CLASS:
        record["reason"] = (f"too few validation rows ({y.size}: {y.size - n_fake} real, {n_fake} fake; a fit "
                            f"needs >= {MIN_ROWS} rows and >= {MIN_PER_CLASS} of each class)")
        return _not_applied(record)
    if method == "platt":
        scale, offset = fit_platt(z, y, scale_bounds=SCALE_BOUNDS, offset_bound=OFFSET_BOUND)
        cal = Calibration.platt(scale, offset)
        record.update(scale=scale, offset=offset)
        bound = _on_bound(scale, *SCALE_BOUNDS) or abs(offset) >= OFFSET_BOUND * (1 - 1e-3)
        params = f"scale {scale:.4g}, offset {offset:+.4g}"
    else:
        t = fit_temperature(z, y, bounds=TEMPERATURE_BOUNDS)
        cal = Calibration.of_temperature(t)
        record.update(temperature=t)
        bound = _on_bound(t, *TEMPERATURE_BOUNDS)
        params = f"T {t:.4g}"
    before = expected_calibration_error(y, sigmoid(z))
    after = expected_calibration_error(y, cal.probability(z))
    record.update(ece_before=before, ece_after=after)
    if bound:
        record["reason"] = f"the fit hit a bound of its search ({params}): the validation rows do not pin it down"
        return _not_applied(record)
    if after > before:
        record["reason"] = f"it made the validation ECE worse ({before:.4f} -> {after:.4f})"
        return _not_applied(record)
    record["applied"] = True
    logger.info("%s calibration fitted on %d validation rows (%s): ECE %.4f -> %.4f", method, y.size, params,
                before, after)
    return cal, record


def _not_applied(record: Dict[str, Any]) -> Tuple[Calibration, Dict[str, Any]]:
    logger.warning("%s calibration not applied: %s; P(fake) = sigmoid(logit)", record["method"], record["reason"])
    return Calibration(), record
