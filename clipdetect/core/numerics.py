"""The logistic function, its inverse and the logistic loss: the one definition of each (float64)."""
from __future__ import annotations

import math

import numpy as np


def sigmoid(a) -> np.ndarray:
    """``1 / (1 + exp(-a))``; ``exp(-a) = inf`` for ``a << 0`` gives exactly 0, as it should."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(a, dtype=np.float64)))


def logit(p):
    """``log(p / (1 - p))``, -inf at 0 and +inf at 1: a float for a number, an array for an array."""
    if np.ndim(p) == 0:
        p = float(p)
        return -math.inf if p <= 0.0 else math.inf if p >= 1.0 else math.log(p / (1.0 - p))
    q = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(q) - np.log1p(-q)


def logistic_loss(z, y) -> float:
    """Mean binary cross-entropy of logits ``z`` against targets ``y`` in [0, 1], computed stably."""
    z = np.asarray(z, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))
