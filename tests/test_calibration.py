"""Platt scaling, temperature, their small-sample guards and the target-FPR threshold
(clipdetect.models.calibration), and old bundles with a temperature."""
import json
import logging
import math

import numpy as np
import pytest

from clipdetect.core.metrics import expected_calibration_error
from clipdetect.models.calibration import MIN_ROWS, Calibration, fit_calibration, fit_platt, fit_temperature
from clipdetect.models.thresholds import fit_on_validation, describe_target
from clipdetect.models.detector import Detector
from clipdetect.models.heads import HeadConfig, create_head


def _shifted(n=4000, scale=4.0, offset=-1.5, seed=0):
    """Logits whose true probability is sigmoid(z / scale ... ): Platt should find (1/scale, shift)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=6.0, size=n)
    p = 1 / (1 + np.exp(-(z / scale + offset)))
    return z, (rng.random(n) < p).astype(int)


def test_fit_temperature_recovers_known_value():
    rng = np.random.default_rng(10)
    z = rng.normal(scale=4.0, size=20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z / 2.5))).astype(int)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.1)


def test_platt_recovers_scale_and_offset_a_temperature_cannot():
    z, y = _shifted()
    scale, offset = fit_platt(z, y)
    assert scale == pytest.approx(0.25, rel=0.1) and offset == pytest.approx(-1.5, abs=0.15)
    cal, rec = fit_calibration(z, y, "platt")
    t_cal, _ = fit_calibration(z, y, "temperature")
    assert rec["applied"] and cal.method == "platt"
    # the offset matters: Platt's ECE beats the offset-free temperature's on the same rows
    assert rec["ece_after"] < expected_calibration_error(y, t_cal.probability(z)) < rec["ece_before"]


def test_calibration_is_not_applied_on_too_few_rows(caplog):
    z, y = _shifted(n=MIN_ROWS - 1)
    with caplog.at_level(logging.WARNING, "clipdetect"):
        cal, rec = fit_calibration(z, y, "platt")
    assert cal.method == "none" and not rec["applied"] and "too few validation rows" in rec["reason"]
    assert "not applied" in caplog.text


def test_calibration_on_a_bound_is_not_applied():
    # perfectly separated, huge margin: Platt wants the smallest scale it may take
    y = np.repeat([0, 1], 100)
    z = np.where(y == 1, 5000.0, -5000.0) + np.random.default_rng(0).normal(size=200)
    cal, rec = fit_calibration(z, y, "platt")
    assert cal.method == "none" and "bound" in rec["reason"]


def test_calibration_that_makes_ece_worse_is_not_applied(caplog):
    # 120 noisy rows: the NLL-optimal Platt fit bins worse than the raw logits here
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 60)
    z = rng.normal(size=120) * 2 + (2 * y - 1)
    with caplog.at_level(logging.WARNING, "clipdetect"):
        cal, rec = fit_calibration(z, y, "platt")
    assert cal.method == "none" and not rec["applied"] and rec["ece_after"] > rec["ece_before"]
    assert "made the validation ECE worse" in rec["reason"] and "not applied" in caplog.text


def test_threshold_targets_fpr_on_validation_reals():
    z, y = _shifted(seed=1)
    cal, thr, target, metrics = fit_on_validation(z, y, target_fpr=0.05)
    p = cal.probability(z)
    assert target["metric"] == "fpr" and target["value"] == 0.05 and target["on"] == "validation reals"
    assert target["n_reals"] == int((y == 0).sum()) and target["resolved"]
    assert (p[y == 0] > thr).mean() == pytest.approx(target["achieved_fpr"]) and target["achieved_fpr"] <= 0.05
    assert (p[y == 0] > thr).sum() == math.floor(0.05 * (y == 0).sum())  # the tightest such threshold
    assert metrics["calibration"]["applied"] and "FPR 0.05 on" in describe_target(target)
    cal2, thr2, target2, _ = fit_on_validation(z, y, threshold_rule="balanced")
    assert target2["metric"] == "balanced_accuracy" and thr2 != thr


def test_unresolvable_target_is_stated(caplog):
    z = np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 3.0])
    y = np.array([0, 0, 0, 1, 1, 1])
    with caplog.at_level(logging.WARNING, "clipdetect"):
        cal, thr, target, _ = fit_on_validation(z, y, target_fpr=0.05)
    assert cal.method == "none" and target["resolved"] is False and target["n_reals"] == 3
    assert "cannot resolve" in caplog.text and "needs >= 20" in describe_target(target)
    assert (cal.probability(z[y == 0]) > thr).sum() == 0


def test_calibration_maps_back_and_forth():
    for cal in (Calibration.platt(0.3, -1.2), Calibration.of_temperature(2.0), Calibration()):
        for p in (0.01, 0.5, 0.97):
            assert float(cal.probability(cal.logit_of(p))) == pytest.approx(p)
        assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal


def _bundle_json(tmp_path, det, **fields):
    det.save(tmp_path)
    cfg = json.loads((tmp_path / "detector.json").read_text())
    for k in ("calibration", "threshold_target"):
        cfg.pop(k, None)
    cfg.update(fields, version=1)
    (tmp_path / "detector.json").write_text(json.dumps(cfg))
    return tmp_path


def test_old_bundle_with_a_temperature_scores_exactly_as_before(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    hc = HeadConfig(kind="linear", in_dim=8)
    det = Detector(head=create_head(hc), head_config=hc, feature_set="image", backbone={}, threshold=0.4)
    path = _bundle_json(tmp_path / "old", det, temperature=1.7)
    old = Detector.load(path)
    X = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    z = old.logits(X).astype(np.float64)
    np.testing.assert_array_equal(old.probability(X), 1.0 / (1.0 + np.exp(-(z / 1.7))))  # the old formula
    assert old.temperature == 1.7 and old.calibration.method == "temperature"
    assert np.array_equal(old.predict(X), (old.probability(X) > 0.4).astype(int))
    again = json.loads((old.save(tmp_path / "resaved") / "detector.json").read_text())
    assert again["version"] == 1 and again["temperature"] == 1.7  # still readable by older versions


def test_platt_bundle_round_trip_is_version_2(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    hc = HeadConfig(kind="linear", in_dim=8)
    target = {"metric": "fpr", "value": 0.05, "on": "validation reals", "n_reals": 400}
    det = Detector(head=create_head(hc), head_config=hc, feature_set="image", backbone={}, threshold=0.3,
                   calibration=Calibration.platt(0.5, -0.25), threshold_target=target)
    cfg = json.loads((det.save(tmp_path) / "detector.json").read_text())
    assert cfg["version"] == 2 and "temperature" not in cfg
    assert cfg["calibration"] == {"method": "platt", "scale": 0.5, "offset": -0.25}
    back = Detector.load(tmp_path)
    X = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    np.testing.assert_array_equal(back.probability(X), det.probability(X))
    assert back.threshold_target == target and back.temperature is None
    assert back.logit_threshold == pytest.approx((math.log(0.3 / 0.7) + 0.25) / 0.5)
