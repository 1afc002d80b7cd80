import json
import shutil

import numpy as np
import pandas as pd
import pytest

from clipdetect.features.backbones import BackboneError
from clipdetect.features.cache import FeatureCache
from clipdetect.cli.main import main
from clipdetect.models.detector import Detector
from clipdetect.features.runner import ExtractConfig
from clipdetect.features.extract import extract
from clipdetect.data.filelist import FileListSource, open_predict_source
from clipdetect.models.predict import predict_source, resolve_backbone
from clipdetect.data.sources import ImageFolderSource
from clipdetect.models.train import TrainConfig
from helpers.images import TINY


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbone):
    from helpers.images import write_image_folder

    root = tmp_path_factory.mktemp("pred")
    imgs = write_image_folder(root / "imgs")
    (imgs / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    extract(ImageFolderSource(imgs), ExtractConfig(backbone=TINY, out=str(root / "cache"), workers=0,
                                                   batch_size=8,
                                                   dtype="float32"), backbone=tiny_backbone, progress=False)
    cache = FeatureCache(root / "cache")
    det = Detector.fit_cache(cache, config=TrainConfig(epochs=2, batch_size=8, head="linear", loss="bce",
                                                       sam=False,
                                                       patience=0, val_fraction=0.0, test_fraction=0.0))
    det = det.replace(temperature=2.0)
    det.save(root / "det")
    return root, cache, det


def test_scores_match_cache_features_and_errors_are_rows(setup, tiny_backbone):
    root, cache, det = setup
    out = root / "p.csv"
    s = predict_source(det, ImageFolderSource(root / "imgs"), out, backbone=tiny_backbone, batch_size=5,
                       workers=0,
                       progress=False)
    df = pd.read_csv(out)
    assert len(df) == s.n == 17 and s.scored == 16 and s.errors == {"corrupt": 1}
    bad = df[df.error.notna()]
    assert list(bad.key) == ["real/broken.png"] and bad.logit.isna().all()
    good = df[df.error.isna()].set_index("key")
    keys = cache.meta.key.to_numpy()
    want = det.logits(cache.features("image"))
    np.testing.assert_allclose(good.loc[keys, "logit"].to_numpy(), want, atol=1e-4)
    p = 1 / (1 + np.exp(-good.loc[keys, "logit"].to_numpy() / 2.0))
    np.testing.assert_allclose(good.loc[keys, "probability"], p, atol=1e-6)
    assert (good.label == (good.probability > det.threshold).astype(int)).all()
    assert set(good.true_label) == {0,
                                    1} and s.accuracy == pytest.approx((good.label == good.true_label).mean())


def test_unlabelled_folder_to_jsonl(setup, tiny_backbone, tmp_path):
    root, _, det = setup
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list((root / "imgs" / "fake").glob("*.png"))[:3]:
        shutil.copy(p, flat / p.name)
    src = open_predict_source(str(flat))
    assert isinstance(src, FileListSource) and src.size() == 3
    s = predict_source(det, src, tmp_path / "p.jsonl", backbone=tiny_backbone, workers=0, progress=False)
    recs = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["true_label"] is None and r["error"] is None for r in recs)
    assert s.accuracy is None and isinstance(recs[0]["probability"], float)
    single = open_predict_source(str(flat / sorted(p.name for p in flat.iterdir())[0]))
    assert single.size() == 1


def test_backbone_identity_is_checked(setup):
    _, _, det = setup
    other = Detector.load(setup[0] / "det")
    other.backbone = {**other.backbone, "preprocess": {"size": [336, 336]}}  # trained on other preprocessing
    with pytest.raises(BackboneError, match="differs"):
        resolve_backbone(other)
    assert resolve_backbone(other, force=True).identity["preprocess"] == det.backbone["preprocess"]
    with pytest.raises(BackboneError, match="no backbone spec"):
        other.backbone = {}
        resolve_backbone(other)
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        predict_source(det, FileListSource(setup[0] / "imgs"), setup[0] / "p.txt", backbone=object(),
                       workers=0)


def test_predict_cli_with_worker_process(setup, tmp_path, capsys):
    root, _, _ = setup
    out = tmp_path / "preds.csv"
    assert main(["predict", str(root / "det"), str(root / "imgs"), "--out", str(out), "--workers", "1",
                 "--batch-size", "4", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 17 and summary["errors"] == {"corrupt": 1}
    det = Detector.load(root / "det")
    assert summary["threshold"] == det.threshold and summary["threshold_target"] == det.threshold_target
    df = pd.read_csv(out)
    assert list(df.columns) == ["key", "path", "logit", "probability", "threshold", "label", "true_label", "error"]
    ok = df[df.error.isna()]  # one scale: label = probability > threshold, the threshold written on every row
    assert (ok.threshold == det.threshold).all() and (ok.label == (ok.probability > ok.threshold)).all()
    assert main(["predict", str(root / "det"), str(root / "imgs"), "--out", str(out), "--backbone",
                 "clipdetect-tiny-vit:random", "--workers", "0"]) == 2  # the file exists: refused ...
    assert "pass --force" in capsys.readouterr().err and pd.read_csv(out).equals(df)
    assert main(["predict", str(root / "det"), str(root / "imgs"), "--out", str(out), "--backbone",
                 "clipdetect-tiny-vit:random", "--workers", "0", "--force"]) == 0  # ... unless --force
    text = capsys.readouterr().out
    assert "16 of 17 images scored" in text and "threshold: P(fake) >" in text
    assert main(["predict", str(root / "det"), str(tmp_path / "nope"), "--out", str(tmp_path / "n.csv")]) == 2


def test_predict_streams_to_stdout(setup, capsys):
    root, _, _ = setup
    assert main(["predict", str(root / "det"), str(root / "imgs"), "--out", "-", "--workers", "0",
                 "--limit", "5"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "key,path,logit,probability,threshold,label,true_label,error" and len(lines) == 6
    assert "5 of 5 images scored" in captured.err and "-> stdout" in captured.err
    assert main(["predict", str(root / "det"), str(root / "imgs"), "--out", "-", "--format", "jsonl",
                 "--workers", "0", "--limit", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and set(rows[0]) >= {"logit", "probability", "threshold", "label"}


def test_layers_and_fused_detectors_score_images_as_their_cache_rows(tmp_path, tiny_backbone):
    """A per-block detector (and a fusion with an image head) scores files end to end exactly as
    it scores the cache rows extracted from them: the encoder taps the same tokens."""
    from helpers.images import write_image_folder
    from clipdetect.features.splits import SplitSpec
    from clipdetect.models.fusion import fuse_detectors

    imgs = write_image_folder(tmp_path / "imgs")
    extract(ImageFolderSource(imgs), ExtractConfig(backbone=TINY, out=str(tmp_path / "c"), workers=0, batch_size=8,
                                                   dtype="float32", layers=True), backbone=tiny_backbone,
            progress=False)
    cache = FeatureCache(tmp_path / "c")
    fast = TrainConfig(epochs=2, batch_size=8, width=8, depth=1, patience=0, val_fraction=0.5, test_fraction=0.0)
    lay = Detector.fit_cache(cache, feature_set="layers", config=fast)
    img = Detector.fit_cache(cache, feature_set="image", config=fast)
    fused = fuse_detectors([img, lay], cache, SplitSpec.of(fast).rows(cache, "val"), method="mean")
    keys = cache.meta.key.to_numpy()
    for det in (lay, fused):
        got = det.score_images([str(imgs / k) for k in keys], backbone=tiny_backbone)
        np.testing.assert_allclose(got["logit"], det.logits(det.features(cache)), atol=1e-4)
    out = tmp_path / "p.csv"
    fused.save(tmp_path / "fused")
    assert main(["predict", str(tmp_path / "fused"), str(imgs), "--out", str(out), "--workers", "0",
                 "--no-progress", "--backbone", TINY]) == 0
    assert pd.read_csv(out).logit.notna().all()


def test_a_missing_checkpoint_falls_back_to_a_listed_alternative(setup, tmp_path, monkeypatch):
    """A bundle made on a converted checkpoint may list the same model under another spec
    (e.g. open_clip's openai tag); without the file it loads that one, else says both."""
    from clipdetect.features.backbones import WEIGHTS_ENV

    _, cache, det = setup
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    ident = dict(det.backbone, weights="checkpoint", checkpoint="gone.pt", checkpoint_path=str(tmp_path / "gone.pt"),
                 sha256="0" * 64, spec=f"clipdetect-tiny-vit:{tmp_path / 'gone.pt'}")
    det2 = Detector.load(setup[0] / "det")
    det2.backbone = ident
    with pytest.raises(BackboneError, match="cannot find the checkpoint"):
        resolve_backbone(det2)
    det2.backbone = dict(ident, alternatives=[{"spec": TINY, "arch": "clipdetect-tiny-vit", "weights": "random",
                                               "seed": 0}])
    backbone = resolve_backbone(det2)
    assert backbone.spec == TINY
    det2.check_backbone(cache.backbone)  # the alternative's cache is accepted too
    det2.backbone["alternatives"][0]["spec"] = "clipdetect-tiny-vit:nosuchtag"
    with pytest.raises(BackboneError, match="alternatives did not load"):
        resolve_backbone(det2)


def test_image_scorer_in_two_steps_scores_as_score_images(setup, tiny_backbone):
    from concurrent.futures import ThreadPoolExecutor

    from clipdetect.models.predict import ImageScorer

    root, _, det = setup
    blobs = [p.read_bytes() for p in sorted((root / "imgs").rglob("*.png"))]
    scorer = ImageScorer(det, tiny_backbone)
    with ThreadPoolExecutor(2) as pool:  # decoding is thread-safe: the service decodes on a pool
        decoded = list(pool.map(scorer.decode, blobs))
    rows = scorer.score(decoded)
    want = det.score_images(blobs, backbone=tiny_backbone)
    assert len(rows) == len(want) == 17
    bad = [i for i, r in enumerate(rows) if "error" in r]
    assert bad == list(np.flatnonzero(want.error.notna())) and rows[bad[0]]["error"].startswith("corrupt")
    good = [i for i in range(len(rows)) if i not in bad]
    np.testing.assert_allclose([rows[i]["probability"] for i in good], want.probability[good], atol=1e-6)
    assert [rows[i]["label"] for i in good] == list(want.label[good])
    assert scorer.score([]) == []


def test_a_detector_with_an_input_view_scores_every_image_as_that_view(setup, tiny_backbone, tmp_path):
    from PIL import Image

    from clipdetect.data.views import ViewError, apply_view
    from clipdetect.models.predict import ImageScorer

    root, _, det = setup
    paths = [p for p in sorted((root / "imgs").rglob("*.png")) if p.name != "broken.png"]
    normed = det.replace(extra={**det.extra, "input_view": "norm:64:90"})
    normed.save(tmp_path / "det")
    normed = Detector.load(tmp_path / "det")  # the view travels with the bundle
    as_view = [apply_view(Image.open(p).convert("RGB"), "norm:64:90", "") for p in paths]
    want = det.score_images(as_view, backbone=tiny_backbone)  # the plain detector on normalised images
    got = normed.score_images([str(p) for p in paths], backbone=tiny_backbone)
    plain = det.score_images([str(p) for p in paths], backbone=tiny_backbone)
    np.testing.assert_allclose(got.logit, want.logit, atol=1e-5)
    assert np.abs(plain.logit.to_numpy() - got.logit.to_numpy()).max() > 1e-3  # the view changed the input
    out = tmp_path / "p.csv"
    predict_source(normed, ImageFolderSource(root / "imgs"), out, backbone=tiny_backbone, workers=0, progress=False)
    df = pd.read_csv(out).set_index("path")
    np.testing.assert_allclose(df.loc[[str(p) for p in paths], "logit"], want.logit, atol=1e-4)
    scorer = ImageScorer(normed, tiny_backbone)  # the service's path
    rows = scorer.score([scorer.decode(p.read_bytes()) for p in paths])
    np.testing.assert_allclose([r["logit"] for r in rows], want.logit, atol=1e-5)
    with pytest.raises(ViewError, match="random"):
        det.replace(extra={"input_view": "aug"}).score_images([str(paths[0])], backbone=tiny_backbone)
