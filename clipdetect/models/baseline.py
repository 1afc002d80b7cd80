"""The honest baseline: an L2-regularised logistic-regression probe fitted to convergence.

Any detector head on CLIP embeddings should beat a linear probe fitted by a convex solver
on the same training rows; when it does not, its training (steps, learning rate) is at
fault. :func:`fit_logistic_probe` standardises the features, fits scikit-learn's
``LogisticRegression`` (L-BFGS, run until its tolerance is met) for each ``C`` of a small
grid, keeps the ``C`` with the best validation ROC-AUC, and folds the standardisation into a
linear head, so the probe is an ordinary :class:`~clipdetect.models.detector.Detector`
(scored, calibrated, saved and compared like any other).
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numpy as np
import torch

from clipdetect.features.splits import SPLIT_SEED, TEST_FRACTION, VAL_FRACTION, SplitSpec
from clipdetect.models.detector import Detector
from clipdetect.models.heads import HeadConfig, create_head
from clipdetect.models.train import TrainConfig
from clipdetect.models.trainer import TrainResult

logger = logging.getLogger(__name__)

__all__ = ["fit_logistic_probe", "fit_probe_on_cache", "PROBE_CS"]

#: inverse regularisation strengths tried (on standardised features)
PROBE_CS = (0.01, 0.1, 1.0)


def fit_logistic_probe(X, y, *, X_val=None, y_val=None, Cs: Sequence[float] = PROBE_CS, max_iter: int = 10000,
                       feature_set: str = "image", backbone: Optional[dict] = None,
                       split: Optional[dict] = None, extra: Optional[dict] = None) -> Detector:
    """Fit the probe on ``X``/``y``; choose ``C`` on ``X_val``/``y_val`` (without validation
    data: ``C = 1``). Returns a calibrated :class:`Detector` with a linear head.

    ``split`` (val_fraction / test_fraction / split_seed) is recorded as the train config so
    that evaluation finds the same held-out rows.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(np.int64)
    scaler = StandardScaler().fit(X)
    Xs = scaler.transform(X)
    has_val = X_val is not None and len(X_val) and 0 < np.sum(y_val) < len(y_val)
    Xv = scaler.transform(np.asarray(X_val, dtype=np.float64)) if has_val else None
    best = None
    for C in (Cs if has_val else (1.0,)):
        model = LogisticRegression(C=C, max_iter=max_iter, tol=1e-6).fit(Xs, y)
        if int(np.max(model.n_iter_)) >= max_iter:
            logger.warning("logistic probe (C=%g) did not converge in %d iterations", C, max_iter)
        score = float(roc_auc_score(y_val, model.decision_function(Xv))) if has_val else math.nan
        if best is None or score > best[0]:
            best = (score, C, model)
    val_auc, C, model = best
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    w = model.coef_[0] / scale
    b = float(model.intercept_[0] - np.sum(model.coef_[0] * scaler.mean_ / scale))
    head_config = HeadConfig(kind="linear", in_dim=X.shape[1])
    head = create_head(head_config)
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(w[None, :].astype(np.float32)))
        head.linear.bias.fill_(b)
    head.eval()
    val_logits = None
    if has_val:
        val_logits = head(torch.from_numpy(np.asarray(X_val, dtype=np.float32))).detach().numpy()
    config = TrainConfig(head="linear", loss="bce", sam=False, **(split or {}))
    result = TrainResult(head=head, head_config=head_config, history=[], best_epoch=0, epochs_run=0,
                         stopped_early=False, steps=int(np.max(model.n_iter_)), val_logits=val_logits,
                         schedule=None)
    probe = {"kind": "logistic-regression", "solver": "lbfgs", "C": C, "Cs": list(Cs), "max_iter": max_iter,
             "n_iter": int(np.max(model.n_iter_)), "val_auc": val_auc, "standardised": True}
    return Detector.from_result(result, feature_set=feature_set, backbone=backbone or {}, config=config,
                                y_val=np.asarray(y_val) if has_val else None,
                                extra={**(extra or {}), "probe": probe})


def fit_probe_on_cache(cache, *, feature_set: str = "image", val_fraction: float = VAL_FRACTION,
                       test_fraction: float = TEST_FRACTION, split_seed: int = SPLIT_SEED, **kwargs) -> Detector:
    """:func:`fit_logistic_probe` on the train rows of ``cache`` (validation rows choose ``C``),
    with the same key-hash split as :meth:`Detector.fit_cache`."""
    tr, va, _ = SplitSpec(val_fraction, test_fraction, split_seed).all(cache)
    if len(tr) == 0:
        raise ValueError(f"cache {str(cache.root)!r} has no training rows for the logistic-regression probe")
    split = {"val_fraction": val_fraction, "test_fraction": test_fraction, "split_seed": split_seed}
    return fit_logistic_probe(cache.features(feature_set, tr), cache.labels(tr),
                              X_val=cache.features(feature_set, va) if len(va) else None,
                              y_val=cache.labels(va) if len(va) else None, feature_set=feature_set,
                              backbone=cache.backbone, split=split,
                              extra={"cache": str(cache.root), "splits": {"train": len(tr), "val": len(va)}},
                              **kwargs)
