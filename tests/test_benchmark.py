"""The generalisation benchmark: folds never train on what they hold out; tables and files."""
import json

import numpy as np
import pandas as pd
import pytest

from helpers.synthetic import write_layered_cache
from clipdetect.cli.main import main
from clipdetect.eval import benchmark
from clipdetect.eval.benchmark import BenchmarkConfig, plan_folds, run_benchmark
from clipdetect.models.detector import Detector
from clipdetect.models.train import TrainConfig

TRAIN = {"batch_size": 32, "epochs": 4, "lr": 1e-2, "width": 8, "patience": 0}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: no thread stalls


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_layered_cache(tmp_path_factory.mktemp("bench") / "c", n=240, views=("orig", "norm:256:90"),
                               sources=4, families=2)


def test_folds_hold_out_what_they_name(cache):
    cfg = BenchmarkConfig(train=TRAIN, min_images=10)
    folds = plan_folds(cache, cfg, "norm:256:90")
    meta = cache.meta
    assert {(f.protocol, f.held_out) for f in folds} == {("loso", f"s{i}") for i in range(4)} | {
        ("lofo", "fam0"), ("lofo", "fam1")}
    for f in folds:
        col = "source" if f.protocol == "loso" else "family"
        trained = meta.loc[np.concatenate([f.train, f.val]), col]
        assert f.held_out not in set(trained)
        assert set(meta.loc[f.test, "view"]) == {"norm:256:90"}
        if f.protocol == "loso":
            assert (meta.loc[f.test, "source"] == f.held_out).all()


def test_a_set_of_sources_is_held_out_together(cache, tmp_path, capsys):
    cfg = BenchmarkConfig(train=TRAIN, min_images=10, protocols=["sets"], hold_out_sets={"new": ["s1", "s3"]})
    (fold,) = plan_folds(cache, cfg, "norm:256:90")
    meta = cache.meta
    assert (fold.protocol, fold.held_out) == ("sets", "new")
    assert not {"s1", "s3"} & set(meta.loc[np.concatenate([fold.train, fold.val]), "source"])
    assert set(meta.loc[fold.test, "source"]) == {"s1", "s3"}
    with pytest.raises(ValueError, match="go together"):
        BenchmarkConfig(protocols=["sets"])
    assert main(["benchmark", str(cache.root), "--out", str(tmp_path / "b"), "--protocols", "loso", "--only", "s0",
                 "--hold-out", "new=s1,s3", "--variants", "baseline", "--n-boot", "20", "--min-images", "10",
                 "--set", "epochs=2", "--set", "width=8", "--json"]) == 0
    folds = pd.read_csv(tmp_path / "b" / "folds.csv")
    assert set(zip(folds.protocol, folds.held_out)) == {("loso", "s0"), ("sets", "new")}
    sets = folds[folds.protocol == "sets"]
    assert (sets.n_held_real > 0).all() and sets.fpr.between(0, 1).all()
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", str(cache.root), "--out", str(tmp_path / "c"), "--hold-out", "new"])
    assert exc.value.code == 2
    assert "NAME=SOURCE" in capsys.readouterr().err


def test_benchmark_tables_and_cli_files(cache, tmp_path, monkeypatch):
    trained = []
    real_fit = Detector.fit_rows.__func__

    def spy(cls, c, tr, va, **kw):
        trained.append(kw.get("feature_set"))
        return real_fit(cls, c, tr, va, **kw)

    monkeypatch.setattr(Detector, "fit_rows", classmethod(spy))
    cfg = BenchmarkConfig(train=TRAIN, min_images=10, variants=["baseline", "layers"], n_boot=50,
                          protocols=["loso"], only=["s0", "s1"], also_views=["orig"])
    result = run_benchmark(cache, cfg)
    folds = result["folds"]
    assert set(folds.variant) == {"baseline", "layers", "probe"} and set(folds.held_out) == {"s0", "s1"}
    assert set(folds.view) == {"norm:256:90", "orig"} and len(folds) == 2 * 3 * 2  # scored in both views
    assert trained == ["image", "layers"] * 2
    assert folds.fpr.between(0, 1).all() and (folds.n_held_real > 0).all()
    s = result["summary"][result["summary"].view == "norm:256:90"].set_index("variant")
    assert s.loc["layers", "mean_auc"] > s.loc["baseline", "mean_auc"]  # the signal is in the blocks
    assert s.loc["layers", "vs_baseline_lo"] <= s.loc["layers", "vs_baseline"] <= s.loc["layers", "vs_baseline_hi"]
    assert np.isnan(s.loc["baseline"].get("vs_baseline", np.nan))
    out = tmp_path / "b"
    assert main(["benchmark", str(cache.root), "--out", str(out), "--variants", "baseline", "--protocols", "lofo",
                 "--n-boot", "20", "--min-images", "10", "--set", "epochs=2", "--set", "batch_size=32"]) == 0
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["provenance"]["version"] and doc["config"]["train"] == {"epochs": 2, "batch_size": 32}
    assert "# Generalisation benchmark" in (out / "benchmark.md").read_text()
    scores = pd.read_csv(out / "scores.csv")
    assert {"baseline", "probe", "key", "label"} <= set(scores.columns)


def test_one_class_source_is_completed_and_said(tmp_path):
    c = write_layered_cache(tmp_path / "c", n=200, sources=4, fakes_only_source=True)
    y, src = c.labels(), c.columns("source")["source"].to_numpy()
    assert set(y[src == "s3"]) == {1}
    folds = {f.held_out: f for f in plan_folds(c, BenchmarkConfig(train=TRAIN, min_images=5, protocols=["loso"]),
                                               "orig")}
    s3 = folds["s3"]
    assert s3.completed == "reals" and set(y[s3.test]) == {0, 1}
    added = s3.test[src[s3.test] != "s3"]
    assert (y[added] == 0).all() and set(benchmark.SplitSpec().labels(c)[added]) == {"test"}
    assert folds["s0"].completed == ""
    with pytest.raises(ValueError, match="unknown variant"):
        BenchmarkConfig(variants=["nope"])


def test_ensemble_variant_averages_heads_that_differ_only_in_seed(cache, monkeypatch):
    seeds = []
    real_fit = Detector.fit_rows.__func__

    def spy(cls, c, tr, va, **kw):
        seeds.append((kw["feature_set"], kw["config"].seed, len(tr)))
        return real_fit(cls, c, tr, va, **kw)

    monkeypatch.setattr(Detector, "fit_rows", classmethod(spy))
    cfg = BenchmarkConfig(train=TRAIN, min_images=10, protocols=["loso"], only=["s0"], ensemble_size=3, seed=7)
    (fold,) = plan_folds(cache, cfg, "norm:256:90")
    views = cache.columns("view")["view"].astype(str).to_numpy()
    det = benchmark.train_variant(cache, fold, "views+ensemble", cfg, views)
    assert [(fs, s) for fs, s, _ in seeds] == [("image", 7), ("image", 8), ("image", 9)]
    assert len({n for _, _, n in seeds}) == 1 and seeds[0][2] == len(fold.train)  # every view, the same rows
    assert det.extra["fusion"]["method"] == "mean" and len(det.extra["fusion"]["weights"]) == 3
    members = [real_fit(Detector, cache, fold.train, fold.val, feature_set="image",
                        config=TrainConfig(**{**TRAIN, "seed": s})) for s in (7, 8, 9)]
    X = det.features(cache, fold.test)
    z = np.stack([m.logits(X) for m in members], 1)
    w, b = np.asarray(det.extra["fusion"]["weights"]), det.extra["fusion"]["bias"]
    np.testing.assert_allclose(det.logits(X), z @ w + b, rtol=1e-4, atol=1e-4)  # the members, averaged
    seeds.clear()
    benchmark.train_variant(cache, fold, "ensemble", cfg, views)
    assert len(seeds) == 3 and seeds[0][2] < len(fold.train)  # original view only


def test_balance_variants_train_with_source_balanced_batches(cache):
    cfg = BenchmarkConfig(train=TRAIN, min_images=10, protocols=["loso"], only=["s0"], balance="sqrt")
    (fold,) = plan_folds(cache, cfg, "norm:256:90")
    views = cache.columns("view")["view"].astype(str).to_numpy()
    det = benchmark.train_variant(cache, fold, "views+balance", cfg, views)
    assert det.train_config["balance"] == "sqrt"
    assert benchmark.train_variant(cache, fold, "views", cfg, views).train_config["balance"] == "none"
    with pytest.raises(ValueError, match="'source', 'sqrt' or 'content'"):
        BenchmarkConfig(balance="none")


def test_noise_variants_train_with_feature_noise_and_the_others_without(cache):
    cfg = BenchmarkConfig(train=TRAIN, min_images=10, protocols=["loso"], only=["s0"], noise=0.3)
    (fold,) = plan_folds(cache, cfg, "norm:256:90")
    views = cache.columns("view")["view"].astype(str).to_numpy()
    assert benchmark.train_variant(cache, fold, "views+noise", cfg, views).train_config["feature_noise"] == 0.3
    assert benchmark.train_variant(cache, fold, "views", cfg, views).train_config["feature_noise"] == 0.0
    with pytest.raises(ValueError, match="noise must be >= 0"):
        BenchmarkConfig(noise=-1.0)


def test_degraded_variant_never_trains_on_the_original_files(cache, monkeypatch):
    seen = []
    real_fit = Detector.fit_rows.__func__

    def spy(cls, c, tr, va, **kw):
        seen.append((set(views[tr]), set(views[va])))
        return real_fit(cls, c, tr, va, **kw)

    monkeypatch.setattr(Detector, "fit_rows", classmethod(spy))
    cfg = BenchmarkConfig(train=TRAIN, min_images=10, protocols=["loso"], only=["s0"])
    (fold,) = plan_folds(cache, cfg, "norm:256:90")
    views = cache.columns("view")["view"].astype(str).to_numpy()
    for name in ("degraded", "views", "baseline"):
        benchmark.train_variant(cache, fold, name, cfg, views)
    assert seen == [({"norm:256:90"}, {"norm:256:90"}), ({"orig", "norm:256:90"}, {"orig", "norm:256:90"}),
                    ({"orig"}, {"orig"})]


def test_seeds_average_each_seeds_difference_and_widen_the_ci_by_their_spread(cache, tmp_path):
    """``seeds=2`` is the mean of the runs with seed 0 and with seed 1 (point estimates), shows
    each seed on its own, keeps every seed's scores, and its CIs also resample the seeds."""
    common = dict(train=TRAIN, min_images=10, variants=["baseline", "views"], n_boot=200, protocols=["loso"],
                  only=["s0", "s1", "s2"])
    one = [run_benchmark(cache, BenchmarkConfig(**common, seed=s)) for s in (0, 1)]
    both = run_benchmark(cache, BenchmarkConfig(**common, seeds=2))

    def mean_delta(result, name="views", ref="baseline"):
        d = result["deltas"]
        return d[(d.variant == name) & (d.vs == ref) & (d.view == "norm:256:90")].set_index("held_out").delta_auc

    np.testing.assert_allclose(mean_delta(both), (mean_delta(one[0]) + mean_delta(one[1])) / 2, atol=1e-12)
    np.testing.assert_allclose(mean_delta(both, "probe"), (mean_delta(one[0], "probe") + mean_delta(one[1], "probe")) / 2,
                               atol=1e-12)  # one probe against each seed's baseline
    seeds = both["seeds"]
    per_seed = seeds[(seeds.variant == "views") & (seeds.vs == "baseline")].set_index("seed").mean_delta_auc
    for s in (0, 1):
        assert per_seed[s] == pytest.approx(mean_delta(one[s]).mean(), abs=1e-12)
    folds = both["folds"]
    assert sorted(folds[folds.variant == "views"].seed.unique()) == [0, 1]
    assert set(folds[folds.variant == "probe"].seed) == {0}
    summary = both["summary"].set_index(["view", "variant"])
    base = folds[(folds.variant == "baseline") & (folds.view == "norm:256:90")]
    assert summary.loc[("norm:256:90", "baseline"), "mean_auc"] == pytest.approx(base.auc.mean())
    assert summary.loc[("norm:256:90", "baseline"), "folds"] == 3
    assert {"baseline", "baseline@1", "views", "views@1", "probe"} <= set(both["scores"].columns)
    assert len(one[0]["seeds"]) == 0

    from clipdetect.eval.benchmark_report import save_benchmark
    save_benchmark(both, tmp_path / "b", {"version": "t"})
    md = (tmp_path / "b" / "benchmark.md").read_text()
    assert "training seeds 0–1" in md and "Each training seed on its own" in md


def test_combining_seeds_resamples_them():
    from clipdetect.eval.benchmark import combine_seed_draws

    same = (0.8, 0.7, np.full(1000, 0.1))
    assert combine_seed_draws([same]) is same
    a, b, d = combine_seed_draws([(0.8, 0.7, np.zeros(1000)), (0.9, 0.7, np.full(1000, 0.2))], seed=3)
    assert (a, b) == (pytest.approx(0.85), 0.7)
    # two seeds 0.2 apart: a draw is the mean of two seeds picked with replacement (0, 0.1 or 0.2)
    assert set(np.round(d, 12)) == {0.0, 0.1, 0.2}
    assert 0.2 < (d == 0.1).mean() * 1.0 < 0.8 and np.percentile(d, 2.5) == 0 and np.percentile(d, 97.5) == 0.2
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        BenchmarkConfig(seeds=0)
