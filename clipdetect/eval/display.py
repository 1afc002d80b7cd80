"""ROC curves of a detector as a scikit-learn-style Display object.

:class:`DetectorRocDisplay` follows ``sklearn.metrics.RocCurveDisplay``: ``from_detector``,
``from_estimator`` and ``from_predictions`` compute and draw; ``plot(ax=None)`` draws
again and sets ``ax_`` and ``figure_``. The drawing is :func:`clipdetect.eval.plots.plot_roc`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from sklearn.metrics import roc_auc_score, roc_curve

from clipdetect.eval.figures import roc_curves
from clipdetect.eval.selection import split_params, split_rows
from clipdetect.eval.plots import Curves, plot_roc
from clipdetect.features.cache import FeatureCache

__all__ = ["DetectorRocDisplay"]


class DetectorRocDisplay:
    """ROC curves of a detector in scikit-learn's Display pattern (like ``RocCurveDisplay``).

    Build it with :meth:`from_detector` (a detector on a cache split: the overall curve and
    one per generator, each generator's fakes against all reals), :meth:`from_estimator`
    (a fitted classifier on ``X, y``) or :meth:`from_predictions` (labels and scores); each
    draws at once. :meth:`plot` draws (again) onto ``ax`` or a new figure, with a log-scaled
    FPR axis if asked, and sets ``ax_`` and ``figure_``. ``curves`` maps a curve name to
    ``(y_true, scores)``; ``fpr``, ``tpr`` and ``roc_auc`` are per curve name.
    """

    def __init__(self, *, curves: Curves, name: str | None = None, threshold: float | None = None):
        self.curves = {str(k): (np.asarray(y).ravel(), np.asarray(sc, dtype=float).ravel())
                       for k, (y, sc) in curves.items()}
        self.name = name
        self.threshold = threshold  # on the score scale: its operating point is marked on every curve
        self.fpr, self.tpr, self.roc_auc = {}, {}, {}
        for k, (y, sc) in self.curves.items():
            if np.unique(y).size == 2:
                self.fpr[k], self.tpr[k], _ = roc_curve(y, sc)
                self.roc_auc[k] = float(roc_auc_score(y, sc))

    def plot(self, ax: Axes | None = None, *, log_fpr: bool = False, title: str | None = None,
             fpr_floor: float | None = None) -> "DetectorRocDisplay":
        """Draw every curve with its 95 % bootstrap band (AUC and n in the legend); a log-FPR
        axis starts at 1 / n_real unless ``fpr_floor`` is given. Returns self."""
        self.ax_ = plot_roc(self.curves, ax=ax, log_fpr=log_fpr, title=title or self.name,
                            fpr_floor=fpr_floor, thresholds=self.threshold)
        self.figure_ = self.ax_.figure
        return self

    @classmethod
    def from_predictions(cls, y_true, y_score, *, pos_label=1, name: str | None = None,
                         ax: Axes | None = None, log_fpr: bool = False) -> "DetectorRocDisplay":
        """One curve from labels (``pos_label`` = fake) and scores (higher = more likely fake)."""
        y = (np.asarray(y_true).ravel() == pos_label).astype(int)
        return cls(curves={name or "detector": (y, y_score)}, name=name).plot(ax, log_fpr=log_fpr)

    @classmethod
    def from_estimator(cls, estimator, X, y, *, name: str | None = None, ax: Axes | None = None,
                       log_fpr: bool = False) -> "DetectorRocDisplay":
        """One curve of a fitted binary classifier (``decision_function``, else ``predict_proba[:, 1]``)."""
        scores = (estimator.decision_function(X) if hasattr(estimator, "decision_function")
                  else estimator.predict_proba(X)[:, 1])
        return cls.from_predictions(y, scores, pos_label=estimator.classes_[1],
                                    name=name or type(estimator).__name__, ax=ax, log_fpr=log_fpr)

    @classmethod
    def from_detector(cls, detector, cache, *, split: str = "test", by: str | None = "generator",
                      name: str | None = None, ax: Axes | None = None, log_fpr: bool = False,
                      val: float | None = None, test: float | None = None,
                      split_seed: int | None = None) -> "DetectorRocDisplay":
        """Curves of a :class:`~clipdetect.models.detector.Detector` (or a fitted
        ``DetectorClassifier``) on ``split`` of ``cache`` (a FeatureCache or its path), resolved
        as ``clipdetect plot`` does (``val=``, ``test=``, ``split_seed=`` override the
        detector's split fractions); overall plus one per value of ``by``."""
        detector = getattr(detector, "detector_", detector)
        cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        params = split_params(detector, val=val, test=test, seed=split_seed)
        curves = roc_curves(detector, cache, split_rows(cache, split, params), by=by)
        title = name or f"{Path(str(cache.root)).name} ({split})"
        return cls(curves=curves, name=title, threshold=float(detector.logit_threshold)).plot(ax, log_fpr=log_fpr)
