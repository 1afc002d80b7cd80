import json
from dataclasses import replace
import math

import numpy as np
import pytest

from helpers.training import FAST_LINEAR, fit_on_synthetic

from clipdetect.eval.calibrate import calibrate_detector, calibrate_scores
from clipdetect.cli.main import main
from clipdetect.models.calibration import Calibration
from clipdetect.models.detector import Detector
from clipdetect.core.metrics import expected_calibration_error
from clipdetect.features.splits import resolve_split_rows


def _overconfident(n=4000, seed=0):
    """Logits 4x too large: a well-specified model needs T = 4."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z_true = rng.normal(size=n) + 2.0 * (2 * y - 1)
    y = (rng.random(n) < 1 / (1 + np.exp(-z_true))).astype(int)  # labels drawn from the true probability
    return 4.0 * z_true, y


def test_temperature_recovers_scale_and_improves_ece():
    z, y = _overconfident()
    res = calibrate_scores(z, y, target_fpr=0.05, method="temperature")
    assert res.temperature == pytest.approx(4.0, rel=0.1) and res.fit["applied"]
    assert res.ece_after < res.ece_before and res.brier_after < res.brier_before
    platt = calibrate_scores(z, y, target_fpr=0.05, method="platt")
    assert platt.calibration["method"] == "platt" and platt.calibration["scale"] == pytest.approx(0.25, rel=0.1)


def test_threshold_meets_target_fpr_on_reals_only():
    z, y = _overconfident()
    res = calibrate_scores(z, y, target_fpr=0.01)
    p = 1 / (1 + np.exp(-z))
    fpr = (p[y == 0] > res.threshold).mean()
    assert fpr <= 0.01 and res.val_fpr == pytest.approx(fpr)
    # the tightest such threshold: exactly floor(1% of the reals) score above it
    assert (p[y == 0] > res.threshold).sum() == math.floor(0.01 * (y == 0).sum())
    # the fakes' labels do not move the threshold
    flipped = calibrate_scores(np.concatenate([z, np.full(50, 99.0)]), np.concatenate([y, np.ones(50, int)]),
                               target_fpr=0.01)
    assert flipped.threshold == res.threshold


def test_keep_threshold_preserves_decisions_when_temperature_changes():
    z, y = _overconfident()
    res = calibrate_scores(z, y, target_fpr=None, method="platt", old_threshold=0.7)
    before = 1 / (1 + np.exp(-z)) > 0.7
    after = Calibration.from_json(res.calibration).probability(z) > res.threshold
    np.testing.assert_array_equal(before, after)


def test_no_validation_reals_is_an_error():
    with pytest.raises(ValueError, match="no real"):
        calibrate_scores(np.array([1.0, 2.0]), np.array([1, 1]))


@pytest.fixture
def bundle(tmp_path):
    cache, det = fit_on_synthetic(tmp_path / "cache", replace(FAST_LINEAR, epochs=2, lr=None), n=400, dim=16,
                                  shift=0.8)
    det.save(tmp_path / "det")
    return tmp_path, cache, det


def test_calibrate_detector_uses_validation_split_and_refuses_test(bundle):
    _, cache, det = bundle
    res = calibrate_detector(det, cache, target_fpr=0.05, method="temperature")
    val = resolve_split_rows(cache, "val")
    assert res.n_val == len(val) and res.n_val_real == int((cache.labels(val) == 0).sum())
    x = cache.features("image", val)
    reals = cache.labels(val) == 0
    assert det.predict(x)[reals].mean() <= 0.05
    assert det.extra["calibration"]["target_fpr"] == 0.05 and det.calibration.to_json() == res.calibration
    assert det.threshold_target["value"] == 0.05 and det.threshold_target["n_reals"] == res.n_val_real
    with pytest.raises(ValueError, match="test"):
        calibrate_detector(det, cache, split="test")


def test_calibrate_cli_resaves_bundle(bundle, capsys):
    root, _, _ = bundle
    assert main(["calibrate", str(root / "det"), str(root / "cache"), "--target-fpr", "0.02",
                 "--temperature", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    loaded = Detector.load(root / "det")
    assert loaded.threshold == pytest.approx(out["threshold"])
    assert loaded.calibration.to_json() == out["calibration"]
    assert loaded.extra["calibration"]["n_val_real"] == out["n_val_real"]
    assert out["val_fpr"] <= 0.02 and out["n_val"] < 100 and out["ece_after"] is None  # too few rows for an ECE
    assert out["not_shown"] == {"ece": "needs ≥ 100 rows"}
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
