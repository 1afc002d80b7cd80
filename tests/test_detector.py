import json
import pickle

import numpy as np
import pytest

from clipdetect.models.bundle import DetectorError
from clipdetect.models.detector import Detector, fit_detector
from clipdetect.models.thresholds import choose_threshold
from clipdetect.models.train import TrainConfig

from helpers.synthetic import separable_features, synthetic_identity, write_synthetic_cache
from helpers.training import FAST


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def trained(synthetic_detector):
    return synthetic_detector


def test_choose_threshold_maximises_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.9])
    t = choose_threshold(y, p)
    assert 0.3 < t < 0.6  # balanced accuracy 0.875 (one real above), vs 0.75 at 0.65
    assert choose_threshold([0, 1], [0.2, 0.9]) == pytest.approx(0.55)
    assert choose_threshold([1, 1], [0.2, 0.9]) == 0.5


def test_fit_cache_uses_derived_splits_and_threshold(trained):
    cache, det = trained
    assert det.extra["splits"]["val"] > 0 and det.extra["splits"]["test"] > 0
    assert sum(det.extra["splits"].values()) == len(cache)
    assert det.metrics["val"]["auc"] > 0.95 and det.metrics["best_epoch"] >= 1
    assert det.backbone == cache.backbone and det.feature_set == "image"
    assert 0 < det.threshold < 1 and det.threshold != 0.5
    X = det.features(cache, np.arange(20))
    proba = det.probability(X)
    assert proba.shape == (20,) and ((proba >= 0) & (proba <= 1)).all()
    assert np.array_equal(det.predict(X), (proba > det.threshold).astype(int))
    z = det.logits(X)
    cal = det.metrics["calibration"]  # 40 validation rows: too few for a Platt fit, said and not applied
    assert cal["method"] == "platt" and not cal["applied"] and "too few validation rows" in cal["reason"]
    assert det.calibration.method == "none" and det.temperature == 1.0
    assert np.allclose(det.probability(X), 1 / (1 + np.exp(-z)), atol=1e-6)
    target = det.threshold_target  # the threshold lets at most 5 % of the validation reals through
    assert target["metric"] == "fpr" and target["value"] == 0.05 and target["n_reals"] == cal["n_real"]
    assert target["achieved_fpr"] <= 0.05
    det2 = Detector(head=det.head, head_config=det.head_config, feature_set="image", backbone=det.backbone,
                    threshold=det.threshold, temperature=det.temperature).with_temperature(2.5)
    assert np.allclose(det2.probability(X), 1 / (1 + np.exp(-z / 2.5)), atol=1e-6)
    assert np.array_equal(det2.predict(X), det.predict(X))


def test_save_load_round_trip(trained, tmp_path):
    cache, det = trained
    out = det.save(tmp_path / "det")
    assert sorted(p.name for p in out.iterdir()) == ["detector.json", "model.safetensors"]
    raw = (out / "detector.json").read_text()

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    cfg = json.loads(raw, parse_constant=no_constants)
    assert cfg["feature_set"] == "image" and cfg["train_config"]["loss"] == "cvar+auc"
    back = Detector.load(out)
    X = det.features(cache, np.arange(len(cache)))
    assert np.array_equal(back.logits(X), det.logits(X))
    assert back.threshold == det.threshold and back.backbone == det.backbone
    assert back.metrics == json.loads(json.dumps(cfg["metrics"]))


def test_load_refuses_pickle(trained, tmp_path):
    _, det = trained
    out = det.save(tmp_path / "det")
    with open(out / "model.safetensors", "wb") as f:
        pickle.dump(det.head.state_dict(), f)
    with pytest.raises(DetectorError, match="not a safetensors file.*pickle.*never unpickled"):
        Detector.load(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(DetectorError, match="model.safetensors is missing"):
        Detector.load(out)


def test_backbone_mismatch_is_refused(trained, tmp_path):
    _, det = trained
    other = write_synthetic_cache(tmp_path / "other", n=20, identity=synthetic_identity(16, arch="other-arch"))
    with pytest.raises(DetectorError, match="trained on embeddings of backbone 'synthetic:random'.*other-arch"):
        det.features(other, np.arange(5))
    with pytest.raises(DetectorError, match=r"expects \[N, 16\]"):
        det.logits(np.zeros((3, 8), np.float32))


def test_fit_makes_new_detectors_and_never_changes_one():
    X, y = separable_features(400, 16, shift=3.0, seed=0)
    Xv, yv = separable_features(200, 16, shift=3.0, seed=1)
    det = Detector.fit(X, y, X_val=Xv, y_val=yv, config=FAST)
    assert isinstance(det, Detector) and det.metrics["val"]["auc"] > 0.95
    assert np.array_equal(fit_detector(X, y, X_val=Xv, y_val=yv, config=FAST).logits(Xv),
                          det.logits(Xv))
    before = det.logits(Xv)
    again = Detector.fit(X[:200], y[:200], config=TrainConfig.from_dict(det.train_config))  # retrain: a new one
    assert again is not det and again.threshold == 0.5 and not np.array_equal(again.logits(Xv), before)
    assert np.array_equal(det.logits(Xv), before)
    hot = det.with_temperature(2.0)
    assert hot is not det and det.calibration.method == "platt" and np.array_equal(hot.predict(Xv), det.predict(Xv))


def test_cli_train_on_tiny_cache(tmp_path, capsys):
    from clipdetect.cli.main import main

    write_synthetic_cache(tmp_path / "c", n=200, shift=3.0)
    args = ["train", str(tmp_path / "c"), "--out", str(tmp_path / "det"), "--epochs", "3", "--batch-size",
            "64", "--lr", "0.01", "--width", "32", "--loss", "cvar", "--no-sam", "--no-progress"]
    assert main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test"]["auc"] > 0.9 and summary["val"]["n"] == summary["splits"]["val"]
    assert summary["train"]["epochs_run"] == 3
    # ~30 test reals: TPR at 0.1 % (and 1 %) FPR are not computed from them, and say why
    assert summary["test"]["tpr@fpr=0.1%"] is None and summary["test"]["tpr@fpr=1%"] is None
    assert summary["test"]["not_shown"]["tpr@fpr=0.1%"] == "needs ≥ 1000 reals"
    assert summary["threshold_target"]["metric"] == "fpr" and summary["calibration"]["fit"]["applied"] is False
    det = Detector.load(tmp_path / "det")
    assert det.train_config["loss"] == "cvar" and det.train_config["sam"] is False
    assert det.head_config.width == 32
    assert len((tmp_path / "det" / "train_log.jsonl").read_text().splitlines()) == 3
    assert main(args) == 2 and "pass --force" in capsys.readouterr().err  # never overwritten silently
    assert main(args + ["--force"]) == 0
    text = capsys.readouterr().out  # readable text by default
    assert "TPR at 0.1% FPR n/a (needs ≥ 1000 reals)" in text and "threshold: P(fake) >" in text
    assert "platt not applied: too few validation rows" in text and not text.lstrip().startswith("{")
    rc = main(["train", str(tmp_path / "c"), "--out", str(tmp_path / "d2"), "--feature-set", "image+text",
               "--epochs", "1", "--head", "linear", "--no-progress"])
    assert rc == 0 and Detector.load(tmp_path / "d2").in_dim == 32
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "d3")]) == 2


def test_cli_train_split_all_uses_every_row_and_says_so(tmp_path, capsys, caplog):
    from clipdetect.cli.main import main

    write_synthetic_cache(tmp_path / "c", n=120, shift=3.0)
    assert main(["train", str(tmp_path / "c"), "--out", str(tmp_path / "all"), "--split", "all", "--epochs", "2",
                 "--head", "linear", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 120, "val": 0, "test": 0} and summary["test"] is None
    assert "nothing is left for validation or testing" in caplog.text
    det = Detector.load(tmp_path / "all")
    assert det.threshold == 0.5 and det.threshold_target["metric"] == "fixed"
    # evaluating it on the cache it saw is refused: every row was trained on
    assert main(["evaluate", str(tmp_path / "all"), str(tmp_path / "c")]) == 2
    assert "trained on every row" in capsys.readouterr().err


def test_cli_train_input_view_is_saved_with_the_detector_and_checked(tmp_path, capsys):
    from clipdetect.cli.main import main

    write_synthetic_cache(tmp_path / "c", n=120, shift=3.0)
    base = ["train", str(tmp_path / "c"), "--epochs", "1", "--head", "linear", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "d"), "--input-view", "NORM:256:90"]) == 0
    assert Detector.load(tmp_path / "d").extra["input_view"] == "norm:256:90"
    assert "input_view" not in Detector.load(tmp_path / "d").train_config  # not a training setting
    assert main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert "input_view" not in Detector.load(tmp_path / "plain").extra
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "bad"), "--input-view", "aug"]) == 2
    err = capsys.readouterr().err
    assert "--input-view" in err and "random" in err and not (tmp_path / "bad").exists()
