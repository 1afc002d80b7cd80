"""Figures of scores and probabilities: histograms of the calibrated P(fake) with the decision
threshold, reliability diagrams with their ECE and a key to the marker sizes, robustness sweeps.

Drawn with the headless backend :mod:`clipdetect.eval.plots` selects; every function draws onto
an optional ``ax`` and returns it (or a new figure).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from clipdetect.core.guards import guard
from clipdetect.eval.plots import curve_colors, new_ax, subplots

__all__ = ["plot_score_histograms", "plot_reliability", "plot_metric_curves", "reliability_sizes"]


def plot_score_histograms(y_true, scores, *, groups: Sequence | None = None, bins: int = 25,
                          ax: Axes | None = None, density: bool = False, threshold: float | None = None,
                          probability: bool = True) -> Axes:
    """Overlaid histograms of reals and fakes on shared bin edges, with the decision threshold.

    ``scores`` are calibrated P(fake) by default (bins over [0, 1]; ``probability=False`` for
    any score). ``groups`` (per-sample values such as the generator name) splits the fakes
    into one histogram per value; reals always form one ``real`` histogram. The legend gives
    each part's n; ``threshold`` draws a vertical line labelled with its value. Counts by
    default (``density=True`` for densities).
    """
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    ax = new_ax(ax)
    edges = np.linspace(0.0, 1.0, bins + 1) if probability else np.histogram_bin_edges(s, bins=bins)
    parts: list[tuple[str, np.ndarray]] = [("real", s[y == 0])]
    if groups is None:
        parts.append(("fake", s[y == 1]))
    else:
        g = pd.Series(np.asarray(groups, dtype=object))[y == 1]
        for value in sorted(g.dropna().unique(), key=str):
            parts.append((f"fake: {value}" if str(value) != "fake" else "fake", s[y == 1][(g == value).to_numpy()]))
    for (name, values), color in zip(parts, curve_colors(len(parts))):
        if values.size:
            ax.hist(values, bins=edges, density=density, histtype="stepfilled", alpha=0.35,
                    color=color, edgecolor=color, label=f"{name} (n = {values.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3g}")
    if probability:
        ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("P(fake), calibrated" if probability else "score (higher = more likely fake)")
    ax.set_ylabel("density" if density else "images")
    ax.legend(fontsize="small")
    return ax


def reliability_sizes(n: np.ndarray, n_max: float) -> np.ndarray:
    """Marker areas of reliability bins holding ``n`` images (the largest bin has ``n_max``)."""
    return 20 + 180 * np.asarray(n, dtype=float) / max(float(n_max), 1.0)


def _size_key(n_max: int) -> list[int]:
    """Up to three bin sizes for the marker-size key: round ones well below ``n_max``, and ``n_max``."""
    rounds = [10 ** k for k in range(0, 7) if 10 ** k <= n_max / 2]
    return rounds[-2:] + [max(int(n_max), 1)]


def plot_reliability(table: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None,
                     ece: float | None = None, n: int | None = None) -> Axes:
    """Reliability diagram from :func:`clipdetect.core.metrics.reliability_table`: fraction of
    fakes against mean predicted P(fake) per bin (marker area ∝ bin size, with a key of sizes),
    the diagonal, and, with ``n`` (the rows behind it), the ECE or why it is not shown."""
    ax = new_ax(ax)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    n_max = float(table["n"].max()) if len(table) else 1.0
    if len(table):
        ax.plot(table["mean_prob"], table["frac_fake"], color="C0", lw=1)
        ax.scatter(table["mean_prob"], table["frac_fake"], s=reliability_sizes(table["n"], n_max), color="C0",
                   alpha=0.7, label="bin (area ∝ its images)")
        for k in _size_key(int(n_max)):
            ax.scatter([], [], s=float(reliability_sizes([k], n_max)[0]), color="C0", alpha=0.7,
                       label=f"{k} image{'s' if k != 1 else ''} in a bin")
    if n is not None:
        why = guard("ece", {"n": n})
        text = f"ECE n/a ({why})" if why or ece is None or math.isnan(ece) else f"ECE {ece:.3f}"
        ax.text(0.97, 0.03, f"{text}\n{n} images, {len(table)} non-empty bins", transform=ax.transAxes,
                ha="right", va="bottom", fontsize="small", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean predicted P(fake) in the bin")
    ax.set_ylabel("fraction of fakes in the bin")
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
            ax.fill_between(part[x], part[f"{y}_lo"], part[f"{y}_hi"], color=line.get_color(), alpha=0.2)


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
    fig, axes = subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), sharey=True, squeeze=False)
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
