"""Headless figures for detector reports: ROC curves (score histograms, reliability diagrams and
robustness sweeps are in :mod:`clipdetect.eval.plot_scores`), and :func:`save_figure`.

The module selects matplotlib's non-interactive ``Agg`` backend on import unless a backend
is already in use (pyplot imported, or ``MPLBACKEND`` set), so it runs on servers and in CI.
Every plotting function draws onto an optional ``ax`` and returns it (or a new figure);
:func:`save_figure` writes PNG and PDF and closes the figure.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from clipdetect.core.io import atomic_write  # noqa: E402

logger = logging.getLogger(__name__)

LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
#: bootstrap resamples behind the 95 % bands of ROC curves
ROC_BAND_BOOT = 200
Curves = Mapping[str, tuple[Sequence, Sequence]]
#: a threshold on the score scale: one for every curve, or one per curve (detector) name
Thresholds = float | Mapping[str, float] | None


def subplots(*args, **kwargs):
    """``pyplot.subplots`` on the backend this module selected."""
    return plt.subplots(*args, **kwargs)


def new_ax(ax: Axes | None, figsize: tuple[float, float] = (5.0, 4.5)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=figsize)[1]


def curve_colors(n: int) -> list:
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    if n <= len(cycle):
        return list(cycle)[:n]
    return [plt.get_cmap("tab20")(i % 20) for i in range(n)]


def tpr_at_fpr(real, fake, fpr) -> np.ndarray:
    """The best TPR with an FPR of at most each value of ``fpr`` (scores: higher = fake)."""
    r = np.sort(np.asarray(real, dtype=float))[::-1]
    f = np.sort(np.asarray(fake, dtype=float))
    k = np.floor(np.asarray(fpr, dtype=float) * r.size + 1e-9).astype(int)  # reals allowed above
    t = np.where(k < r.size, r[np.minimum(k, r.size - 1)], -np.inf)
    return 1.0 - np.searchsorted(f, t, side="right") / f.size


def roc_band(y_true, scores, fpr, *, n_boot: int = ROC_BAND_BOOT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95 % stratified-bootstrap band (low, high) of the TPR at each FPR of ``fpr``."""
    y, s = np.asarray(y_true).ravel(), np.asarray(scores, dtype=float).ravel()
    real, fake = s[y == 0], s[y == 1]
    rng = np.random.default_rng(seed)
    tprs = np.stack([tpr_at_fpr(rng.choice(real, real.size), rng.choice(fake, fake.size), fpr)
                     for _ in range(n_boot)])
    return tuple(np.percentile(tprs, [2.5, 97.5], axis=0))


def _threshold_for(thresholds: Thresholds, name: str) -> float | None:
    if thresholds is None or isinstance(thresholds, (int, float)):
        return thresholds
    return thresholds.get(name)


def _draw_roc(ax: Axes, y_true, scores, *, label: str, log_fpr: bool, fpr_floor: float | None,
              threshold: float | None = None, band: bool = True, **line_kw) -> float | None:
    """One ROC curve labelled ``label: AUC x.xxx, n = R real / F fake``, its 95 % bootstrap
    band and, with ``threshold``, the operating point; returns the AUC (None if skipped).

    On a log axis the curve starts at FPR = 1 / n_real (``fpr_floor`` when given): a smaller
    FPR is not resolved by the reals at hand, so nothing is drawn below it."""
    y, s = np.asarray(y_true).ravel(), np.asarray(scores, dtype=float).ravel()
    if np.unique(y).size < 2:
        logger.warning("ROC curve %r skipped: only one class present", label)
        return None
    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
    fpr, tpr, _ = roc_curve(y, s)
    auc = float(roc_auc_score(y, s))
    floor = fpr_floor or 1.0 / n_real
    x = np.maximum(fpr, floor) if log_fpr else fpr
    line, = ax.plot(x, tpr, label=f"{label}: AUC {auc:.3f}, n = {n_real} real / {n_fake} fake", **line_kw)
    if band:
        grid = np.logspace(math.log10(floor), 0.0, 80) if log_fpr else np.linspace(0.0, 1.0, 101)
        lo, hi = roc_band(y, s, grid)
        ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0, step="post",
                        label="_band")
    if threshold is not None:
        px = float((s[y == 0] > threshold).mean())
        py = float((s[y == 1] > threshold).mean())
        ax.plot([max(px, floor) if log_fpr else px], [py], marker="o", markersize=7, linestyle="none",
                markerfacecolor=line.get_color(), markeredgecolor="black", label="_threshold")
    return auc


def _finish_roc_axes(ax: Axes, *, log_fpr: bool, fpr_floor: float, title: str | None,
                     threshold: bool = False, band: str | None = None) -> None:
    if log_fpr:
        chance = np.logspace(math.log10(fpr_floor), 0.0, 100)
        ax.set_xscale("log")
        ax.set_xlim(fpr_floor, 1.0)
    else:
        chance = np.array([0.0, 1.0])
        ax.set_xlim(0.0, 1.0)
    ax.plot(chance, chance, linestyle="--", color="0.6", linewidth=1, label="_chance")
    if threshold:  # one key for every curve's marker
        ax.plot([], [], marker="o", markersize=7, linestyle="none", markerfacecolor="white",
                markeredgecolor="black", label="operating threshold")

    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false positive rate (reals called fake)"
                  + (f", log scale from 1/n_real = {fpr_floor:.2g}" if log_fpr else ""))
    ax.set_ylabel("true positive rate (fakes detected)")
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if band is not None:
        from matplotlib.patches import Patch

        handles.append(Patch(color="0.5", alpha=0.3, linewidth=0))
        labels.append(f"95% bootstrap band{band}")
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="small", frameon=False)
    if title:
        ax.set_title(title)


def _floor(curves, fpr_floor: float | None) -> float:
    """The log axis' left end: ``fpr_floor``, else 1 / the most reals any curve has."""
    if fpr_floor:
        return fpr_floor
    n = [int((np.asarray(y).ravel() == 0).sum()) for y, _ in curves]
    return 1.0 / max(max(n, default=1), 1)


def plot_roc(curves: Curves, *, ax: Axes | None = None, log_fpr: bool = False, title: str | None = None,
             fpr_floor: float | None = None, thresholds: Thresholds = None, band: bool = True) -> Axes:
    """One ROC curve per ``name -> (y_true, scores)`` entry with its 95 % bootstrap band (the first
    curve's only, when there are more than two); AUC and the number of reals and fakes in the
    legend (below the axes); ``thresholds`` (on the score scale) mark each curve's operating point.

    With ``log_fpr`` the FPR axis is log-scaled from 1 / n_real (or ``fpr_floor``). A dashed
    chance diagonal (label ``_chance``, kept out of the legend) is added.
    """
    ax = new_ax(ax)
    floor = _floor(curves.values(), fpr_floor)
    first_only = len(curves) > 2  # more overlapping bands than a reader can tell apart
    for k, ((name, (y, s)), color) in enumerate(zip(curves.items(), curve_colors(len(curves)))):
        _draw_roc(ax, y, s, label=str(name), log_fpr=log_fpr, fpr_floor=fpr_floor, color=color,
                  band=band and (k == 0 or not first_only), threshold=_threshold_for(thresholds, str(name)))
    key = (f" ({next(iter(curves))})" if first_only else "") if band and curves else None
    _finish_roc_axes(ax, log_fpr=log_fpr, fpr_floor=floor, title=title, threshold=thresholds is not None, band=key)
    return ax


def plot_roc_multi(detectors: Mapping[str, Curves], *, ax: Axes | None = None,
                   log_fpr: bool = False, title: str | None = None,
                   fpr_floor: float | None = None, thresholds: Thresholds = None) -> Axes:
    """ROC curves of several detectors: colour per detector, line style per generator.

    ``detectors`` maps detector name -> {generator name -> (y_true, scores)}; each curve is
    labelled ``detector / generator: AUC …, n = …`` and has one legend entry. The detector
    is what a reader compares, so it gets the colour; the same generator keeps its line
    style across detectors. Bands are drawn for each detector's first (overall) curve only;
    ``thresholds`` maps a detector name to its threshold on the score scale.
    """
    ax = new_ax(ax)
    generators = list(dict.fromkeys(g for curves in detectors.values() for g in curves))
    style_of = {g: LINESTYLES[k % len(LINESTYLES)] for k, g in enumerate(generators)}
    floor = _floor([c for curves in detectors.values() for c in curves.values()], fpr_floor)
    for (det, curves), color in zip(detectors.items(), curve_colors(len(detectors))):
        for k, (gen, (y, s)) in enumerate(curves.items()):
            _draw_roc(ax, y, s, label=f"{det} / {gen}", log_fpr=log_fpr, fpr_floor=fpr_floor,
                      color=color, linestyle=style_of[gen], band=k == 0,
                      threshold=_threshold_for(thresholds, det))
    _finish_roc_axes(ax, log_fpr=log_fpr, fpr_floor=floor, title=title, threshold=thresholds is not None,
                     band=" (each detector's first curve)")
    return ax


def _lin_log_figure(plot, data, figsize, title: str | None, **kw) -> Figure:
    """``plot(data, ax=..., log_fpr=..., title=...)`` twice, side by side: linear and log FPR."""
    fig, (lin, log) = plt.subplots(1, 2, figsize=figsize)  # room below each panel for its legend
    plot(data, ax=lin, title="ROC, linear FPR", **kw)
    plot(data, ax=log, log_fpr=True, title="ROC, log FPR", **kw)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_figure(curves: Curves, *, title: str | None = None, thresholds: Thresholds = None) -> Figure:
    """Two ROC panels side by side: linear FPR axis (left) and log FPR axis (right)."""
    return _lin_log_figure(plot_roc, curves, (12.0, 6.5), title, thresholds=thresholds)


def roc_figure_multi(detectors: Mapping[str, Curves], *, title: str | None = None,
                     thresholds: Thresholds = None) -> Figure:
    """Like :func:`roc_figure` for several detectors (see :func:`plot_roc_multi`)."""
    return _lin_log_figure(plot_roc_multi, detectors, (13.0, 7.0), title, thresholds=thresholds)


def save_figure(fig: Figure, path_stem: str | os.PathLike, *, dpi: int = 150,
                formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``<stem>.png`` (``dpi``) and ``<stem>.pdf``, creating parent folders.

    Returns the written paths and closes the figure.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    try:
        for path in paths:
            atomic_write(path, lambda f, fmt=path.suffix[1:]: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight"))
            logger.debug("wrote %s", path)
    finally:
        plt.close(fig)
    return paths
