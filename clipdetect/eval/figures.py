"""Figures of detectors scored on a cache: ROC curves per generator and score histograms."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from clipdetect.eval.evaluate import group_masks, group_values, score_rows
from clipdetect.eval.selection import check_both_classes, choose_rows, split_params


def roc_curves(detector, cache, rows: np.ndarray, *, by: Optional[str] = "generator") -> Dict[str, tuple]:
    """``{"overall": (y, logits), <generator>: (y, logits) ...}`` for ROC plots (fakes of each
    value of ``by`` against all reals of ``rows``)."""
    y = cache.labels(rows)
    logits, _ = score_rows(detector, cache, rows)
    curves = {"overall": (y, logits)}
    if by:
        values = group_values(cache.meta.loc[rows].reset_index(drop=True), [by], y)[by]
        for value, mask in ((v, m) for c, v, m in group_masks(y, {by: values}) if c == by):
            if value is not None and 0 < y[mask].sum() < mask.sum() and not mask.all():
                curves[str(value)] = (y[mask], logits[mask])  # a group of every row would repeat "overall"
    return curves


def plot_detectors(detectors: Dict[str, Any], cache, out_stem: str | Path, *, split: str = "test",
                   by: Optional[str] = "generator", formats: Sequence[str] = ("png", "pdf"),
                   title: Optional[str] = None, dpi: int = 150) -> List[Path]:
    """ROC figure (linear + log-FPR panels) and score histograms (one panel per detector)
    as ``<stem>_roc.*`` and ``<stem>_hist.*``.

    One detector: a curve per value of ``by`` plus overall. Several: colour per generator
    and line style per detector, or a colour per detector when each has one curve only.
    """
    import matplotlib.pyplot as plt

    from clipdetect.eval.plots import plot_score_histograms, roc_figure, roc_figure_multi, save_figure

    curves: Dict[str, Dict[str, tuple]] = {}
    chosen = {}
    for name, det in detectors.items():
        chosen[name] = rows = choose_rows(det, cache, split, split_params(det))[0]
        check_both_classes(cache.labels(rows), f"split {split!r} of cache {str(cache.root)!r}")
        curves[name] = roc_curves(det, cache, rows, by=by)
    title = title or f"{Path(str(cache.root)).name} ({split})"
    if len(curves) == 1:
        fig = roc_figure(next(iter(curves.values())), title=f"{next(iter(curves))}: {title}")
    elif all(len(c) == 1 for c in curves.values()):
        fig = roc_figure({name: c["overall"] for name, c in curves.items()}, title=title)
    else:
        fig = roc_figure_multi(curves, title=title)
    paths = save_figure(fig, f"{out_stem}_roc", formats=formats, dpi=dpi)
    fig, axes = plt.subplots(1, len(detectors), figsize=(5.0 * len(detectors), 3.8), squeeze=False)
    for ax, (name, det) in zip(axes[0], detectors.items()):
        rows = chosen[name]
        y, s = curves[name]["overall"]
        groups = None
        if by:
            groups = cache.meta.loc[rows, by].to_numpy(dtype=object)
        plot_score_histograms(y, s, groups=groups, ax=ax)
        ax.set_title(name)
        ax.set_xlabel("logit (higher = more likely fake)")
    fig.tight_layout()
    return paths + save_figure(fig, f"{out_stem}_hist", formats=formats, dpi=dpi)
