import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from clipdetect.eval.plots import (plot_metric_curves, plot_roc, plot_score_histograms, roc_figure,
                              roc_figure_multi, save_figure)

plt = pytest.importorskip("matplotlib.pyplot")


def _curve(seed, sep, n=300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.normal(size=n) + sep * y


def _labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _data_lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_backend_is_headless():
    assert plt.get_backend().lower() == "agg"


def test_plot_roc_legend_has_sklearn_auc():
    curves = {"sdxl": _curve(0, 1.0), "midjourney": _curve(1, 2.0)}
    ax = plot_roc(curves, title="t")
    labels = _labels(ax)
    assert len(labels) == 2
    for label, (name, (y, s)) in zip(labels, curves.items()):
        assert label == f"{name} (AUC = {roc_auc_score(y, s):.3f})"
    assert ax.get_xscale() == "linear"
    plt.close(ax.figure)


def test_log_axis_and_figure_saved(tmp_path):
    curves = {"a": _curve(2, 1.5)}
    ax = plot_roc(curves, log_fpr=True)
    assert ax.get_xscale() == "log"
    assert min(_data_lines(ax)[0].get_xdata()) >= 1e-4
    plt.close(ax.figure)

    fig = roc_figure(curves, title="demo")
    lin, log = fig.axes[:2]
    assert (lin.get_xscale(), log.get_xscale()) == ("linear", "log")
    paths = save_figure(fig, tmp_path / "sub" / "roc.v1")
    assert [p.name for p in paths] == ["roc.v1.png", "roc.v1.pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    assert not plt.fignum_exists(fig.number)


def test_multi_detector_one_line_per_pair():
    detectors = {
        "linear": {"sdxl": _curve(3, 1.0), "dalle": _curve(4, 0.5)},
        "mlp": {"sdxl": _curve(5, 1.5), "dalle": _curve(6, 1.0), "flux": _curve(7, 2.0)},
    }
    fig = roc_figure_multi(detectors)
    for ax in fig.axes[:2]:
        lines = _data_lines(ax)
        assert len(lines) == 5
        by_label = {ln.get_label(): ln for ln in lines}
        for det, curves in detectors.items():
            for gen, (y, s) in curves.items():
                assert f"{det} / {gen} (AUC = {roc_auc_score(y, s):.3f})" in by_label
        # same detector -> same colour, its own; same generator -> same linestyle
        sdxl = [ln for lbl, ln in by_label.items() if "/ sdxl" in lbl]
        assert sdxl[0].get_color() != sdxl[1].get_color()
        assert sdxl[0].get_linestyle() == sdxl[1].get_linestyle()
        mlp = [ln for lbl, ln in by_label.items() if lbl.startswith("mlp /")]
        assert len({ln.get_color() for ln in mlp}) == 1 and len({ln.get_linestyle() for ln in mlp}) == 3
        assert len(_labels(ax)) == 5  # one legend entry per curve
    plt.close(fig)


def test_histogram_has_both_classes_and_groups():
    y, s = _curve(8, 1.0)
    ax = plot_score_histograms(y, s, bins=20)
    labels = _labels(ax)
    assert any(lbl.startswith("real") for lbl in labels)
    assert any(lbl.startswith("fake") for lbl in labels)
    plt.close(ax.figure)

    gen = np.where(y == 1, np.where(np.arange(y.size) % 2, "sdxl", "mj"), "real")
    ax = plot_score_histograms(y, s, groups=gen, bins=20)
    labels = _labels(ax)
    assert len(labels) == 3
    assert {re.sub(r" \(n=\d+\)", "", lbl) for lbl in labels} == {"real", "fake: mj",
                                                                   "fake: sdxl"}
    plt.close(ax.figure)


def test_metric_curves_one_panel_per_perturbation(tmp_path):
    rows = []
    for det in ("linear", "mlp"):
        for kind, sev in (("jpeg", [95, 75, 50]), ("blur", [0.5, 1.0, 2.0])):
            for k, v in enumerate(sev):
                auc = 0.95 - 0.05 * k
                rows.append(dict(detector=det, perturbation=kind, severity=v,
                                 auc=auc, auc_lo=auc - 0.01, auc_hi=auc + 0.01))
    fig = plot_metric_curves(pd.DataFrame(rows), style="detector")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["jpeg", "blur"]
    assert all(len(ax.get_lines()) == 2 for ax in visible)
    paths = save_figure(fig, tmp_path / "sweep")
    assert all(p.stat().st_size > 0 for p in paths)
