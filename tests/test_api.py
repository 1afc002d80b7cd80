"""The top-level API: lazy imports, extract/evaluate wrappers, in-memory scoring, the ROC display."""
from __future__ import annotations

import importlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import clipdetect
from clipdetect.cli.main import main
from clipdetect.core.resources import SAMPLE_CACHE
from helpers.images import TINY, write_image_folder

SAMPLE = SAMPLE_CACHE


def test_import_clipdetect_is_light():
    code = ("import sys, clipdetect; heavy = ('torch', 'sklearn', 'pandas', 'torchvision', 'open_clip', "
            "'matplotlib', 'numpy'); print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_every_public_name_resolves_to_its_module_attribute():
    assert set(clipdetect._API) <= set(dir(clipdetect)) and set(clipdetect._API) <= set(clipdetect.__all__)
    for name, target in clipdetect._API.items():
        module, attr = target.split(":")
        assert getattr(clipdetect, name) is getattr(importlib.import_module(module), attr)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        clipdetect.nope  # noqa: B018


def test_select_refuses_a_derived_split_and_says_how():
    cache = clipdetect.FeatureCache(SAMPLE)
    assert len(cache.select(split="train")) == len(cache)
    with pytest.raises(ValueError, match="resolve_split_rows"):
        cache.select(split="test")


@pytest.fixture(scope="module")
def scored(tmp_path_factory, one_torch_thread):
    """A tiny cache made with clipdetect.extract, a detector trained on it, and the CLI's predictions."""
    root = tmp_path_factory.mktemp("api")
    imgs = write_image_folder(root / "imgs")
    cache = clipdetect.extract(str(imgs), root / "cache", TINY, workers=0, batch_size=8, dtype="float32")
    det = clipdetect.Detector.fit_cache(cache, config=clipdetect.TrainConfig(
        epochs=3, batch_size=8, width=16, depth=1, patience=0, val_fraction=0.25, test_fraction=0.25))
    det = det.replace(temperature=1.5)
    det.save(root / "det")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = sorted((imgs / "fake").glob("*.png"))[:3] + sorted((imgs / "real").glob("*.png"))[:3]
    paths.append(root / "bad.png")
    listing = root / "to_score"
    listing.mkdir()
    for i, p in enumerate(paths):
        (listing / f"{i:02d}.png").write_bytes(p.read_bytes())
    out = root / "preds.csv"
    assert main(["predict", str(root / "det"), str(listing), "--out", str(out), "--workers", "1",
                 "--batch-size", "4", "--no-progress"]) == 0
    cli = pd.read_csv(out).sort_values("key").reset_index(drop=True)
    return root, cache, clipdetect.load_detector(root / "det"), sorted(listing.iterdir()), cli


def test_extract_wrapper_builds_the_cache(scored):
    _, cache, det, _, _ = scored
    assert isinstance(cache, clipdetect.FeatureCache) and len(cache) == 16
    assert cache.backbone["spec"] == TINY and det.backbone["spec"] == TINY
    with pytest.raises(ValueError, match="unknown"):
        clipdetect.extract("x", "y", TINY, bogus=1)


@pytest.mark.parametrize("kind", ["path", "pil", "bytes"])
def test_score_images_matches_clipdetect_predict(scored, kind):
    _, _, det, files, cli = scored
    images = {"path": [str(p) for p in files], "bytes": [p.read_bytes() for p in files],
              "pil": [Image.open(p) if p.name != files[-1].name else io.BytesIO(p.read_bytes()).getvalue()
                      for p in files]}[kind]
    got = det.score_images(images, batch_size=3)
    assert list(got.columns) == ["logit", "probability", "threshold", "label", "error"] and len(got) == len(files)
    ok = cli.error.isna().to_numpy()
    assert ok.sum() == 6 and cli.error[~ok].str.startswith("not_an_image").all()
    np.testing.assert_allclose(got.logit[ok], cli.logit[ok], rtol=1e-5, atol=1e-5)
    assert (got.threshold[ok] == det.threshold).all()
    np.testing.assert_allclose(got.probability[ok], cli.probability[ok], rtol=1e-5, atol=1e-6)
    assert (got.label[ok].astype(int).to_numpy() == cli.label[ok].astype(int).to_numpy()).all()
    bad = got.iloc[-1]
    assert np.isnan(bad.logit) and np.isnan(bad.probability) and pd.isna(bad.label)
    assert bad.error == cli.error.iloc[-1]


def test_score_images_takes_one_image_and_refuses_another_backbone(scored, tiny_backbone):
    _, _, det, files, cli = scored
    one = det.score_images(Image.open(files[0]), backbone=tiny_backbone)
    assert len(one) == 1 and one.logit[0] == pytest.approx(cli.logit[0], abs=1e-5)
    from clipdetect.features.backbones import BackboneError, create_backbone

    other = create_backbone(TINY, seed=1)
    with pytest.raises(BackboneError, match="differs"):
        det.score_images(files[:1], backbone=other)


def test_evaluate_wrapper_resolves_the_split_like_the_cli(scored, tmp_path):
    root, cache, det, _, _ = scored
    report = clipdetect.evaluate(root / "det", root / "cache", split="test", n_boot=20)
    assert main(["evaluate", str(root / "det"), str(root / "cache"), "--split", "test", "--n-boot", "20",
                 "--out", str(tmp_path / "ev")]) == 0
    cli = pd.read_csv(tmp_path / "ev" / "metrics.csv")
    assert report.config["n_rows"] == det.extra["splits"]["test"] > 0
    np.testing.assert_allclose(report.table["auc"].to_numpy(dtype=float), cli["auc"].to_numpy(dtype=float))


def test_roc_display_from_detector_estimator_and_predictions(scored):
    import matplotlib.pyplot as plt

    from clipdetect.eval.figures import roc_curves
    from clipdetect.eval.selection import split_params, split_rows

    _, cache, det, _, _ = scored
    disp = clipdetect.DetectorRocDisplay.from_detector(det, cache, split="train", by=None)
    y, s = roc_curves(det, cache, split_rows(cache, "train", split_params(det)), by=None)["overall"]
    assert list(disp.curves) == ["overall"] and disp.roc_auc["overall"] == pytest.approx(
        clipdetect.DetectorRocDisplay.from_predictions(y, s).roc_auc["detector"])
    assert disp.figure_ is disp.ax_.figure and "AUC" in disp.ax_.get_legend().get_texts()[0].get_text()
    fig, ax = plt.subplots()
    assert clipdetect.DetectorRocDisplay.from_predictions([0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6], ax=ax,
                                                          log_fpr=True).ax_ is ax
    est = clipdetect.DetectorClassifier(epochs=2, batch_size=8, width=8, depth=1)
    X, labels = cache.features("image"), np.where(cache.labels() == 1, "fake", "real")
    shown = clipdetect.DetectorRocDisplay.from_estimator(est.fit(X, labels), X, labels)
    # classes_ = ["fake", "real"]: the positive class is "real", so the AUC is for "real"
    want = clipdetect.DetectorRocDisplay.from_predictions(labels == "real", est.decision_function(X),
                                                          pos_label=True)
    assert shown.roc_auc["DetectorClassifier"] == pytest.approx(want.roc_auc["detector"])
    plt.close("all")


def test_clear_errors_for_unfitted_or_backbone_less_detectors(scored):
    _, cache, det, files, _ = scored
    with pytest.raises(TypeError, match="not fitted yet"):
        clipdetect.evaluate(clipdetect.DetectorClassifier(), cache)
    bare = clipdetect.Detector.fit(cache.features("image"), cache.labels(),
                                   config=clipdetect.TrainConfig(epochs=1, batch_size=8, width=8, depth=1))
    from clipdetect.features.backbones import BackboneError

    with pytest.raises(BackboneError, match="backbone='ARCH:WEIGHTS'"):
        bare.score_images(files[:1])
