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

Scoring: :meth:`Detector.logits` (the head's raw output), :meth:`Detector.probability`
(calibrated P(fake)) and :meth:`Detector.predict` (``probability > threshold``). A detector is
never changed in place: :meth:`Detector.replace`, :meth:`Detector.with_calibration` and
:meth:`Detector.with_temperature` return new ones.

Training (:mod:`clipdetect.models.fitting`): ``Detector.fit(X, y, X_val=..., y_val=...,
config=TrainConfig(...))`` on embedding arrays, ``Detector.fit_cache(cache, ...)`` on a feature
cache with the train/val split of :mod:`clipdetect.features.splits`, ``Detector.fit_rows``
on explicit rows of a cache (the protocols' refits).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from clipdetect.features.identity import identities_match
from clipdetect.models import fitting
from clipdetect.models.bundle import DetectorError, bundle_json, read_bundle, save_bundle
from clipdetect.models.heads import HeadConfig
from clipdetect.models.calibration import Calibration
from clipdetect.models.pretrained import resolve_detector_path

logger = logging.getLogger(__name__)

__all__ = ["Detector", "fit_detector", "load_detector", "SCORE_BLOCK"]

#: rows per forward pass when scoring; a shorter last block is padded, so every row goes through
#: the same matrix shapes and its score does not depend on how many rows are scored with it
SCORE_BLOCK = 256


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
        Platt scaling with an offset)."""
        cal = self.calibration
        if cal.method == "platt":
            return 1.0 / cal.scale if cal.offset == 0 else None
        return cal.temperature if cal.method == "temperature" else 1.0

    @property
    def logit_threshold(self) -> float:
        """:attr:`threshold` on the raw logit scale (``label = logit > logit_threshold``)."""
        return self.calibration.logit_of(self.threshold)

    @property
    def in_dim(self) -> int:
        return int(self.head_config.in_dim)

    # ---- scoring -------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, X: np.ndarray, *, batch_size: int = SCORE_BLOCK) -> np.ndarray:
        """The head's raw logits [N] (eval mode, in padded blocks of ``batch_size`` rows; no
        calibration). Non-finite features or logits raise :class:`DetectorError`: a NaN score
        would otherwise read as "real"."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.in_dim:
            raise DetectorError(f"features of shape {X.shape} do not fit this detector, which expects "
                                f"[N, {self.in_dim}] {self.feature_set!r} features")
        self.head.eval()
        device = next(self.head.parameters()).device
        out = np.empty(len(X), dtype=np.float32)
        block = np.zeros((batch_size, X.shape[1]), dtype=np.float32)
        for i in range(0, len(X), batch_size):
            n = min(batch_size, len(X) - i)
            block[:n] = X[i:i + n]
            block[n:] = 0.0
            out[i:i + n] = self.head(torch.from_numpy(block).to(device)).float().cpu().numpy()[:n]
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            cause = ("the features hold NaN/inf" if not np.isfinite(X[bad[:100]]).all() else
                     "the head overflows on them (its weights are damaged or extreme)")
            raise DetectorError(f"the detector gives no finite score for {bad.size} of {len(X)} rows (first: row "
                                f"{bad[0]}): {cause}; refusing to score")
        return out

    def probability(self, X: np.ndarray) -> np.ndarray:
        """P(fake) [N]: the calibrated probability (:attr:`calibration`) of the logits. For logits
        already computed, ``detector.calibration.probability(logits)``."""
        return self.calibration.probability(self.logits(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels [N] (1 = fake): fake probability above :attr:`threshold`."""
        return (self.probability(X) > self.threshold).astype(np.int64)

    def replace(self, **changes: Any) -> "Detector":
        """A new detector with ``changes`` (constructor arguments) applied; ``temperature=T``
        replaces the calibration. The head module is shared."""
        fields = {k: getattr(self, k) for k in ("head", "head_config", "feature_set", "backbone", "train_config",
                                                "metrics", "threshold", "calibration", "threshold_target", "extra")}
        if "temperature" in changes:
            fields.pop("calibration")
        return Detector(**{**fields, **changes})

    def with_calibration(self, calibration: Calibration) -> "Detector":
        """A new detector with ``calibration``, its threshold moved so that :meth:`predict` is unchanged."""
        logit = self.calibration.logit_of(float(np.clip(self.threshold, 1e-12, 1 - 1e-12)))
        return self.replace(calibration=calibration, threshold=float(calibration.probability(logit)))

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
        from clipdetect.features.backbones import Backbone, BackboneError
        from clipdetect.models.predict import resolve_backbone, score_images

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

    # ---- training (:mod:`clipdetect.models.fitting`) -----------------------------------------
    @classmethod
    def fit(cls, X, y, **kwargs) -> "Detector":
        """A new detector trained on embeddings ``X`` [N, D] with labels ``y`` (1 = fake); see
        :func:`clipdetect.models.fitting.fit_arrays` for the keyword arguments."""
        return fitting.fit_arrays(cls, X, y, **kwargs)

    @classmethod
    def fit_cache(cls, cache, **kwargs) -> "Detector":
        """A new detector trained on a feature cache (or its path); see
        :func:`clipdetect.models.fitting.fit_cache`."""
        return fitting.fit_cache(cls, cache, **kwargs)

    @classmethod
    def fit_rows(cls, cache, train_rows, val_rows, **kwargs) -> "Detector":
        """A new detector trained on explicit rows of ``cache``; see :func:`clipdetect.models.fitting.fit_rows`."""
        return fitting.fit_rows(cls, cache, train_rows, val_rows, **kwargs)

    @classmethod
    def from_result(cls, result, **kwargs) -> "Detector":
        """A new detector from a training result (calibration and threshold fitted on its
        validation logits); see :func:`clipdetect.models.fitting.from_result`."""
        return fitting.from_result(cls, result, **kwargs)

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
        return cls(**read_bundle(resolve_detector_path(path), device=device))


def load_detector(path: str | os.PathLike, *, device: str = "cpu") -> Detector:
    """``Detector.load(path)``: a saved bundle (plain or compressed head)."""
    return Detector.load(path, device=device)


def fit_detector(X, y, **kwargs) -> Detector:
    """``Detector.fit(X, y, **kwargs)``: train a new detector on embedding arrays."""
    return Detector.fit(X, y, **kwargs)
