"""DetectorClassifier: scikit-learn's estimator checks, model selection on the bundled cache, persistence."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.utils.estimator_checks import check_classifiers_train, parametrize_with_checks

from clipdetect.features.cache import FeatureCache
from clipdetect.models.detector import Detector
from clipdetect.models.estimator import DetectorClassifier, holdout_split
from clipdetect.models.train import TrainConfig
from clipdetect.core.resources import SAMPLE_CACHE
from helpers.training import FAST_ESTIMATOR

SAMPLE = SAMPLE_CACHE

@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@parametrize_with_checks([DetectorClassifier(**FAST_ESTIMATOR)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_check_classifiers_train_with_fixed_threshold():
    check_classifiers_train("DetectorClassifier", DetectorClassifier(**FAST_ESTIMATOR, threshold=0.5))


@pytest.fixture(scope="module")
def sample():
    cache = FeatureCache(SAMPLE)
    rows = np.arange(0, len(cache), 4)  # 512 rows keep the folds quick
    return cache.features("image", rows), cache.labels(rows)


@pytest.mark.slow  # fifteen fits on the sample cache
def test_cross_val_score_and_grid_search_on_the_sample_cache(sample):
    X, y = sample
    est = DetectorClassifier(epochs=8, batch_size=128, width=32, depth=1, lr=1e-2)
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scores = cross_val_score(est, X, y, cv=cv, scoring="roc_auc")
    assert scores.shape == (3,) and (scores > 0.8).all()  # real CLIP features separate CIFAKE well
    grid = GridSearchCV(est, {"gamma": [0.1, 0.9], "rho": [0.0, 0.05]}, cv=cv, scoring="roc_auc").fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert set(grid.best_params_) == {"gamma", "rho"}
    assert grid.best_estimator_.detector_.train_config["gamma"] == grid.best_params_["gamma"]
    assert grid.score(X, y) > 0.8


def test_none_parameters_take_the_train_config_defaults():
    assert DetectorClassifier().train_config() == TrainConfig()
    cfg = DetectorClassifier(gamma=0.5, sam=False, random_state=3).train_config()
    assert (cfg.gamma, cfg.sam, cfg.seed, cfg.alpha) == (0.5, False, 3, TrainConfig().alpha)


def test_any_two_labels_map_to_classes(sample):
    X, y = sample
    names = np.where(y == 1, "fake", "real")
    est = DetectorClassifier(**FAST_ESTIMATOR, threshold="validation").fit(X, names)
    assert list(est.classes_) == ["fake", "real"]  # sorted: "real" plays label 1 of the bundle
    assert est.predict_proba(X).shape == (len(X), 2)
    assert set(est.predict(X)) <= {"fake", "real"}
    assert est.score(X, names) > 0.7
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        DetectorClassifier(**FAST_ESTIMATOR).fit(X[:9], np.arange(9) % 3)


def test_decision_function_is_the_margin_to_the_threshold(sample):
    X, y = sample
    est = DetectorClassifier(**FAST_ESTIMATOR, threshold="validation").fit(X, y)
    d, p = est.decision_function(X), est.predict_proba(X)[:, 1]
    assert est.threshold_ != 0.5 and est.threshold_ == est.detector_.threshold
    np.testing.assert_array_equal(est.predict(X), (d > 0).astype(int))
    np.testing.assert_array_equal(est.predict(X), est.detector_.predict(X))
    assert np.all(np.diff(p[np.argsort(d)]) >= 0)  # same ranking
    fixed = DetectorClassifier(**FAST_ESTIMATOR, threshold=0.5).fit(X, y)
    np.testing.assert_array_equal(fixed.predict(X), fixed.predict_proba(X).argmax(1))


def test_save_and_load_use_the_bundle_not_pickle(sample, tmp_path):
    X, y = sample
    names = np.where(y == 1, "ai", "photo")
    est = DetectorClassifier(**FAST_ESTIMATOR, gamma=0.3).fit(X, names)
    est.save(tmp_path / "det")
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == ["detector.json", "model.safetensors"]
    back = DetectorClassifier.load(tmp_path / "det")
    assert back.get_params() == est.get_params() and list(back.classes_) == ["ai", "photo"]
    assert back.n_features_in_ == X.shape[1] and back.threshold_ == est.threshold_
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    assert isinstance(Detector.load(tmp_path / "det"), Detector)


def test_cli_bundle_wraps_with_its_train_config(tmp_path, sample):
    X, y = sample
    config = TrainConfig(epochs=2, batch_size=128, width=8, depth=1, gamma=0.7, seed=5)
    det = Detector.fit(X, y, config=config)
    est = DetectorClassifier.load(det.save(tmp_path / "cli"))
    assert (est.gamma, est.random_state, est.width) == (0.7, 5, 8) and list(est.classes_) == [0, 1]
    np.testing.assert_array_equal(est.predict(X), det.predict(X))


def test_unfitted_clone_and_pickle_carry_only_parameters():
    est = DetectorClassifier(rho=0.1, epochs=2)
    again = pickle.loads(pickle.dumps(clone(est)))
    assert again.get_params() == est.get_params() and not hasattr(again, "detector_")


def test_holdout_split_is_stratified_and_falls_back_to_none():
    y = np.array([0] * 20 + [1] * 10)
    tr, va = holdout_split(y, 0.2, seed=0)
    assert (np.bincount(y[va]) == [4, 2]).all()
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 30
    tr, va = holdout_split(np.array([0, 0, 1, 1]), 0.2, seed=0)
    assert len(va) == 0 and len(tr) == 4


def test_parameters_are_every_train_config_field():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed"}
    assert set(DetectorClassifier().get_params()) == fields | {"random_state", "threshold"}
    assert DetectorClassifier(auc_pairs="group", calibration="none").train_config().calibration == "none"
