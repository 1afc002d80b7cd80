import logging
import math

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, brier_score_loss,
                             roc_auc_score, roc_curve)

from clipdetect.core.metrics import (binary_metrics, bootstrap_ci, brier_score, evaluate_scores,
                                     expected_calibration_error, threshold_at_fpr)
from clipdetect.core.tables import to_markdown


def _data(n=2000, sep=1.0, seed=0, decimals=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z = rng.normal(size=n) + sep * y
    if decimals is not None:
        z = np.round(z, decimals)  # many ties
    return y, z


def _eer_bruteforce(y, s):
    """EER by scanning thresholds: where |FPR - FNR| is smallest."""
    ts = np.unique(s)
    fpr = np.array([(s[y == 0] > t).mean() for t in ts])
    fnr = np.array([(s[y == 1] <= t).mean() for t in ts])
    i = np.argmin(np.abs(fpr - fnr))
    return (fpr[i] + fnr[i]) / 2


@pytest.mark.parametrize("decimals", [None, 1])
def test_binary_metrics_match_sklearn(decimals):
    y, z = _data(decimals=decimals)
    p = 1 / (1 + np.exp(-z))
    m = binary_metrics(y, p, threshold=0.7)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["acc@0.5"] == pytest.approx(accuracy_score(y, p > 0.5))
    assert m["acc@thr"] == pytest.approx(accuracy_score(y, p > 0.7))
    assert m["eer"] == pytest.approx(_eer_bruteforce(y, p), abs=5e-3)
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    for key, target in [("tpr@fpr=1%", 0.01), ("tpr@fpr=0.1%", 0.001)]:
        assert m[key] == pytest.approx(tpr[fpr <= target].max())
    assert (m["n"], m["n_real"], m["n_fake"]) == (y.size, (y == 0).sum(), (y == 1).sum())


def test_binary_metrics_logits_and_no_threshold():
    y, z = _data(n=500, seed=3)
    m = binary_metrics(y, z, scores_are_probs=False)
    assert m["acc@0.5"] == pytest.approx(accuracy_score(y, z > 0))
    assert math.isnan(m["acc@thr"])
    assert m["auc"] == pytest.approx(roc_auc_score(y, z))


def test_eer_perfect_and_inverted():
    y = np.array([0, 0, 1, 1])
    assert binary_metrics(y, [0.1, 0.2, 0.8, 0.9])["eer"] == 0.0
    assert binary_metrics(y, [0.9, 0.8, 0.2, 0.1])["eer"] == 1.0


def test_single_class_gives_nan_and_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="clipdetect.core.metrics"):
        m = binary_metrics(np.ones(10, int), np.linspace(0, 1, 10))
    assert "one class" in caplog.text
    for key in ("auc", "ap", "eer", "tpr@fpr=1%"):
        assert math.isnan(m[key])
    assert m["acc@0.5"] == pytest.approx(0.5)


def test_bootstrap_ci_contains_estimate_and_narrows():
    widths = []
    for n in (200, 5000):
        y, z = _data(n=n, seed=1)
        lo, hi = bootstrap_ci(y, z, "auc", n_boot=300)
        assert lo <= roc_auc_score(y, z) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_bootstrap_fast_path_matches_generic_callable():
    y, z = _data(n=300, seed=2)
    fast = bootstrap_ci(y, z, roc_auc_score, n_boot=100, seed=5)
    slow = bootstrap_ci(y, z, lambda a, b: roc_auc_score(a, b), n_boot=100, seed=5)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_auc_is_vectorised(monkeypatch):
    """Named metrics take the vectorised path: no per-resample call of a scorer."""
    import clipdetect.core.metrics as metrics_module

    def boom(*args, **kwargs):
        raise AssertionError("per-resample scorer called on the vectorised path")

    monkeypatch.setattr(metrics_module, "roc_auc_score", boom)
    monkeypatch.setattr(metrics_module, "average_precision_score", boom)
    y, z = _data(n=10_000, seed=4)
    low, high = bootstrap_ci(y, z, "auc", n_boot=1000)
    assert 0.0 <= low <= high <= 1.0


def test_stratified_resamples_keep_both_classes():
    y = np.array([1] + [0] * 30)
    z = np.arange(31.0)
    has_both = lambda a, b: float(a.min() == 0 and a.max() == 1)  # noqa: E731
    assert bootstrap_ci(y, z, has_both, n_boot=200) == (1.0, 1.0)
    n_fake = lambda a, b: float(a.sum())  # noqa: E731
    assert bootstrap_ci(y, z, n_fake, n_boot=200) == (1.0, 1.0)


def test_evaluate_scores_fake_only_groups_use_all_reals():
    y, z = _data(n=600, seed=6)
    gen = np.where(y == 1, np.where(np.arange(y.size) % 2, "sdxl", "mj"), None)
    df = evaluate_scores(y, z, groups={"generator": gen}, n_boot=50, scores_are_probs=False)
    assert list(df["group"]) == ["overall", "generator", "generator"]
    assert set(df["value"]) == {"all", "mj", "sdxl"}
    for _, row in df[df["group"] == "generator"].iterrows():
        mask = (gen == row["value"]) | (y == 0)
        assert row["vs"] == "all_real"
        assert row["n_real"] == (y == 0).sum()
        assert row["auc"] == pytest.approx(roc_auc_score(y[mask], z[mask]))
        assert row["auc_lo"] <= row["auc"] <= row["auc_hi"]
    overall = df.iloc[0]
    assert overall["auc"] == pytest.approx(roc_auc_score(y, z))


def test_evaluate_scores_mixed_group_and_no_ci():
    y, z = _data(n=400, seed=7)
    split = np.where(np.arange(y.size) < 200, "a", "b")
    df = evaluate_scores(y, z, groups={"split": split}, n_boot=0, threshold=0.0,
                         scores_are_probs=False)
    assert list(df["vs"]) == ["group"] * 3
    assert not any(c.endswith("_lo") for c in df.columns)
    a = df[df["value"] == "a"].iloc[0]
    assert a["auc"] == pytest.approx(roc_auc_score(y[:200], z[:200]))
    assert a["acc@thr"] == pytest.approx(accuracy_score(y[:200], z[:200] > 0))


def test_threshold_at_fpr_bounds_empirical_fpr():
    rng = np.random.default_rng(8)
    reals = np.round(rng.normal(size=1234), 2)  # with ties
    for target in (0.0, 0.001, 0.01, 0.05, 0.5):
        t = threshold_at_fpr(reals, target)
        assert (reals > t).mean() <= target
        assert (reals >= t).mean() > target or target == 0.0  # not needlessly strict


def test_ece_zero_when_calibrated_and_brier_matches_sklearn():
    probs, labels = [], []
    for p, n_pos in [(0.1, 1), (0.3, 3), (0.5, 5), (0.9, 9)]:
        probs += [p] * 10
        labels += [1] * n_pos + [0] * (10 - n_pos)
    assert expected_calibration_error(labels, probs, n_bins=10) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error([0, 1], [1.0, 0.0], n_bins=10) == pytest.approx(1.0)
    rng = np.random.default_rng(9)
    y, p = rng.integers(0, 2, 100), rng.random(100)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))


def test_to_markdown_formats_ci_and_rows():
    y, z = _data(n=300, seed=11)
    gen = np.where(y == 1, np.where(np.arange(y.size) % 2, "sdxl", "mj"), None)
    df = evaluate_scores(y, z, groups={"generator": gen}, n_boot=30, scores_are_probs=False)
    md = to_markdown(df, columns=["group", "value", "vs", "n", "auc", "eer"])
    lines = md.splitlines()
    assert lines[0] == "| group | value | vs | n | auc | eer |"
    assert set(lines[1]) <= set("|-:")
    assert len(lines) == 2 + len(df)
    row = df.iloc[0]
    assert f"{row['auc']:.3f} [{row['auc_lo']:.3f}, {row['auc_hi']:.3f}]" in lines[2]
    assert "_lo" not in to_markdown(df).splitlines()[0]
