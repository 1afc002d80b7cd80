"""A scikit-learn classifier that trains the detector head on embedding arrays.

:class:`DetectorClassifier` takes the training hyperparameters in ``__init__`` (each
``None`` means "the :class:`~clipdetect.models.train.TrainConfig` default", so defaults
changed there flow through), learns in :meth:`~DetectorClassifier.fit` and exposes the
trained :class:`~clipdetect.models.detector.Detector` bundle as ``detector_``. It works in
``cross_val_score``, ``GridSearchCV`` and ``Pipeline``; ``clone`` and pickling of an
unfitted estimator copy only its parameters. Persistence is the bundle's safetensors +
JSON (:meth:`~DetectorClassifier.save` / :meth:`~DetectorClassifier.load`), never pickle.
"""
from __future__ import annotations

import logging
import math
import numbers
import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from clipdetect.core.metrics import binary_metrics
from clipdetect.models.detector import Detector
from clipdetect.models.train import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["DetectorClassifier", "holdout_split"]

#: hyperparameters passed to TrainConfig under the same name (``random_state`` becomes ``seed``)
TRAIN_PARAMS = ("head", "loss", "gamma", "alpha", "margin", "p", "sam", "rho", "lr", "weight_decay",
                "batch_size", "epochs", "max_steps", "patience", "width", "depth", "dropout", "val_fraction",
                "threshold_fpr", "device")


def holdout_split(y: np.ndarray, fraction: float, seed: int) -> tuple:
    """(train, val) indices: ``fraction`` of each class (rounded) held out, chosen under ``seed``.

    When a class would get no validation row or keep no training row, nothing is held out.
    """
    everything, none = np.arange(len(y)), np.array([], dtype=np.int64)
    if not fraction or fraction <= 0:
        return everything, none
    rng = np.random.default_rng(seed)
    parts = []
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = int(round(fraction * len(idx)))
        if n < 1 or n >= len(idx):
            logger.info("too few samples of class %d (%d) for a %.2f validation share: no validation",
                        c, len(idx), fraction)
            return everything, none
        parts.append(idx[:n])
    val = np.sort(np.concatenate(parts))
    return np.setdiff1d(everything, val), val


class DetectorClassifier(ClassifierMixin, BaseEstimator):
    """The robust CLIP detector as a binary scikit-learn classifier on embeddings ``X`` [N, D].

    Parameters mirror :class:`~clipdetect.models.train.TrainConfig` (``head``, ``loss``,
    ``gamma``, ``alpha``, ``margin``, ``p``, ``sam``, ``rho``, ``lr``, ``weight_decay``,
    ``batch_size``, ``epochs``, ``max_steps``, ``patience``, ``width``, ``depth``,
    ``dropout``, ``threshold_fpr``, ``device``); ``None`` takes TrainConfig's default (the paper's recipe).
    ``val_fraction`` of each class is held out of ``fit``'s data to select the best epoch
    and the threshold. ``random_state`` (an int) seeds the head, the batches and the
    hold-out (``None``: TrainConfig's seed, 0, so fits are repeatable).
    ``threshold``: ``None`` picks it on the held-out rows as ``clipdetect train`` does (at most
    ``threshold_fpr`` of the held-out ``classes_[0]`` rows above it; 0.5 without held-out rows);
    a float in [0, 1] fixes it.

    Labels may be any two values; ``classes_[1]`` plays "fake" (label 1 of the bundle).
    Fitted attributes: ``classes_``, ``n_features_in_``, ``head_`` (the torch module),
    ``threshold_`` (on P(classes_[1])), ``detector_`` (the
    :class:`~clipdetect.models.detector.Detector` bundle).
    """

    def __init__(self, *, head=None, loss=None, gamma=None, alpha=None, margin=None, p=None, sam=None,
                 rho=None, lr=None, weight_decay=None, batch_size=None, epochs=None, max_steps=None,
                 patience=None, width=None, depth=None, dropout=None, val_fraction=None, threshold=None,
                 threshold_fpr=None, random_state=None, device=None):
        self.head = head
        self.loss = loss
        self.gamma = gamma
        self.alpha = alpha
        self.margin = margin
        self.p = p
        self.sam = sam
        self.rho = rho
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.max_steps = max_steps
        self.patience = patience
        self.width = width
        self.depth = depth
        self.dropout = dropout
        self.val_fraction = val_fraction
        self.threshold = threshold
        self.threshold_fpr = threshold_fpr
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` that :meth:`fit` uses (``None`` parameters left at its defaults)."""
        given = {k: getattr(self, k) for k in TRAIN_PARAMS if getattr(self, k) is not None}
        rs = self.random_state
        if rs is not None:
            given["seed"] = int(rs) if isinstance(rs, numbers.Integral) else int(
                check_random_state(rs).randint(np.iinfo(np.int32).max))
        return TrainConfig(**given)

    def fit(self, X, y, *, feature_set: str = "image", backbone: dict | None = None) -> "DetectorClassifier":
        """Train on ``X`` [N, D] and two-class labels ``y``; returns self.

        ``feature_set`` and ``backbone`` (a cache's ``backbone`` identity) are recorded in
        ``detector_`` so that a saved bundle can be used by ``clipdetect predict``.
        """
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold={self.threshold!r} must be None or a probability in [0, 1]")
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        classes, y01 = np.unique(y, return_inverse=True)
        if len(classes) > 2:
            raise ValueError(f"Only binary classification is supported. y has {len(classes)} classes "
                             f"({classes[:5].tolist()} ...); DetectorClassifier needs exactly two")
        if len(classes) < 2:
            raise ValueError(f"DetectorClassifier needs two classes in y, got one class ({classes.tolist()})")
        config = self.train_config()
        tr, va = holdout_split(y01, config.val_fraction, config.seed)
        held = len(va) > 0
        det = Detector.fit(X[tr], y01[tr], X_val=X[va] if held else None, y_val=y01[va] if held else None,
                           config=config, feature_set=feature_set, backbone=backbone)
        if self.threshold is not None:
            det.threshold = float(self.threshold)
            if held:
                prob = det.fake_probability(X[va])
                det.metrics["val"] = binary_metrics(y01[va], prob, threshold=det.threshold)
        det.extra["estimator"] = {"classes": classes.tolist(), "params": self.get_params(deep=False)}
        if hasattr(self, "feature_names_in_"):
            det.extra["estimator"]["feature_names_in"] = [str(n) for n in self.feature_names_in_]
        self.classes_ = classes
        self._set_fitted(det)
        return self

    def _set_fitted(self, det: Detector) -> None:
        self.detector_, self.head_, self.threshold_ = det, det.head, float(det.threshold)

    def _checked(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=np.float32)

    def predict_proba(self, X) -> np.ndarray:
        """[N, 2] probabilities of ``classes_[0]`` and ``classes_[1]`` (calibrated)."""
        X = self._checked(X)
        return self.detector_.predict_proba(X)

    def decision_function(self, X) -> np.ndarray:
        """[N] margins ``logit(P(classes_[1])) − logit(threshold_)`` on the calibrated scale: > 0
        exactly where :meth:`predict` answers ``classes_[1]``. Same ranking as
        ``predict_proba[:, 1]``; the raw logits are ``detector_.decision_function(X)``."""
        X = self._checked(X)
        z = self.detector_.calibration.calibrated_logit(self.detector_.decision_function(X))
        t = self.threshold_
        offset = -math.inf if t <= 0.0 else math.inf if t >= 1.0 else math.log(t / (1.0 - t))
        return z - offset

    def predict(self, X) -> np.ndarray:
        """``classes_[1]`` where P(classes_[1]) exceeds ``threshold_``, else ``classes_[0]``."""
        fake = self.decision_function(X) > 0
        return self.classes_[fake.astype(np.int64)]

    # ---- persistence (safetensors + JSON via the Detector bundle) ----------------------------
    def save(self, path: str | os.PathLike):
        """Write the fitted ``detector_`` bundle (``model.safetensors`` + ``detector.json``) to ``path``."""
        check_is_fitted(self)
        return self.detector_.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "cpu") -> "DetectorClassifier":
        """A fitted estimator from a bundle directory (written by :meth:`save` or ``clipdetect train``)."""
        return cls.from_detector(Detector.load(path, device=device))

    @classmethod
    def from_detector(cls, det: Detector) -> "DetectorClassifier":
        """Wrap a trained bundle; parameters come from what it recorded (labels 0/1 unless recorded)."""
        info = det.extra.get("estimator") or {}
        names = cls._get_param_names()
        if "params" in info:
            params = {k: v for k, v in info["params"].items() if k in names}
        else:
            tc = det.train_config or {}
            params = {k: tc[k] for k in TRAIN_PARAMS if tc.get(k) is not None}
            if tc.get("seed") is not None:
                params["random_state"] = tc["seed"]
        est = cls(**params)
        est.classes_ = np.asarray(info.get("classes", [0, 1]))
        est.n_features_in_ = det.in_dim
        if info.get("feature_names_in"):
            est.feature_names_in_ = np.asarray(info["feature_names_in"], dtype=object)
        est._set_fitted(det)
        return est
