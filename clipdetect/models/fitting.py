"""Every fit ends here: a training result becomes a :class:`~clipdetect.models.detector.Detector`.

:func:`from_result` fits the calibration and chooses the threshold on the validation logits of
the selected epoch (:func:`~clipdetect.models.thresholds.fit_on_validation`), the same for a
head trained on embeddings, a distilled student's head, a fused detector and a logistic probe.
:func:`fit_arrays`, :func:`fit_cache` and :func:`fit_rows` train a head (:func:`~clipdetect.models.train.train`)
on arrays, on a feature cache's train/val split and on explicit rows of a cache.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from clipdetect.features.splits import SplitSpec, view_rows
from clipdetect.models.calibration import Calibration
from clipdetect.models.thresholds import fit_on_validation
from clipdetect.models.sources import ArraySource, CacheSource
from clipdetect.models.train import TrainConfig, train
from clipdetect.models.trainer import TrainResult

logger = logging.getLogger(__name__)

__all__ = ["from_result", "fit_arrays", "fit_cache", "fit_rows"]


def from_result(cls, result: TrainResult, *, feature_set: str, backbone: dict, config: Any,
                y_val: Optional[np.ndarray], extra: Optional[dict] = None):
    """A detector of class ``cls`` from a training result: with validation logits, the calibration is fitted
    on them and the threshold chosen there (``config.calibration_options()``: method, threshold
    rule and target FPR); without them, no calibration and a threshold of 0.5, said in
    ``threshold_target``. ``config`` (a :class:`TrainConfig` or a distillation config) is
    recorded as the bundle's ``train_config``."""
    metrics: Dict[str, Any] = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                               "stopped_early": result.stopped_early, "steps": result.steps,
                               "train_seconds": round(result.seconds, 3), "schedule": result.schedule}
    if result.val_logits is not None and y_val is not None and len(y_val):
        calibration, threshold, target, val_metrics = fit_on_validation(
            result.val_logits, y_val, **config.calibration_options())
        metrics.update(val_metrics)
    else:
        calibration, threshold = Calibration(), 0.5
        target = {"metric": "fixed", "value": 0.5, "reason": "no validation rows"}
    return cls(head=result.head, head_config=result.head_config, feature_set=feature_set, backbone=backbone,
               train_config=config.to_dict(), metrics=metrics, threshold=threshold, calibration=calibration,
               threshold_target=target, extra=extra)


def fit_arrays(cls, X, y, *, X_val=None, y_val=None, config: TrainConfig | None = None, feature_set: str = "image",
               backbone: dict | None = None, out_dir=None, progress: bool = False):
    """Train on embeddings ``X`` [N, D] with labels ``y`` (1 = fake); ``X_val``/``y_val`` select
    the epoch and fit the calibration and threshold. ``backbone``: the identity of the backbone
    that made the embeddings (default unknown)."""
    config = config or TrainConfig()
    val = ArraySource(X_val, y_val) if X_val is not None else None
    result = train(ArraySource(X, y), val_data=val, config=config, out_dir=out_dir, progress=progress)
    return from_result(cls, result, feature_set=feature_set, backbone=backbone or {}, config=config,
                       y_val=None if val is None else val.y)


def fit_cache(cls, cache, *, feature_set: str = "image", config: TrainConfig | None = None,
              out: str | os.PathLike | None = None, progress: bool = False,
              checkpoints: str | os.PathLike | None = None, resume: bool = False):
    """Train on a feature cache (a :class:`~clipdetect.features.cache.FeatureCache` or its path).

    Train/val rows come from :func:`clipdetect.features.splits.resolve_all` with the config's
    ``val_fraction``, ``test_fraction`` and ``split_seed`` (test rows are never seen); with
    ``config.split == "all"`` every row trains and nothing is held out. With ``out``, the
    bundle is saved there together with ``train_config.json`` and the per-epoch
    ``train_log.jsonl``. ``checkpoints``/``resume``: see :func:`~clipdetect.models.train.train`.
    """
    from clipdetect.features.cache import FeatureCache

    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    config = config or TrainConfig()
    if config.split == "all":
        tr = view_rows(cache, np.arange(len(cache), dtype=np.int64), config.views)
        va = te = np.array([], dtype=np.int64)
        logger.warning("training on all %d rows of %s: nothing is left for validation or testing (no best-epoch "
                       "selection, no calibration, threshold P(fake) > 0.5); evaluate this detector on "
                       "another cache", len(tr), cache.root)
    else:
        tr, va, te = (view_rows(cache, r, config.views) for r in SplitSpec.of(config).all(cache))
    det = fit_rows(cls, cache, tr, va, feature_set=feature_set, config=config, out=out, progress=progress,
                   test_rows=len(te), checkpoints=checkpoints, resume=resume)
    if out is not None:
        det.save(out)
    return det


def fit_rows(cls, cache, train_rows, val_rows, *, feature_set: str = "image", config: TrainConfig | None = None,
             out: str | os.PathLike | None = None, progress: bool = False, test_rows: Optional[int] = None,
             checkpoints: str | os.PathLike | None = None, resume: bool = False):
    """Train on explicit row subsets of ``cache`` (validation rows pick the epoch and fit the
    calibration and threshold); what :func:`fit_cache` and the protocols' refits run. With
    ``out``, ``train_config.json`` and ``train_log.jsonl`` are written there (not the bundle).
    ``test_rows``: the number of test rows held out, recorded with the splits."""
    config = config or TrainConfig()
    if len(train_rows) == 0:
        raise ValueError(f"cache {str(cache.root)!r} has no training rows")
    val = CacheSource(cache, val_rows, feature_set) if len(val_rows) else None
    result = train(CacheSource(cache, train_rows, feature_set), val_data=val, config=config, out_dir=out,
                   progress=progress, checkpoints=checkpoints, resume=resume)
    splits = {"train": len(train_rows), "val": len(val_rows), **({} if test_rows is None else {"test": test_rows})}
    extra = {"cache": str(Path(cache.root).resolve()), "cache_created": cache.manifest.get("created"),
             "splits": splits}
    return from_result(cls, result, feature_set=feature_set, backbone=cache.backbone, config=config,
                       y_val=None if val is None else val.y, extra=extra)
