"""The detector bundle: a trained head plus everything needed to use it correctly.

A :class:`Detector` knows which embeddings it expects (``feature_set`` and the backbone
identity of the cache it was trained on), its ``calibration`` (logit → P(fake): Platt
scaling fitted on validation rows, a temperature in older bundles, or none; see
:mod:`clipdetect.models.calibration`), its decision ``threshold`` on P(fake) and the
``threshold_target`` it was chosen for (by default an FPR of 5 % on the validation reals;
0.5 without validation data), its validation ``metrics`` and its ``train_config``.

Saved as a directory (:mod:`clipdetect.models.bundle`): ``model.safetensors`` (the head's
tensors) and ``detector.json`` (everything else, plain JSON). Loading reads only those two
files and never unpickles.

Training entry points (the sklearn-style ones take arrays of embeddings):

* ``Detector.fit(X, y, X_val=..., y_val=..., config=TrainConfig(...))`` on the class →
  a new detector; on an instance, ``det.fit(X, y)`` retrains that detector in place with
  its own ``train_config`` (sklearn style) and returns it. :func:`fit_detector` is the
  same as the class form.
* ``Detector.fit_cache(cache, feature_set="image", config=...)`` trains on a feature cache
  with the train/val split of :mod:`clipdetect.features.splits`.
"""
from __future__ import annotations

import functools
import logging
import os
import types
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from clipdetect.features.backbones import identities_match
from clipdetect.models.bundle import DetectorError, bundle_json, read_bundle, save_bundle
from clipdetect.models.heads import HeadConfig
from clipdetect.models.calibration import Calibration, fit_on_validation
from clipdetect.features.splits import SplitSpec, view_rows
from clipdetect.models.train import ArraySource, CacheSource, TrainConfig, TrainResult, train

logger = logging.getLogger(__name__)

__all__ = ["Detector", "fit_detector", "load_detector"]


class _hybridmethod:
    """Bound to the class when called on the class, to the instance when called on one."""

    def __init__(self, func):
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj, cls):
        return types.MethodType(self.func, cls if obj is None else obj)


class Detector:
    """A trained head with its feature set, backbone identity, calibration and threshold.

    ``calibration`` (a :class:`~clipdetect.models.calibration.Calibration`) maps logits to
    P(fake); ``temperature=T`` is the older form of the same (``Calibration.of_temperature(T)``).
    ``threshold_target`` records what the threshold was chosen for (a plain dict).
    """

    def __init__(self, *, head: nn.Module, head_config: HeadConfig, feature_set: str, backbone: dict,
                 train_config: dict | None = None, metrics: dict | None = None,
                 threshold: float = 0.5, temperature: float | None = None,
                 calibration: Calibration | None = None, threshold_target: dict | None = None,
                 extra: dict | None = None):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold!r} is a probability and must lie in [0, 1]")
        if calibration is not None and temperature is not None:
            raise ValueError("give a calibration or a temperature, not both")
        self.head = head.eval()
        self.head_config = head_config
        self.feature_set = feature_set
        self.backbone = dict(backbone or {})
        self.train_config = dict(train_config or {})
        self.metrics = dict(metrics or {})
        self.threshold = float(threshold)
        self.calibration = calibration or Calibration.of_temperature(1.0 if temperature is None else temperature)
        self.threshold_target = dict(threshold_target) if threshold_target else None
        self.extra = dict(extra or {})

    def __repr__(self) -> str:
        return (f"Detector(feature_set={self.feature_set!r}, backbone={self.backbone.get('spec')!r}, "
                f"head={self.head_config.kind}:{self.head_config.in_dim}, threshold={self.threshold:.4g}, "
                f"calibration={self.calibration.to_json()})")

    @property
    def temperature(self) -> float | None:
        """The temperature of a temperature-scaled detector (1.0 when uncalibrated, None for
        Platt scaling with an offset); setting it replaces the calibration by that temperature."""
        cal = self.calibration
        if cal.method == "platt":
            return 1.0 / cal.scale if cal.offset == 0 else None
        return cal.temperature if cal.method == "temperature" else 1.0

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.calibration = Calibration.of_temperature(value)

    @property
    def logit_threshold(self) -> float:
        """:attr:`threshold` on the raw logit scale (``label = logit > logit_threshold``)."""
        return self.calibration.logit_of(self.threshold)

    @property
    def in_dim(self) -> int:
        return int(self.head_config.in_dim)

    # ---- scoring -------------------------------------------------------------------------
    @torch.no_grad()
    def decision_function(self, X: np.ndarray, *, batch_size: int = 8192) -> np.ndarray:
        """Logits [N] (eval mode, batched; temperature not applied). Non-finite features or
        logits raise :class:`DetectorError`: a NaN score would otherwise read as "real"."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.in_dim:
            raise DetectorError(f"features of shape {X.shape} do not fit this detector, which expects "
                                f"[N, {self.in_dim}] {self.feature_set!r} features")
        self.head.eval()
        device = next(self.head.parameters()).device
        out = np.empty(len(X), dtype=np.float32)
        for i in range(0, len(X), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(X[i:i + batch_size], dtype=np.float32)).to(device)
            out[i:i + batch_size] = self.head(xb).float().cpu().numpy()
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            cause = ("the features hold NaN/inf" if not np.isfinite(X[bad[:100]]).all() else
                     "the head overflows on them (its weights are damaged or extreme)")
            raise DetectorError(f"the detector gives no finite score for {bad.size} of {len(X)} rows (first: row "
                                f"{bad[0]}): {cause}; refusing to score")
        return out

    def fake_probability(self, X: np.ndarray) -> np.ndarray:
        """P(fake) [N]: the calibrated probability of the logits (:attr:`calibration`)."""
        return self.probability_of(self.decision_function(X))

    def probability_of(self, logits: np.ndarray) -> np.ndarray:
        """P(fake) of logits already computed by :meth:`decision_function`."""
        return self.calibration.probability(logits)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """[N, 2] probabilities, columns (real, fake), as in scikit-learn."""
        p = self.fake_probability(X)
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels [N] (1 = fake): fake probability above :attr:`threshold`."""
        return (self.fake_probability(X) > self.threshold).astype(np.int64)

    def with_calibration(self, calibration: Calibration) -> "Detector":
        """Set the calibration, moving :attr:`threshold` so that :meth:`predict` is unchanged."""
        t = float(np.clip(self.threshold, 1e-12, 1 - 1e-12))
        logit = self.calibration.logit_of(t)
        self.calibration = calibration
        self.threshold = float(calibration.probability(logit))
        return self

    def with_temperature(self, temperature: float) -> "Detector":
        """:meth:`with_calibration` with a temperature."""
        return self.with_calibration(Calibration.of_temperature(temperature))

    def score_images(self, images, *, backbone=None, batch_size: int = 64, captions=None, runtime: str = "torch",
                     precision: str = "fp32", max_pixels: Optional[int] = None, max_aspect: Optional[float] = None):
        """Score images in memory — PIL images, file paths or encoded bytes — writing no file.

        The images are decoded, preprocessed and encoded as ``clipdetect predict`` does it,
        in this process, so the scores are the same. ``backbone`` is the backbone that made
        the training features: ``None`` builds it from the spec this detector recorded, a
        spec string or a :class:`~clipdetect.features.backbones.Backbone` object (pass one
        to reuse it across calls); one of another identity is refused. ``captions`` (one per
        image) are needed by detectors on text features. A single image may be passed alone.
        ``runtime`` (``onnx``, ``openvino``) and ``precision`` (``int8`` on openvino) run the image
        tower of a backbone built here on that CPU runtime (exported once, then cached; see
        :mod:`clipdetect.features.runtime`); a Backbone object passed in keeps its own.

        Returns a pandas DataFrame, one row per image in input order: ``logit`` (the head's raw
        output), ``probability`` (calibrated P(fake)), ``threshold`` (on P(fake)), ``label``
        (1 = fake: ``probability > threshold``) and ``error``.
        An image that cannot be decoded does not raise: its row has NaN ``logit`` and
        ``probability``, a missing ``label`` and the reason in ``error`` (e.g. "corrupt: ...").
        ``max_pixels`` / ``max_aspect``: the decoder's limits (``--max-pixels`` / ``--max-aspect``
        of ``predict``; None: its defaults), refused images get ``decompression_bomb`` /
        ``extreme_aspect`` errors.
        """
        from clipdetect.data.imaging import IMAGE_REF_TYPES
        from clipdetect.features.backbones import Backbone, BackboneError
        from clipdetect.models.predict import resolve_backbone, score_images

        if isinstance(images, IMAGE_REF_TYPES):
            images = [images]
        if isinstance(backbone, Backbone):
            if (runtime, precision) != ("torch", "fp32"):
                raise ValueError("runtime/precision apply to a backbone built here; attach them to your Backbone "
                                 "with create_backbone(spec, runtime=..., precision=...)")
            if self.backbone and not identities_match(self.backbone, backbone.identity):
                raise BackboneError(f"backbone {backbone.spec!r} differs from the detector's "
                                    f"{self.backbone.get('spec')!r}; its embeddings mean nothing to this "
                                    "head")
        elif backbone is None and not self.backbone.get("spec"):
            raise BackboneError("this detector records no backbone (it was trained on arrays); pass "
                                "score_images(..., backbone='ARCH:WEIGHTS') with the one that made its "
                                "features")
        else:
            backbone = resolve_backbone(self, backbone, runtime=runtime, precision=precision)
        limits = {k: v for k, v in (("max_pixels", max_pixels), ("max_aspect", max_aspect)) if v is not None}
        return score_images(self, images, backbone=backbone, batch_size=batch_size, captions=captions, **limits)

    # ---- cache access ----------------------------------------------------------------------
    def check_backbone(self, identity: dict) -> None:
        """Raise :class:`DetectorError` unless ``identity`` matches the backbone this detector was trained on."""
        if not self.backbone:
            logger.warning("detector records no backbone identity (trained on arrays); cannot check the cache")
            return
        if not identities_match(self.backbone, identity):
            raise DetectorError(
                f"this detector was trained on embeddings of backbone {self.backbone.get('spec')!r} "
                f"({self.backbone.get('arch')}, weights {self.backbone.get('weights')}), but the cache holds "
                f"{identity.get('spec')!r} ({identity.get('arch')}, weights {identity.get('weights')}); "
                "extract features with the detector's backbone")

    def features(self, cache, rows=None) -> np.ndarray:
        """This detector's input features for ``rows`` of ``cache`` (after a backbone check)."""
        self.check_backbone(cache.backbone)
        return cache.features(self.feature_set, rows)

    # ---- training ----------------------------------------------------------------------------
    @classmethod
    def from_result(cls, result: TrainResult, *, feature_set: str, backbone: dict, config: TrainConfig,
                    y_val: Optional[np.ndarray], extra: Optional[dict] = None) -> "Detector":
        """A detector from a training result: with validation logits, the calibration is fitted
        on them and the threshold chosen there (:func:`~clipdetect.models.calibration.fit_on_validation`
        with the config's ``calibration``, ``threshold`` rule and ``threshold_fpr``); without
        them, no calibration and a threshold of 0.5, said in ``threshold_target``."""
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

    @_hybridmethod
    def fit(self_or_cls, X, y, *, X_val=None, y_val=None, config: TrainConfig | None = None,
            feature_set: str | None = None, backbone: dict | None = None, out_dir=None,
            progress: bool = False) -> "Detector":
        """Train on embeddings ``X`` [N, D] with labels ``y`` (1 = fake).

        On the class: returns a new detector (``feature_set`` default "image", ``backbone``
        default unknown). On an instance: retrains it in place with its own train config,
        feature set and backbone unless given, and returns it.
        """
        inst = self_or_cls if isinstance(self_or_cls, Detector) else None
        if config is None:
            config = TrainConfig.from_dict(inst.train_config) if inst and inst.train_config else TrainConfig()
        feature_set = feature_set or (inst.feature_set if inst else "image")
        backbone = backbone if backbone is not None else (inst.backbone if inst else {})
        val = ArraySource(X_val, y_val) if X_val is not None else None
        result = train(ArraySource(X, y), val_data=val, config=config, out_dir=out_dir, progress=progress)
        new = Detector.from_result(result, feature_set=feature_set, backbone=backbone, config=config,
                                   y_val=None if val is None else val.y, extra=inst.extra if inst else None)
        if inst is None:
            return new
        inst.__dict__.update(new.__dict__)
        return inst

    @classmethod
    def fit_cache(cls, cache, *, feature_set: str = "image", config: TrainConfig | None = None,
                  out: str | os.PathLike | None = None, progress: bool = False) -> "Detector":
        """Train on a feature cache (a :class:`~clipdetect.features.cache.FeatureCache` or its path).

        Train/val rows come from :func:`clipdetect.features.splits.resolve_all` with the config's
        ``val_fraction``, ``test_fraction`` and ``split_seed`` (test rows are never seen); with
        ``config.split == "all"`` every row trains and nothing is held out.
        With ``out``, the bundle is saved there together with ``train_config.json`` and
        the per-epoch ``train_log.jsonl``.
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
        det = cls.fit_rows(cache, tr, va, feature_set=feature_set, config=config, out=out, progress=progress)
        det.extra["splits"]["test"] = len(te)
        if out is not None:
            det.save(out)
        return det

    @classmethod
    def fit_rows(cls, cache, train_rows, val_rows, *, feature_set: str = "image", config: TrainConfig | None = None,
                 out: str | os.PathLike | None = None, progress: bool = False) -> "Detector":
        """Train on explicit row subsets of ``cache`` (validation rows pick the epoch and fit the
        calibration and threshold); what :meth:`fit_cache` and the protocols' refits run. With
        ``out``, ``train_config.json`` and ``train_log.jsonl`` are written there (not the bundle)."""
        config = config or TrainConfig()
        if len(train_rows) == 0:
            raise ValueError(f"cache {str(cache.root)!r} has no training rows")
        val = CacheSource(cache, val_rows, feature_set) if len(val_rows) else None
        result = train(CacheSource(cache, train_rows, feature_set), val_data=val, config=config, out_dir=out,
                       progress=progress)
        extra = {"cache": str(Path(cache.root).resolve()), "cache_created": cache.manifest.get("created"),
                 "splits": {"train": len(train_rows), "val": len(val_rows)}}
        return cls.from_result(result, feature_set=feature_set, backbone=cache.backbone, config=config,
                               y_val=None if val is None else val.y, extra=extra)

    # ---- persistence (:mod:`clipdetect.models.bundle`) -------------------------------------
    def to_json(self) -> Dict[str, Any]:
        return bundle_json(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``detector.json`` into directory ``path``."""
        return save_bundle(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "cpu") -> "Detector":
        """Load a bundle written by :meth:`save` (safetensors + JSON only; nothing is unpickled), or a
        detector shipped with the package by name (:mod:`clipdetect.models.pretrained`, e.g.
        ``"general-b16"``)."""
        from clipdetect.models.pretrained import resolve_detector_path

        return cls(**read_bundle(resolve_detector_path(path), device=device))


def load_detector(path: str | os.PathLike, *, device: str = "cpu") -> Detector:
    """``Detector.load(path)``: a saved bundle (plain or compressed head)."""
    return Detector.load(path, device=device)


def fit_detector(X, y, **kwargs) -> Detector:
    """``Detector.fit(X, y, **kwargs)``: train a new detector on embedding arrays."""
    return Detector.fit(X, y, **kwargs)
