"""Fusion of detectors: several heads on different feature sets, one combined logit.

A fused detector reads one concatenated input (the union of its members' feature sets, e.g.
``image+layers``); each member head reads its own columns, and the member logits are combined
linearly, ``s = sum_i w_i * s_i + b``. Two ways to choose ``w`` and ``b``, both on validation
rows only (never on test):

* ``mean``: the average of the members' standardised logits (mean 0, std 1 on validation);
* ``stack``: a logistic regression on the member logits (stacking; L2 with C = 1);
* ``auto``: whichever has the higher cross-validated validation AUC.

The fused detector is an ordinary :class:`~clipdetect.models.detector.Detector` (a ``fusion``
head; saved and loaded as any bundle), calibrated and thresholded on the same validation rows
as every detector.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from clipdetect.features.manifest import feature_parts
from clipdetect.models.detector import Detector
from clipdetect.models.heads import FusionHead, HeadConfig
from clipdetect.models.train import TrainConfig
from clipdetect.models.trainer import TrainResult

logger = logging.getLogger(__name__)

__all__ = ["FUSION_METHODS", "fuse_detectors", "fused_feature_set"]

FUSION_METHODS = ("auto", "mean", "stack")


def fused_feature_set(feature_sets: Sequence[str]) -> str:
    """The union of the members' parts, in the canonical order image, text, layers."""
    wanted = {p for fs in feature_sets for p in feature_parts(fs)}
    return "+".join(p for p in ("image", "text", "layers") if p in wanted)


def _columns(fused: str, member: str, widths: Dict[str, int]) -> List[List[int]]:
    starts, pos = {}, 0
    for part in feature_parts(fused):
        starts[part], pos = pos, pos + widths[part]
    return [[starts[p], starts[p] + widths[p]] for p in feature_parts(member)]


def _cv_auc(Z: np.ndarray, y: np.ndarray, method: str, seed: int = 0) -> float:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    folds = max(2, min(5, int(min(np.bincount(y, minlength=2)))))
    scores = np.empty(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(Z, y):
        w, b = _combiner(Z[tr], y[tr], method)
        scores[te] = Z[te] @ w + b
    return float(roc_auc_score(y, scores))


def _combiner(Z: np.ndarray, y: np.ndarray, method: str) -> Tuple[np.ndarray, float]:
    if method == "mean":
        mu, sd = Z.mean(0), Z.std(0) + 1e-12
        k = Z.shape[1]
        return 1.0 / (k * sd), float(-(mu / (k * sd)).sum())
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0, max_iter=5000).fit(Z, y)  # a few well-conditioned inputs: mild L2
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def fuse_detectors(detectors: Sequence[Any], cache, val_rows: np.ndarray, *, method: str = "auto",
                   seed: int = 0):
    """One detector combining ``detectors`` (same backbone, trained on ``cache``'s feature sets),
    the combination chosen on ``val_rows`` of ``cache`` (see the module docstring)."""
    if method not in FUSION_METHODS:
        raise ValueError(f"fusion method {method!r} is not one of {FUSION_METHODS}")
    if len(detectors) < 2:
        raise ValueError(f"fusion needs at least 2 detectors, got {len(detectors)}")
    for d in detectors:
        d.check_backbone(cache.backbone)
    val_rows = np.asarray(val_rows, dtype=np.int64)
    y = cache.labels(val_rows)
    if not 0 < y.sum() < len(y) or min(np.bincount(y, minlength=2)) < 2:
        raise ValueError(f"fusion is chosen on validation rows, which need >= 2 of each class; got "
                         f"{int((y == 0).sum())} real and {int(y.sum())} fake")
    Z = np.stack([d.logits(d.features(cache, val_rows)) for d in detectors], 1).astype(np.float64)
    cv = {m: _cv_auc(Z, y, m, seed) for m in ("mean", "stack")} if method == "auto" else {}
    chosen = max(cv, key=cv.get) if method == "auto" else method
    w, b = _combiner(Z, y, chosen)
    fused = fused_feature_set([d.feature_set for d in detectors])
    widths = {p: cache.feature_dim(p) for p in feature_parts(fused)}
    members = [{"head": dataclasses.asdict(d.head_config), "columns": _columns(fused, d.feature_set, widths)}
               for d in detectors]
    config = HeadConfig(kind="fusion", in_dim=sum(widths.values()), members=members)
    head = FusionHead(config)
    for member, d in zip(head.members, detectors):
        member.load_state_dict(d.head.state_dict())
    head.weights.copy_(torch.from_numpy(w.astype(np.float32)))
    head.bias.fill_(b)
    head.eval()
    result = TrainResult(head=head, head_config=config, history=[], best_epoch=0, epochs_run=0,
                         stopped_early=False, steps=0, val_logits=(Z @ w + b).astype(np.float32))
    extra = {"fusion": {"method": chosen, "cv_auc": cv, "weights": w.tolist(), "bias": b,
                        "members": [{"feature_set": d.feature_set, "head": d.head_config.kind,
                                     "val_auc": (d.metrics.get("val") or {}).get("auc")} for d in detectors]},
             "cache": str(cache.root), "splits": {"val": int(len(val_rows))}}
    logger.info("fused %d detectors (%s) by %s on %d validation rows", len(detectors), fused, chosen, len(val_rows))
    return Detector.from_result(result, feature_set=fused, backbone=cache.backbone,
                                config=TrainConfig.from_dict(detectors[0].train_config), y_val=y, extra=extra)
