"""A scikit-learn classifier that trains the detector head on embedding arrays.

:class:`DetectorClassifier` takes the training hyperparameters in ``__init__``: one parameter
per :class:`~clipdetect.models.train.TrainConfig` field (``seed`` is ``random_state``), each
``None`` meaning "the TrainConfig default", so fields and defaults changed there flow through.
It learns in :meth:`~DetectorClassifier.fit` and exposes the trained
:class:`~clipdetect.models.detector.Detector` bundle as ``detector_``. It works in
``cross_val_score``, ``GridSearchCV``, ``Pipeline`` and scikit-learn's threshold tuners
(``TunedThresholdClassifierCV``, ``FixedThresholdClassifier``); ``clone`` and pickling of an
unfitted estimator copy only its parameters. Persistence is the bundle's safetensors + JSON
(:meth:`~DetectorClassifier.save` / :meth:`~DetectorClassifier.load`), never pickle.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import numbers
import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from clipdetect.core.metrics import binary_metrics
from clipdetect.core.numerics import logit
from clipdetect.models.detector import Detector
from clipdetect.models.train import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["DetectorClassifier", "holdout_split", "TRAIN_PARAMS"]

#: hyperparameters passed to TrainConfig under the same name: all of its fields but ``seed``
#: (the estimator's ``random_state``)
TRAIN_PARAMS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed")
#: the estimator's own parameters and their defaults (every TrainConfig one defaults to None)
OWN_PARAMS = {"random_state": None, "threshold": 0.5}
#: ``threshold="validation"``: the threshold ``clipdetect train`` chooses on the held-out rows
VALIDATION = "validation"


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

    Parameters: every :class:`~clipdetect.models.train.TrainConfig` field (``head``, ``loss``,
    ``gamma``, ``sam``, ``lr``, ``epochs``, ``width``, ``depth``, ``val_fraction``,
    ``calibration``, ``threshold_fpr``, ``device`` ...; :data:`TRAIN_PARAMS`); ``None`` takes
    TrainConfig's default (the paper's recipe). ``val_fraction`` of each class is held out of
    ``fit``'s data to select the best epoch and fit the calibration. ``random_state`` (an int)
    seeds the head, the batches and the hold-out (``None``: TrainConfig's seed, 0, so fits are
    repeatable). ``threshold`` on P(``classes_[1]``): 0.5 (the default, so that ``predict`` is
    ``classes_[argmax(predict_proba)]``), another probability, or ``"validation"``: the one
    ``clipdetect train`` picks on the held-out rows (at most ``threshold_fpr`` of the held-out
    ``classes_[0]`` rows above it; 0.5 without held-out rows). scikit-learn's
    ``TunedThresholdClassifierCV`` tunes it by cross-validation.

    Labels may be any two values; ``classes_[1]`` plays "fake" (label 1 of the bundle).
    Fitted attributes: ``classes_``, ``n_features_in_``, ``head_`` (the torch module),
    ``threshold_`` (on P(classes_[1])), ``detector_`` (the
    :class:`~clipdetect.models.detector.Detector` bundle, with that threshold).
    """

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self._get_param_names()))
        if unknown:
            raise TypeError(f"DetectorClassifier got unexpected parameter(s) {unknown}")
        for name in self._get_param_names():
            setattr(self, name, params.get(name, OWN_PARAMS.get(name)))

    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=OWN_PARAMS.get(n))
           for n in sorted(TRAIN_PARAMS + tuple(OWN_PARAMS))])

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
        fixed = self.threshold != VALIDATION
        if fixed and not (isinstance(self.threshold, numbers.Real) and 0.0 <= float(self.threshold) <= 1.0):
            raise ValueError(f"threshold={self.threshold!r} must be a probability in [0, 1] or {VALIDATION!r}")
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
        if fixed:
            t = float(self.threshold)
            val = {"val": binary_metrics(y01[va], det.probability(X[va]), threshold=t)} if held else {}
            det = det.replace(threshold=t, metrics={**det.metrics, **val},
                              threshold_target={"metric": "fixed", "value": t, "reason": "estimator parameter"})
        info = {"classes": classes.tolist(), "params": self.get_params(deep=False)}
        if hasattr(self, "feature_names_in_"):
            info["feature_names_in"] = [str(n) for n in self.feature_names_in_]
        self.classes_ = classes
        self._set_fitted(det.replace(extra={**det.extra, "estimator": info}))
        return self

    def _set_fitted(self, det: Detector) -> None:
        self.detector_, self.head_, self.threshold_ = det, det.head, float(det.threshold)

    def _checked(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=np.float32)

    def predict_proba(self, X) -> np.ndarray:
        """[N, 2] probabilities of ``classes_[0]`` and ``classes_[1]`` (calibrated)."""
        X = self._checked(X)
        p = self.detector_.probability(X)
        return np.stack([1.0 - p, p], axis=1)

    def decision_function(self, X) -> np.ndarray:
        """[N] margins ``logit(P(classes_[1])) − logit(threshold_)`` on the calibrated scale: > 0
        exactly where :meth:`predict` answers ``classes_[1]`` (with the default threshold 0.5: the
        log-odds of ``classes_[1]``). Same ranking as ``predict_proba[:, 1]``; the head's raw
        logits are ``detector_.logits(X)``."""
        X = self._checked(X)
        z = self.detector_.calibration.calibrated_logit(self.detector_.logits(X))
        return z - logit(self.threshold_)

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
        else:  # a bundle of `clipdetect train`: its threshold was chosen on validation rows
            tc = det.train_config or {}
            params = {k: tc[k] for k in TRAIN_PARAMS if tc.get(k) is not None}
            params.update(random_state=tc.get("seed"), threshold=VALIDATION)
        if params.get("threshold", VALIDATION) is None:  # recorded before thresholds defaulted to 0.5
            params["threshold"] = VALIDATION
        est = cls(**params)
        est.classes_ = np.asarray(info.get("classes", [0, 1]))
        est.n_features_in_ = det.in_dim
        if info.get("feature_names_in"):
            est.feature_names_in_ = np.asarray(info["feature_names_in"], dtype=object)
        est._set_fitted(det)
        return est
