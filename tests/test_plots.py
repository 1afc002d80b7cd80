"""The figures, asserted on their matplotlib objects: axes limits, artists, legend texts."""
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from sklearn.metrics import roc_auc_score

from clipdetect.core.metrics import expected_calibration_error, reliability_table
from clipdetect.eval.plot_scores import plot_metric_curves, plot_reliability, plot_score_histograms
from clipdetect.eval.plots import plot_roc, roc_band, roc_figure, roc_figure_multi, save_figure, tpr_at_fpr

plt = pytest.importorskip("matplotlib.pyplot")


def _curve(seed, sep, n=300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.normal(size=n) + sep * y


def _labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _data_lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_") and len(ln.get_xdata()) > 1]


def _bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_backend_is_headless():
    assert plt.get_backend().lower() == "agg"


def test_plot_roc_legend_has_auc_and_counts_and_bands():
    curves = {"sdxl": _curve(0, 1.0), "midjourney": _curve(1, 2.0)}
    ax = plot_roc(curves, title="t")
    labels = _labels(ax)
    assert len(labels) == 3 and labels[2] == "95% bootstrap band"
    for label, (name, (y, s)) in zip(labels, curves.items()):
        n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
        assert label == f"{name}: AUC {roc_auc_score(y, s):.3f}, n = {n_real} real / {n_fake} fake"
    assert ax.get_xscale() == "linear" and len(_bands(ax)) == 2  # one 95% band per curve
    three = plot_roc({**curves, "c": _curve(9, 0.5)})  # more: only the first curve's band
    assert len([c for c in three.collections if c.get_label() == "_band"]) == 1
    assert "95% bootstrap band (sdxl)" in _labels(three)
    plt.close(three.figure)
    plt.close(ax.figure)


def test_band_covers_the_curve_and_narrows_with_n():
    y, s = _curve(3, 1.0, n=200)
    grid = np.linspace(0, 1, 51)
    lo, hi = roc_band(y, s, grid)
    point = tpr_at_fpr(s[y == 0], s[y == 1], grid)
    assert (lo <= point + 1e-12).all() and (point <= hi + 1e-12).all()
    y2, s2 = _curve(3, 1.0, n=5000)
    lo2, hi2 = roc_band(y2, s2, grid)
    assert np.mean(hi2 - lo2) < 0.5 * np.mean(hi - lo)


def test_log_axis_starts_at_one_over_n_real():
    y, s = _curve(2, 1.5, n=276)
    n_real = int((y == 0).sum())
    ax = plot_roc({"a": (y, s)}, log_fpr=True, thresholds=0.7)
    assert ax.get_xscale() == "log"
    assert ax.get_xlim()[0] == pytest.approx(1 / n_real)  # no axis where no real can be resolved
    assert min(_data_lines(ax)[0].get_xdata()) == pytest.approx(1 / n_real)
    assert "1/n_real" in ax.get_xlabel()
    marker = [ln for ln in ax.get_lines() if ln.get_label() == "_threshold"]
    assert len(marker) == 1  # the operating point at the threshold, on the curve
    fpr = (s[y == 0] > 0.7).mean()
    assert marker[0].get_xdata()[0] == pytest.approx(max(fpr, 1 / n_real))
    assert marker[0].get_ydata()[0] == pytest.approx((s[y == 1] > 0.7).mean())
    assert "operating threshold" in _labels(ax)
    plt.close(ax.figure)


def test_roc_figure_saved(tmp_path):
    fig = roc_figure({"a": _curve(2, 1.5)}, title="demo")
    lin, log = fig.axes[:2]
    assert (lin.get_xscale(), log.get_xscale()) == ("linear", "log")
    assert (lin.get_title(), log.get_title(), fig._suptitle.get_text()) == ("ROC, linear FPR", "ROC, log FPR", "demo")
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
    fig = roc_figure_multi(detectors, thresholds={"linear": 0.0, "mlp": 1.0})
    for ax in fig.axes[:2]:
        lines = _data_lines(ax)
        assert len(lines) == 5 and len([c for c in ax.collections if c.get_label() == "_band"]) == 2
        by_label = {ln.get_label().split(":")[0]: ln for ln in lines}
        for det, curves in detectors.items():
            for gen, (y, s) in curves.items():
                assert any(lbl.startswith(f"{det} / {gen}: AUC {roc_auc_score(y, s):.3f}") for lbl in _labels(ax))
        # same detector -> same colour, its own; same generator -> same linestyle
        sdxl = [ln for lbl, ln in by_label.items() if lbl.endswith("/ sdxl")]
        assert sdxl[0].get_color() != sdxl[1].get_color()
        assert sdxl[0].get_linestyle() == sdxl[1].get_linestyle()
        mlp = [ln for lbl, ln in by_label.items() if lbl.startswith("mlp /")]
        assert len({ln.get_color() for ln in mlp}) == 1 and len({ln.get_linestyle() for ln in mlp}) == 3
        assert len([t for t in _labels(ax) if "AUC" in t]) == 5  # one legend entry per curve
        assert len([ln for ln in ax.get_lines() if ln.get_label() == "_threshold"]) == 5
    plt.close(fig)


def test_histogram_in_probability_with_threshold_line():
    y, s = _curve(8, 1.0)
    p = 1 / (1 + np.exp(-s))
    ax = plot_score_histograms(y, p, bins=20, threshold=0.62)
    labels = _labels(ax)
    assert labels[0] == f"real (n = {(y == 0).sum()})" and labels[1] == f"fake (n = {(y == 1).sum()})"
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_xlabel() == "P(fake), calibrated"
    line = [ln for ln in ax.get_lines() if ln.get_label().startswith("threshold")]
    assert len(line) == 1 and list(line[0].get_xdata()) == [0.62, 0.62] and "threshold 0.62" in labels
    assert ax.get_ylabel() == "images"  # counts, not densities: small n stays visible as small
    plt.close(ax.figure)

    gen = np.where(y == 1, np.where(np.arange(y.size) % 2, "sdxl", "mj"), "real")
    ax = plot_score_histograms(y, p, groups=gen, bins=20)
    assert {re.sub(r" \(n = \d+\)", "", lbl) for lbl in _labels(ax)} == {"real", "fake: mj", "fake: sdxl"}
    plt.close(ax.figure)


@pytest.mark.parametrize("n", [40, 2000])
def test_reliability_diagram_states_ece_and_has_a_size_key(n):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    table = reliability_table(y, p, n_bins=10)
    ax = plot_reliability(table, ece=expected_calibration_error(y, p, n_bins=10), n=n, title="r")
    text = ax.texts[0].get_text()
    if n < 100:  # too few rows: the ECE is not printed, and the box says why
        assert text.startswith("ECE n/a (needs ≥ 100 rows)")
    else:
        assert text.startswith(f"ECE {expected_calibration_error(y, p, n_bins=10):.3f}")
    assert f"{n} images, {len(table)} non-empty bins" in text
    keys = [lbl for lbl in _labels(ax) if "in a bin" in lbl]
    assert 1 <= len(keys) <= 3 and keys[-1] == f"{int(table.n.max())} images in a bin"
    sizes = ax.collections[0].get_sizes()  # the bins: marker area grows with the count
    assert sizes.argmax() == int(np.argmax(table.n.to_numpy()))
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
