from dataclasses import replace
import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, roc_auc_score


from clipdetect.cli.main import main
from clipdetect.eval.compare import paired_auc_difference
from clipdetect.eval.evaluate import evaluate_detector, logit_threshold, score_table
from clipdetect.eval.figures import plot_detectors, roc_curves
from clipdetect.features.splits import resolve_split_rows
from helpers.training import FAST_LINEAR, fit_on_synthetic

PROBE = replace(FAST_LINEAR, epochs=3, lr=None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    # a second generator column value for half of the fakes, and a "format" column with both classes
    cache, det = fit_on_synthetic(root / "cache", PROBE, n=400, dim=16, shift=0.8)
    det.threshold = 0.6  # a non-trivial validation threshold
    det = det.replace(temperature=1.7)
    det.save(root / "det")
    return root, cache, det


def _with_generators(cache):
    meta = cache.meta
    fake = np.flatnonzero(meta["label"].to_numpy() == 1)
    meta.loc[fake[::2], "generator"] = "gen2"
    meta["format"] = np.where(np.arange(len(meta)) % 3 == 0, "JPEG", "PNG")
    return cache


def test_metrics_match_sklearn_per_generator(trained):
    _, cache, det = trained
    cache = _with_generators(cache)
    rep = evaluate_detector(det, cache, split="test", by=["generator", "format"], n_boot=200)
    rows = resolve_split_rows(cache, "test")
    y = cache.labels(rows)
    z = det.logits(cache.features("image", rows)).astype(np.float64)
    p = 1 / (1 + np.exp(-z / det.temperature))
    t = rep.table.set_index(["group", "value"])
    o = t.loc[("overall", "all")]
    assert o["auc"] == pytest.approx(roc_auc_score(y, z), abs=1e-9)
    assert o["ap"] == pytest.approx(average_precision_score(y, z), abs=1e-9)
    assert o["acc@0.5"] == pytest.approx(accuracy_score(y, z > 0))
    assert o["acc@thr"] == pytest.approx(accuracy_score(y, p > det.threshold))
    assert o["brier"] == pytest.approx(brier_score_loss(y, p))
    assert o["auc_lo"] <= o["auc"] <= o["auc_hi"]
    # reals are not a generator; each generator's fakes are scored against all reals
    gen = cache.meta.loc[rows, "generator"].to_numpy()
    assert ("generator", "real") not in t.index
    for g in ("gen", "gen2"):
        m = (y == 0) | (gen == g)
        r = t.loc[("generator", g)]
        assert r["vs"] == "all_real" and r["n_real"] == (y == 0).sum() and r["n_fake"] == (gen == g).sum()
        assert r["auc"] == pytest.approx(roc_auc_score(y[m], z[m]), abs=1e-9)
        assert r["brier"] == pytest.approx(brier_score_loss(y[m], p[m]))
    # a column holding both classes is scored as-is
    fmt = cache.meta.loc[rows, "format"].to_numpy()
    r = t.loc[("format", "JPEG")]
    assert r["vs"] == "group" and r["n"] == (fmt == "JPEG").sum()
    assert r["auc"] == pytest.approx(roc_auc_score(y[fmt == "JPEG"], z[fmt == "JPEG"]), abs=1e-9)


def test_logit_threshold_matches_probability_threshold(trained):
    _, cache, det = trained
    x = cache.features("image")
    z = det.logits(x)
    np.testing.assert_array_equal(z > logit_threshold(det), det.predict(x).astype(bool))


def test_score_table_ece_column():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.7 + rng.random(300) * 0.3, 0, 1)
    z = np.log(p / (1 - p + 1e-12) + 1e-12)
    t = score_table(y, z, p, n_boot=0)
    assert 0 <= t.loc[0, "ece"] <= 1 and t.loc[0, "brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert "auc_lo" not in t


def test_evaluate_cli_writes_reports(trained, tmp_path, capsys):
    root, _, det = trained
    out = tmp_path / "eval"
    assert main(["evaluate", str(root / "det"), str(root / "cache"), "--n-boot", "50", "--out", str(out),
                 "--save-scores"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["config"]["split"] == "test" and data["config"]["threshold"] == pytest.approx(0.6)
    overall = data["metrics"][0]
    assert overall["group"] == "overall" and 0.5 < overall["auc"] <= 1
    assert "ece" in pd.read_csv(out / "metrics.csv").columns
    md = (out / "metrics.md").read_text()
    assert "| overall | all |" in md and "tpr@fpr=1%" in md
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == overall["n"]
    assert json.loads((out / "eval_config.json").read_text())["n_boot"] == 50
    assert "| overall |" in capsys.readouterr().out


def test_evaluate_cli_reports_bad_input(trained, tmp_path):
    root, _, _ = trained
    assert main(["evaluate", str(root / "det"), str(root / "cache"), "--by", "nope", "--n-boot", "0"]) == 2
    assert main(["evaluate", str(tmp_path), str(root / "cache")]) == 2  # not a bundle


def test_plot_one_and_several_detectors(trained, tmp_path):
    root, cache, det = trained
    cache = _with_generators(cache)
    curves = roc_curves(det, cache, resolve_split_rows(cache, "test"))
    assert set(curves) == {"overall", "gen", "gen2"}
    assert all(0 < y.sum() < y.size for y, _ in curves.values())
    paths = plot_detectors({"a": det}, cache, tmp_path / "one", formats=["png"], prefix="x_")
    assert [p.name for p in paths] == ["x_roc.png", "x_hist.png", "x_reliability.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert main(["plot", f"a={root / 'det'},b={root / 'det'}", str(root / "cache"), "--out",
                 str(tmp_path / "roc"), "--formats", "png"]) == 0  # --out is a folder: no roc_roc.png
    assert {p.name for p in (tmp_path / "roc").iterdir()} == {"roc.png", "hist.png", "reliability.png"}
    assert main(["plot", str(root / "det"), str(root / "cache"), "--out", str(tmp_path / "roc")]) == 2


def test_all_split_and_empty_split(trained):
    _, cache, det = trained
    rep = evaluate_detector(det, cache, split="all", by=(), n_boot=0)
    assert rep.table.loc[0, "n"] == len(cache) and len(rep.table) == 1
    assert not math.isnan(rep.table.loc[0, "ece"])


def test_paired_auc_difference():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    a = y + rng.normal(0, 0.6, 400)
    b = y + rng.normal(0, 1.2, 400)
    d = paired_auc_difference(y, a, b, n_boot=300)
    assert d["delta_auc"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    assert 0 < d["delta_auc_lo"] < d["delta_auc"] < d["delta_auc_hi"] and d["p_le_0"] == 0
    same = paired_auc_difference(y, a, a, n_boot=50)
    assert same["delta_auc"] == same["delta_auc_lo"] == same["delta_auc_hi"] == 0


def test_evaluate_cli_compares_several_detectors(trained, tmp_path):
    root, _, _ = trained
    out = tmp_path / "cmp"
    assert main(["evaluate", f"a={root / 'det'},b={root / 'det'}", str(root / "cache"), "--n-boot", "20",
                 "--out", str(out)]) == 0
    assert (out / "a" / "metrics.json").exists() and (out / "b" / "metrics.md").exists()
    cmp = pd.read_csv(out / "comparison.csv")  # the logistic probe is the reference: positive = better
    assert list(cmp.detector) == ["logistic-probe", "a", "b"] and np.isnan(cmp.delta_auc.iloc[0])
    assert cmp.delta_auc.iloc[1] == cmp.delta_auc.iloc[2]
    assert cmp.delta_auc.iloc[1] == pytest.approx(cmp.auc.iloc[1] - cmp.auc.iloc[0], abs=1e-12)
    assert "AUC(detector) − AUC(logistic-probe)" in (out / "comparison.md").read_text()
    out2 = tmp_path / "cmp2"
    assert main(["evaluate", f"a={root / 'det'},b={root / 'det'}", str(root / "cache"), "--n-boot", "20",
                 "--out", str(out2), "--baseline", "none"]) == 0
    cmp = pd.read_csv(out2 / "comparison.csv")
    assert list(cmp.detector) == ["a", "b"] and cmp.delta_auc.iloc[1] == 0 and np.isnan(cmp.delta_auc.iloc[0])
