"""Headless figures for detector reports: ROC curves, score histograms, reliability, robustness sweeps.

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
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from clipdetect.core.io import atomic_write  # noqa: E402

logger = logging.getLogger(__name__)

FPR_FLOOR = 1e-4  # smallest FPR shown on log axes, so that FPR = 0 stays visible
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
Curves = Mapping[str, tuple[Sequence, Sequence]]


def _new_ax(ax: Axes | None, figsize: tuple[float, float] = (5.0, 4.5)) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def _colors(n: int) -> list:
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    if n <= len(cycle):
        return list(cycle)[:n]
    return [plt.get_cmap("tab20")(i % 20) for i in range(n)]


def _draw_roc(ax: Axes, y_true, scores, *, label: str, log_fpr: bool,
              fpr_floor: float, **line_kw) -> float | None:
    """Draw one ROC curve labelled ``label (AUC = x.xxx)``; return the AUC (None if skipped)."""
    y = np.asarray(y_true).ravel()
    if np.unique(y).size < 2:
        logger.warning("ROC curve %r skipped: only one class present", label)
        return None
    fpr, tpr, _ = roc_curve(y, np.asarray(scores, dtype=float).ravel())
    auc = float(roc_auc_score(y, scores))
    x = np.maximum(fpr, fpr_floor) if log_fpr else fpr
    ax.plot(x, tpr, label=f"{label} (AUC = {auc:.3f})", **line_kw)
    return auc


def _finish_roc_axes(ax: Axes, *, log_fpr: bool, fpr_floor: float, title: str | None) -> None:
    if log_fpr:
        chance = np.logspace(math.log10(fpr_floor), 0.0, 100)
        ax.set_xscale("log")
        ax.set_xlim(fpr_floor, 1.0)
    else:
        chance = np.array([0.0, 1.0])
        ax.set_xlim(0.0, 1.0)
    ax.plot(chance, chance, linestyle="--", color="0.6", linewidth=1, label="_chance")
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false positive rate (real flagged fake)" + (" [log]" if log_fpr else ""))
    ax.set_ylabel("true positive rate (fake detected)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)


def plot_roc(curves: Curves, *, ax: Axes | None = None, log_fpr: bool = False,
             title: str | None = None, fpr_floor: float = FPR_FLOOR) -> Axes:
    """One ROC curve per ``name -> (y_true, scores)`` entry, AUC in the legend.

    With ``log_fpr`` the FPR axis is log-scaled and FPR values are clipped at ``fpr_floor``.
    A dashed chance diagonal (label ``_chance``, kept out of the legend) is added.
    """
    ax = _new_ax(ax)
    for (name, (y, s)), color in zip(curves.items(), _colors(len(curves))):
        _draw_roc(ax, y, s, label=str(name), log_fpr=log_fpr, fpr_floor=fpr_floor, color=color)
    _finish_roc_axes(ax, log_fpr=log_fpr, fpr_floor=fpr_floor, title=title)
    return ax


def plot_roc_multi(detectors: Mapping[str, Curves], *, ax: Axes | None = None,
                   log_fpr: bool = False, title: str | None = None,
                   fpr_floor: float = FPR_FLOOR) -> Axes:
    """ROC curves of several detectors: colour per detector, line style per generator.

    ``detectors`` maps detector name -> {generator name -> (y_true, scores)}; each curve is
    labelled ``detector / generator (AUC = x.xxx)`` and has one legend entry. The detector
    is what a reader compares, so it gets the colour; the same generator keeps its line
    style across detectors.
    """
    ax = _new_ax(ax)
    generators = list(dict.fromkeys(g for curves in detectors.values() for g in curves))
    style_of = {g: LINESTYLES[k % len(LINESTYLES)] for k, g in enumerate(generators)}
    for (det, curves), color in zip(detectors.items(), _colors(len(detectors))):
        for gen, (y, s) in curves.items():
            _draw_roc(ax, y, s, label=f"{det} / {gen}", log_fpr=log_fpr, fpr_floor=fpr_floor,
                      color=color, linestyle=style_of[gen])
    _finish_roc_axes(ax, log_fpr=log_fpr, fpr_floor=fpr_floor, title=title)
    return ax


def _lin_log_figure(plot, data, figsize, title: str | None) -> Figure:
    """``plot(data, ax=..., log_fpr=..., title=...)`` twice, side by side: linear and log FPR."""
    fig, (lin, log) = plt.subplots(1, 2, figsize=figsize)
    plot(data, ax=lin, title="ROC")
    plot(data, ax=log, log_fpr=True, title="ROC (log FPR)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_figure(curves: Curves, *, title: str | None = None) -> Figure:
    """Two ROC panels side by side: linear FPR axis (left) and log FPR axis (right)."""
    return _lin_log_figure(plot_roc, curves, (11.0, 4.5), title)


def roc_figure_multi(detectors: Mapping[str, Curves], *, title: str | None = None) -> Figure:
    """Like :func:`roc_figure` for several detectors (see :func:`plot_roc_multi`)."""
    return _lin_log_figure(plot_roc_multi, detectors, (12.0, 5.0), title)


def plot_score_histograms(y_true, scores, *, groups: Sequence | None = None, bins: int = 50,
                          ax: Axes | None = None, density: bool = True) -> Axes:
    """Overlaid score histograms of reals and fakes on shared bin edges.

    ``groups`` (optional, per-sample values such as the generator name) splits the fakes
    into one histogram per group value; reals always form a single ``real`` histogram.
    """
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    ax = _new_ax(ax)
    edges = np.histogram_bin_edges(s, bins=bins)
    parts: list[tuple[str, np.ndarray]] = [("real", s[y == 0])]
    if groups is None:
        parts.append(("fake", s[y == 1]))
    else:
        g = pd.Series(np.asarray(groups, dtype=object))[y == 1]
        for value in sorted(g.dropna().unique(), key=str):
            parts.append((f"fake: {value}", s[y == 1][(g == value).to_numpy()]))
    for (name, values), color in zip(parts, _colors(len(parts))):
        if values.size:
            ax.hist(values, bins=edges, density=density, histtype="stepfilled", alpha=0.35,
                    color=color, edgecolor=color, label=f"{name} (n={values.size})")
    ax.set_xlabel("score (higher = more likely fake)")
    ax.set_ylabel("density" if density else "count")
    ax.legend(fontsize="small")
    return ax


def plot_reliability(table: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Reliability diagram from :func:`clipdetect.core.metrics.reliability_table`: fraction of
    fakes against mean predicted P(fake) per bin (marker area ∝ bin size), and the diagonal."""
    ax = _new_ax(ax)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    if len(table):
        size = 20 + 180 * table["n"].to_numpy() / max(float(table["n"].max()), 1.0)
        ax.plot(table["mean_prob"], table["frac_fake"], color="C0", lw=1)
        ax.scatter(table["mean_prob"], table["frac_fake"], s=size, color="C0", alpha=0.7, label="bins")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean predicted P(fake)")
    ax.set_ylabel("fraction of fakes")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left")
    return ax


def _plot_sweep(ax: Axes, sub: pd.DataFrame, *, x: str, y: str, style: str | None) -> None:
    lines = [(None, sub)] if style is None else list(sub.groupby(style, sort=False))
    for label, part in lines:
        part = part.sort_values(x)
        line, = ax.plot(part[x], part[y], marker="o", label=None if label is None else str(label))
        if f"{y}_lo" in part and f"{y}_hi" in part:
            ax.fill_between(part[x], part[f"{y}_lo"], part[f"{y}_hi"],
                            color=line.get_color(), alpha=0.2)


def plot_metric_curves(df: pd.DataFrame, *, x: str = "severity", y: str = "auc",
                       hue: str = "perturbation", style: str | None = None,
                       ncols: int = 4) -> Figure:
    """Robustness sweep: ``y`` against ``x`` with one small panel per ``hue`` value.

    Perturbation types get separate panels (sharing the y axis) because their severities
    have different units. ``style`` (e.g. ``"detector"``) draws one line per value inside
    each panel. Bootstrap bands are shaded when ``<y>_lo`` / ``<y>_hi`` columns exist.
    """
    kinds = list(dict.fromkeys(df[hue]))
    ncols = max(1, min(ncols, len(kinds)))
    nrows = max(1, math.ceil(len(kinds) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows),
                             sharey=True, squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        _plot_sweep(ax, df[df[hue] == kind], x=x, y=y, style=style)
        ax.set_title(str(kind))
        ax.set_xlabel(x)
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(y)
    for ax in list(axes.flat)[len(kinds):]:
        ax.set_visible(False)
    if style is not None and kinds:
        axes.flat[0].legend(fontsize="small", title=style)
    fig.tight_layout()
    return fig


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
