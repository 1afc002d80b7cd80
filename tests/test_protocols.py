from dataclasses import replace
import json

import numpy as np
import pandas as pd
import pytest

from helpers.synthetic import separable_features, synthetic_identity, write_synthetic_cache

from clipdetect.eval import protocols
from clipdetect.features.cache import FeatureCache
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.manifest import ERROR_COLUMNS
from clipdetect.cli.main import main
from clipdetect.models.detector import Detector
from clipdetect.features.runner import ExtractConfig
from clipdetect.features.extract import extract
from clipdetect.eval.format_bias import estimate_jpeg_quality, format_only_baseline, format_record
from clipdetect.data.sources import ImageFolderSource
from clipdetect.features.splits import resolve_split_rows
from clipdetect.models.train import TrainConfig
from helpers.training import FAST_LINEAR
from helpers.images import TINY, make_image, write_image_folder

PROBE = replace(FAST_LINEAR, epochs=8)


def _multi_generator_cache(root, n=360, dim=12):
    """Reals and fakes of three generators; generator 'c' fakes differ from reals on another axis."""
    x, y = separable_features(n, dim, shift=1.2, seed=3)
    gen = np.where(y == 0, "real", np.array(["a", "b", "c"])[np.arange(n) % 3])
    x[gen == "c", 0] -= 1.2
    x[gen == "c", 1] += 1.5
    w = CacheWriter(root, backbone=synthetic_identity(dim))
    w.begin_run("r", {"source": "synthetic"})
    meta = pd.DataFrame({"key": [f"k{i}" for i in range(n)], "label": y, "generator": gen, "split": "train",
                         "path": "", "caption": "", "width": 8, "height": 8, "format": "PNG", "mode": "RGB"})
    w.write_shard("r", start=0, stop=n, img=x, txt=None, meta=meta,
                  errors=pd.DataFrame(columns=ERROR_COLUMNS))
    w.finish_run("r", {}, complete=True)
    return FeatureCache(root)


def test_logo_never_trains_on_the_held_out_generator(tmp_path, monkeypatch):
    cache = _multi_generator_cache(tmp_path / "c")
    seen = {}
    real_train = Detector.fit_rows.__func__

    def spy(cls, cache, train_rows, val_rows, **kw):
        gens = set(cache.meta.loc[np.concatenate([train_rows, val_rows]), "generator"])
        seen[len(seen)] = gens
        return real_train(cls, cache, train_rows, val_rows, **kw)

    monkeypatch.setattr(Detector, "fit_rows", classmethod(spy))
    table = protocols.leave_one_generator_out(cache, config=PROBE, n_boot=20)
    assert list(table.held_out) == ["a", "b", "c"]
    assert [sorted(seen[i]) for i in range(3)] == [["b", "c", "real"], ["a", "c", "real"], ["a", "b", "real"]]
    test_reals = resolve_split_rows(cache, "test")
    n_test_reals = int((cache.labels(test_reals) == 0).sum())
    gen = cache.meta.generator
    for _, r in table.iterrows():
        assert r.n_real == n_test_reals and r.n_fake == (gen == r.held_out).sum()
        assert r.auc_drop == pytest.approx(r.in_auc - r.auc)
    # 'c' fakes look unlike 'a'/'b' fakes: holding it out costs more than holding out 'a'
    assert table.set_index("held_out").loc["c", "auc"] < table.set_index("held_out").loc["a", "auc"]
    with pytest.raises(ValueError, match="no fakes"):
        protocols.leave_one_generator_out(cache, config=PROBE, generators=["zz"])


def test_logo_needs_two_generators(tmp_path):
    cache = write_synthetic_cache(tmp_path / "c", n=100)
    with pytest.raises(ValueError, match=">= 2 generators"):
        protocols.leave_one_generator_out(cache, config=PROBE)


def test_text_leakage_audit_and_cli(tmp_path, capsys):
    cache = write_synthetic_cache(tmp_path / "c", n=300, dim=12, shift=2.0)
    res = protocols.text_leakage_audit(cache, config=PROBE, n_boot=20)
    t = res["table"].set_index("features")
    assert list(t.index) == ["text", "image", "image+text"]
    assert t.loc["text", "auc"] > 0.8  # the synthetic captions carry the label
    assert res["captions"]["fakes_with_a_real_caption"] == 1.0  # all captions are empty strings
    assert main(["protocol", "text-leakage", str(tmp_path / "c"), "--out", str(tmp_path / "r"), "--n-boot",
                 "10", "--set", "epochs=1", "--set", "head=linear", "--set", "sam=false",
                 "--set", "batch_size=64"]) == 0
    md = (tmp_path / "r" / "text_leakage.md").read_text()
    assert "| image+text |" in md and "caption channel" in md
    data = json.loads((tmp_path / "r" / "text_leakage.json").read_text())
    assert data["config"]["train_config"]["epochs"] == 1 and len(data["rows"]) == 3
    no_text = write_synthetic_cache(tmp_path / "n", n=60, text=False)
    with pytest.raises(ValueError, match="no text embeddings"):
        protocols.text_leakage_audit(no_text, config=PROBE)


def test_logo_cli(tmp_path):
    _multi_generator_cache(tmp_path / "c")
    assert main(["protocol", "logo", str(tmp_path / "c"), "--out", str(tmp_path / "r"), "--n-boot", "10",
                 "--generators", "a,c", "--set", "epochs=1", "--set", "head=linear",
                 "--set", "sam=false"]) == 0
    table = pd.read_csv(tmp_path / "r" / "logo.csv")
    assert list(table.held_out) == ["a", "c"] and "| a |" in (tmp_path / "r" / "logo.md").read_text()


def test_jpeg_quality_estimate_and_format_record():
    import io

    img = make_image(1)
    for q in (30, 75, 95):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        rec = format_record(buf.getvalue())
        assert rec["format"] == "JPEG" and rec["jpeg_quality"] == q and rec["width"] == 48
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert np.isnan(format_record(buf.getvalue())["jpeg_quality"])
    assert format_record(b"junk")["format"] == "unreadable"
    assert np.isnan(estimate_jpeg_quality(img))


def test_format_only_baseline_detects_a_leak_and_not_its_absence():
    n = 80
    y = np.arange(n) % 2
    leaky = pd.DataFrame({"format": np.where(y == 1, "PNG", "JPEG").astype(object), "width": 32.0})
    clean = pd.DataFrame({"format": np.array(["JPEG"] * n, dtype=object), "width": 32.0})
    assert format_only_baseline(leaky, y, n_boot=20)["auc"] == 1.0
    res = format_only_baseline(clean, y, n_boot=20)
    assert res["auc"] == 0.5 and res["n"] == n


@pytest.fixture(scope="module")
def image_setup(tmp_path_factory, tiny_backbone):
    """Reals as PNG, fakes as JPEG (a format leak), a cache and a detector trained on it."""
    root = tmp_path_factory.mktemp("imgproto")
    imgs = root / "imgs"
    write_image_folder(imgs, n=6, fake_offset=100, size=(40, 40), exts=("png", "jpg"), name="{i}")
    extract(ImageFolderSource(imgs), ExtractConfig(backbone=TINY, out=str(root / "cache"), workers=0,
                                                   batch_size=12),
            backbone=tiny_backbone, progress=False)
    det = Detector.fit_cache(root / "cache", config=TrainConfig(epochs=3, batch_size=12, head="linear",
                                                                loss="bce",
                                                                sam=False, patience=0, val_fraction=0.0,
                                                                test_fraction=0.0))
    det.save(root / "det")
    return root


def test_robustness_cli(image_setup, tmp_path):
    root = image_setup
    out = tmp_path / "rob"
    args = ["protocol", "robustness", f"a={root / 'det'},b={root / 'det'}", str(root / "imgs"), "--cache",
            str(root / "cache"), "--split", "all", "--n-real", "4", "--n-fake", "4", "--perturb", "jpeg=50",
            "--perturb", "blur=1,3", "--out", str(out), "--n-boot", "10", "--formats", "png", "--no-progress"]
    assert main(args) == 0
    t = pd.read_csv(out / "robustness.csv")
    assert len(t) == 2 * 4 and set(t.perturbation) == {"clean", "jpeg", "blur"}
    assert (t.n == 8).all() and (t.n_real == 4).all()
    assert sorted(p.name for p in (out / "caches").iterdir()) == ["blur-1", "blur-3", "clean", "jpeg-50"]
    assert (out / "robustness_auc.png").stat().st_size > 0
    # the clean condition reproduces the original cache (lossless re-encoding of the same pixels)
    clean, orig = FeatureCache(out / "caches" / "clean"), FeatureCache(root / "cache")
    rows = orig.meta.reset_index().set_index("key").loc[clean.meta.key, "index"].to_numpy()
    np.testing.assert_allclose(clean.features("image"), orig.features("image", rows), atol=2e-3)
    blur3 = FeatureCache(out / "caches" / "blur-3").features("image")
    assert np.abs(blur3 - clean.features("image")).max() > 1e-2
    # re-running reuses the finished caches
    assert main(args) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "robustness.csv"), t)


def test_format_bias_cli(image_setup, tmp_path):
    root = image_setup
    out = tmp_path / "fmt"
    assert main(["protocol", "format-bias", str(root / "det"), str(root / "imgs"), "--cache",
                 str(root / "cache"),
                 "--split", "all", "--n-real", "6", "--n-fake", "6", "--format", "JPEG", "--quality", "90",
                 "--size", "32", "--folds", "3", "--out", str(out), "--n-boot", "10", "--no-progress"]) == 0
    det = pd.read_csv(out / "format_bias.csv")
    assert list(det.encoding) == ["original", "normalized (jpeg-q90-32px)"] and det.delta_auc.iloc[0] == 0
    fmt = pd.read_csv(out / "format_bias_format_only.csv").set_index(["encoding", "features"])
    assert fmt.loc[("original", "container"), "auc"] == 1.0  # PNG reals vs JPEG fakes give it away
    assert fmt.loc[("normalized (jpeg-q90-32px)", "container"), "auc"] == 0.5
    meta = FeatureCache(out / "caches" / "normalized-jpeg-q90-32px").meta
    assert set(meta.format) == {"JPEG"} and set(meta.width) == {32}
    cfg = json.loads((out / "format_bias_format_only.json").read_text())["config"]
    assert "cache_meta_baseline" in cfg
