"""The step-planned schedule, the logistic-regression baseline it must beat, and the guards
that keep evaluation, extraction and bundles from misleading silently."""
import logging
import os

import numpy as np
import pytest

from helpers.synthetic import write_synthetic_cache
from helpers.training import fit_on_synthetic

from clipdetect.core.tables import to_markdown
from clipdetect.data.perturb import ListSource
from clipdetect.data.sources import Sample
from clipdetect.eval.compare import compare_reports
from clipdetect.eval.evaluate import evaluate_detector
from clipdetect.features.backbones import BackboneError, create_backbone
from clipdetect.features.cache import FeatureCache
from clipdetect.data.sampling import SampledSource, check_limit_prefix
from clipdetect.models.baseline import fit_probe_on_cache
from clipdetect.models.detector import Detector
from clipdetect.models.predict import resolve_backbone
from clipdetect.models.schedule import auto_batch_size, plan_schedule
from clipdetect.models.sources import ArraySource
from clipdetect.models.train import TrainConfig, train
from clipdetect.core.resources import SAMPLE_CACHE

SAMPLE = SAMPLE_CACHE
#: TrainConfig() before the schedule was planned from the data (the paper's recipe)
OLD_DEFAULTS = dict(loss="cvar+auc", gamma=0.1, alpha=0.8, margin=0.6, p=2.0, sam=True, rho=0.05, adaptive=False,
                    lr=1e-3, weight_decay=0.01, batch_size=2048, epochs=32, schedule="cosine", head="mlp", depth=3,
                    width=None, dropout=0.335, seed=0, patience=8, max_steps=None, eval_batch_size=8192,
                    device="cpu", val_fraction=0.15, test_fraction=0.15, split_seed=0)


def test_auto_batch_and_plan_follow_the_training_set_size():
    assert [auto_batch_size(n) for n in (10, 300, 1478, 20_000, 10**6)] == [32, 32, 128, 2048, 2048]
    small = plan_schedule(TrainConfig(), 1478)
    assert small.batch_size == 128 and small.total_steps >= 500 and small.epochs >= 32
    big = plan_schedule(TrainConfig(), 10**6)  # a large cache keeps the paper's batch and 32 epochs
    assert (big.batch_size, big.epochs, big.total_steps) == (2048, 32, 32 * 489)
    assert plan_schedule(TrainConfig(head="linear"), 1478).lr == 0.1 and small.lr == 1e-3
    tiny = plan_schedule(TrainConfig(), 86)  # a tiny cache: 32 epochs of 3 steps, not 500 SAM steps
    assert (tiny.batch_size, tiny.steps_per_epoch, tiny.total_steps) == (32, 3, 96)
    assert plan_schedule(TrainConfig(), 600).total_steps == 320  # 32 epochs of 10 steps > the 300-step floor
    assert plan_schedule(TrainConfig(), 1000).total_steps >= 500
    steps = plan_schedule(TrainConfig(steps=300, batch_size=100), 1000)
    assert (steps.total_steps, steps.epochs, steps.horizon) == (300, 30, 300)
    with pytest.raises(ValueError, match="epochs .* or steps"):
        TrainConfig(epochs=3, steps=10)


def test_paper_preset_is_the_old_default_config():
    paper = TrainConfig.preset("paper").to_dict()
    assert {k: paper[k] for k in OLD_DEFAULTS} == OLD_DEFAULTS and paper["steps"] is None
    plan = plan_schedule(TrainConfig.preset("paper"), 1478)
    assert (plan.batch_size, plan.epochs, plan.total_steps, plan.patience, plan.lr) == (2048, 32, 32, 8, 1e-3)
    assert TrainConfig.preset("paper", steps=100).epochs is None  # a step budget replaces the preset's epochs


def test_few_steps_warn(caplog, one_torch_thread):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 8)).astype(np.float32), np.arange(200) % 2
    with caplog.at_level(logging.WARNING, logger="clipdetect.models.train"):
        r = train(ArraySource(X, y), config=TrainConfig.preset("paper", epochs=3, width=8), progress=False)
    assert r.steps == 3 and "only 3 optimiser steps" in caplog.text
    assert r.schedule["batch_size"] == 2048


@pytest.mark.slow
def test_new_defaults_beat_logistic_regression_on_the_sample_cache():
    cache = FeatureCache(SAMPLE)
    probe = fit_probe_on_cache(cache)
    assert probe.extra["probe"]["n_iter"] < probe.extra["probe"]["max_iter"]  # converged
    paper = Detector.fit_cache(cache, config=TrainConfig())
    linear = Detector.fit_cache(cache, config=TrainConfig(head="linear", loss="bce", sam=False))
    reports = {n: evaluate_detector(d, cache, split="test", n_boot=500, by=())
               for n, d in (("probe", probe), ("paper", paper), ("linear", linear))}
    cmp = compare_reports(reports, n_boot=500, reference="probe").set_index("detector")
    assert paper.metrics["steps"] >= 200 and paper.calibration.method == "platt"
    # AUC(paper) - AUC(probe): its paired 95% CI reaches 0 or above (not worse than the probe)
    assert cmp.loc["paper", "delta_auc_hi"] >= 0, cmp
    assert cmp.loc["linear", "auc"] >= cmp.loc["probe", "auc"] - 0.01, cmp  # the linear head converges


def test_evaluation_refuses_one_class_and_scores_foreign_train_caches_whole(tmp_path, caplog):
    cache, det = fit_on_synthetic(tmp_path / "c", TrainConfig(head="linear", loss="bce", sam=False, epochs=5),
                                  n=300, dim=8, shift=2.0)
    assert evaluate_detector(det, cache, split="auto", n_boot=0).config["n_rows"] < 100  # its own test rows
    other = write_synthetic_cache(tmp_path / "held", n=120, dim=8, shift=2.0, seed=5)
    rep = evaluate_detector(det, other, split="auto", n_boot=0)
    assert rep.config["n_rows"] == 120 and "scoring all 120 rows" in rep.to_markdown()
    with caplog.at_level(logging.WARNING):
        sub = evaluate_detector(det, other, split="test", n_boot=0)
    assert sub.config["n_rows"] < 120 and "hash subset" in caplog.text
    reals = np.flatnonzero(other.labels(np.arange(len(other))) == 0)
    with pytest.raises(ValueError, match=f"{reals.size} real and 0 fake rows"):
        evaluate_detector(det, other, rows=reals, n_boot=0)
    md = to_markdown(rep.table, columns=["n_real", "tpr@fpr=1%", "tpr@fpr=0.1%"])
    assert "n/a (needs ≥ 1000 reals)" in md and "n/a (needs ≥ 100 reals)" in md


def _samples(labels):
    return ListSource([Sample(key=str(i), image=b"", label=int(v)) for i, v in enumerate(labels)])


def test_limit_on_sorted_source_warns_and_sampling_balances(caplog):
    src = _samples([0] * 80 + [1] * 20)
    with caplog.at_level(logging.WARNING):
        assert "100" not in (check_limit_prefix(src, 40) or "") and "--shuffle-seed" in caplog.text
    assert check_limit_prefix(_samples([0, 1] * 50), 40) is None
    s = SampledSource(src, 30, seed=1, stratify=True)
    labels = [x.label for x in s.iterate(0)]
    assert len(labels) == s.size() == 30 and sum(labels) == 15
    assert [x.key for x in s.iterate(5)] == [x.key for x in s.iterate(0)][5:]
    assert SampledSource(src, 30, seed=1).describe()["sample"] == {"n": 30, "seed": 1, "stratify": False}
    with pytest.raises(ValueError, match="20 fake"):
        SampledSource(src, 60, seed=0, stratify=True)


def test_bundle_on_relative_checkpoint_loads_from_anywhere(tmp_path, tiny_backbone, monkeypatch):
    import torch

    (tmp_path / "proj" / "weights").mkdir(parents=True)
    torch.save(tiny_backbone.model.state_dict(), tmp_path / "proj" / "weights" / "tiny.pt")
    monkeypatch.chdir(tmp_path / "proj")
    bb = create_backbone("clipdetect-tiny-vit:weights/tiny.pt")
    ident = {**bb.identity, "spec": "clipdetect-tiny-vit:weights/tiny.pt"}
    assert os.path.isabs(ident["checkpoint_path"]) and len(ident["sha256"]) == 64
    det = Detector(head=torch.nn.Linear(bb.embed_dim, 1), head_config=None, feature_set="image", backbone=ident)
    monkeypatch.chdir(tmp_path)  # another working directory: found through the recorded absolute path
    assert resolve_backbone(det).identity["sha256"] == ident["sha256"]
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "proj" / "weights" / "tiny.pt").rename(moved / "tiny.pt")
    with pytest.raises(BackboneError, match="CLIPDETECT_WEIGHTS"):
        resolve_backbone(det)
    monkeypatch.setenv("CLIPDETECT_WEIGHTS", str(moved))  # a folder holding the file, checked by hash
    assert resolve_backbone(det).identity["sha256"] == ident["sha256"]
    (moved / "tiny.pt").write_bytes(b"not the same file")
    with pytest.raises(BackboneError, match="cannot find the checkpoint 'tiny.pt'"):
        resolve_backbone(det)
