"""Every figure a detector report writes, at small and large n, asserted on the figure objects."""
import numpy as np
import pytest

from helpers.synthetic import write_multi_generator_cache

from clipdetect.eval.figures import detector_figures
from clipdetect.features.splits import resolve_split_rows
from clipdetect.models.detector import Detector
from helpers.training import FAST_LINEAR

plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(scope="module", params=[120, 3000], ids=["small", "large"])
def figures(request, tmp_path_factory):
    cache = write_multi_generator_cache(tmp_path_factory.mktemp("fig") / "c", n=request.param)
    det = Detector.fit_cache(cache, config=FAST_LINEAR)
    figs = detector_figures({"det": det}, cache, split="test")
    rows = resolve_split_rows(cache, "test")
    yield cache, det, figs, cache.labels(rows)
    for f in figs.values():
        plt.close(f)


def test_every_figure_has_the_same_title(figures):
    cache, _, figs, y = figures
    want = f"det on c, test split ({(y == 0).sum()} real, {(y == 1).sum()} fake)"
    assert set(figs) == {"roc", "hist", "reliability"}
    assert all(f._suptitle.get_text() == want for f in figs.values())


def test_roc_log_axis_threshold_and_counts(figures):
    _, det, figs, y = figures
    lin, log = figs["roc"].axes[:2]
    n_real = int((y == 0).sum())
    assert log.get_xscale() == "log" and log.get_xlim()[0] == pytest.approx(1 / n_real)
    labels = [t.get_text() for t in lin.get_legend().get_texts()]
    assert labels[0].startswith("overall: AUC") and labels[0].endswith(f"{n_real} real / {(y == 1).sum()} fake")
    assert {"a", "b", "c"} <= {lbl.split(":")[0] for lbl in labels}
    markers = [ln for ln in lin.get_lines() if ln.get_label() == "_threshold"]
    assert len(markers) == 4  # the operating point on overall and on each generator's curve
    assert len([c for c in lin.collections if c.get_label() == "_band"]) == 1  # overall's; four would blur
    assert "95% bootstrap band (overall)" in labels


def test_histogram_is_calibrated_probability_with_the_threshold(figures):
    _, det, figs, y = figures
    ax = figs["hist"].axes[0]
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_xlabel() == "P(fake), calibrated"
    line = [ln for ln in ax.get_lines() if ln.get_label().startswith("threshold")]
    assert line and line[0].get_xdata()[0] == pytest.approx(det.threshold)


def test_reliability_states_ece_only_with_enough_rows(figures):
    _, _, figs, y = figures
    text = figs["reliability"].axes[0].texts[0].get_text()
    assert ("ECE n/a (needs ≥ 100 rows)" in text) == (y.size < 100)
    assert f"{y.size} images" in text
    assert np.isfinite(figs["reliability"].axes[0].get_xlim()).all()
