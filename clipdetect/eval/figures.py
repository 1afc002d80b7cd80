"""Figures of detectors scored on a cache: ROC curves per generator (bootstrap bands, log-FPR
axis from 1 / n_real, the operating threshold marked), histograms of the calibrated P(fake)
with the threshold, and reliability diagrams with their ECE."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from clipdetect.core.metrics import group_masks
from clipdetect.eval.evaluate import group_values, score_rows
from clipdetect.eval.selection import check_both_classes, choose_rows, split_params

#: the figures :func:`plot_detectors` writes, by file name (after the prefix)
FIGURES = ("roc", "hist", "reliability")


def roc_curves(detector, cache, rows: np.ndarray, *, by: Optional[str] = "generator",
               logits: Optional[np.ndarray] = None) -> Dict[str, tuple]:
    """``{"overall": (y, logits), <generator>: (y, logits) ...}`` for ROC plots (fakes of each
    value of ``by`` against all reals of ``rows``)."""
    y = cache.labels(rows)
    if logits is None:
        logits, _ = score_rows(detector, cache, rows)
    curves = {"overall": (y, logits)}
    if by:
        values = group_values(cache.meta.loc[rows].reset_index(drop=True), [by], y)[by]
        for value, mask in ((v, m) for c, v, _, m in group_masks(y, {by: values}) if c == by):
            if value is not None and 0 < y[mask].sum() < mask.sum() and not mask.all():
                curves[str(value)] = (y[mask], logits[mask])  # a group of every row would repeat "overall"
    return curves


def detector_figures(detectors: Dict[str, Any], cache, *, split: str = "test", by: Optional[str] = "generator",
                     title: Optional[str] = None, bins: int = 15) -> Dict[str, Any]:
    """``{"roc": Figure, "hist": Figure, "reliability": Figure}`` of ``detectors`` (name →
    detector) on ``split`` of ``cache``, unsaved. Every figure is titled the same way:
    ``<detector(s)> on <cache>, <split> split (<n_real> real, <n_fake> fake)``."""
    import matplotlib.pyplot as plt

    from clipdetect.core.metrics import expected_calibration_error, reliability_table
    from clipdetect.eval.plot_scores import plot_reliability, plot_score_histograms
    from clipdetect.eval.plots import roc_figure, roc_figure_multi

    scored: Dict[str, tuple] = {}
    for name, det in detectors.items():
        rows, used, _ = choose_rows(det, cache, split, split_params(det))
        y = cache.labels(rows)
        check_both_classes(y, f"split {used!r} of cache {str(cache.root)!r}")
        logits, probs = score_rows(det, cache, rows)
        scored[name] = (rows, used, y, logits, probs)
    first = next(iter(scored.values()))
    n_real, n_fake = int((first[2] == 0).sum()), int((first[2] == 1).sum())
    title = title or (f"{', '.join(detectors)} on {Path(str(cache.root)).name}, {first[1]} split "
                      f"({n_real} real, {n_fake} fake)")
    curves = {n: roc_curves(detectors[n], cache, s[0], by=by, logits=s[3]) for n, s in scored.items()}
    thresholds = {n: float(d.logit_threshold) for n, d in detectors.items()}
    if len(curves) == 1:
        name = next(iter(curves))
        roc = roc_figure(curves[name], title=title, thresholds=thresholds[name])
    elif all(len(c) == 1 for c in curves.values()):
        roc = roc_figure({n: c["overall"] for n, c in curves.items()}, title=title, thresholds=thresholds)
    else:
        roc = roc_figure_multi(curves, title=title, thresholds=thresholds)
    k = len(detectors)
    hist, axes = plt.subplots(1, k, figsize=(5.5 * k, 4.2), squeeze=False)
    for ax, (name, (rows, _, y, _, probs)) in zip(axes[0], scored.items()):
        groups = cache.meta.loc[rows, by].to_numpy(dtype=object) if by else None
        plot_score_histograms(y, probs, groups=groups, ax=ax, threshold=float(detectors[name].threshold))
        ax.set_title(f"{name}: P(fake) by class")
    hist.suptitle(title)
    hist.tight_layout()
    rel, axes = plt.subplots(1, k, figsize=(5.0 * k, 4.8), squeeze=False)
    for ax, (name, (_, _, y, _, probs)) in zip(axes[0], scored.items()):
        plot_reliability(reliability_table(y, probs, n_bins=bins), ax=ax, title=f"{name}: reliability",
                         ece=expected_calibration_error(y, probs, n_bins=bins), n=int(y.size))
    rel.suptitle(title)
    rel.tight_layout()
    return {"roc": roc, "hist": hist, "reliability": rel}


def plot_detectors(detectors: Dict[str, Any], cache, out_dir: str | Path, *, split: str = "test",
                   by: Optional[str] = "generator", formats: Sequence[str] = ("png", "pdf"),
                   title: Optional[str] = None, dpi: int = 150, prefix: str = "") -> List[Path]:
    """:func:`detector_figures`, saved as ``out_dir/<prefix>roc.*``, ``<prefix>hist.*`` and
    ``<prefix>reliability.*``; returns the written paths.

    One detector: a curve per value of ``by`` plus overall. Several: colour per detector and
    line style per generator, or a curve per detector when each has one curve only.
    """
    from clipdetect.eval.plots import save_figure

    figures = detector_figures(detectors, cache, split=split, by=by, title=title)
    return [path for name in FIGURES for path in
            save_figure(figures[name], Path(out_dir) / f"{prefix}{name}", formats=formats, dpi=dpi)]
