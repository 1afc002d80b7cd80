"""Per-block features (--layers) and views (--views) in extraction: exact taps, row layout,
resume bit for bit, format compatibility with caches written before."""
import numpy as np
import pandas as pd
import pytest
import torch

from clipdetect.data.sources import ManifestSource
from clipdetect.features.cache import FeatureCache
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.encoder import ImageEncoder
from clipdetect.features.runner import ExtractConfig
from clipdetect.features.extract import extract
from clipdetect.features.layers import layer_names
from clipdetect.features.manifest import CacheError
from clipdetect.features.verify import verify_cache
from clipdetect.data.imaging import SplitPreprocess
from helpers.images import TINY, make_image
from helpers.training import interrupt_on_call


def _arrays(backbone, n=3):
    pre = SplitPreprocess(backbone.preprocess)
    return [pre.worker(make_image(i, size=(90, 70))) for i in range(n)]


def test_taps_leave_the_embedding_unchanged_and_reproduce_it(tiny_backbone):
    arrays = _arrays(tiny_backbone)
    plain = ImageEncoder(tiny_backbone).encode(arrays)
    enc = ImageEncoder(tiny_backbone, layers=True)
    rows = enc.encode(arrays)
    emb, tokens = enc.split(rows)
    names = layer_names(tiny_backbone)
    assert names[-1] == "pre_proj" and tokens.shape == (3, len(names), tiny_backbone.model.visual.transformer.width)
    assert np.array_equal(emb, plain)
    # the pre-projection token, projected and normalised, is the embedding itself
    proj = tokens[:, -1] @ tiny_backbone.model.visual.proj.detach().numpy()
    assert np.allclose(proj / np.linalg.norm(proj, axis=1, keepdims=True), emb, atol=1e-5)
    # the last block's CLS token, after ln_post, is the pre-projection token
    post = tiny_backbone.model.visual.ln_post(torch.from_numpy(tokens[:, -2])).detach().numpy()
    assert np.allclose(post, tokens[:, -1], atol=1e-5)


def _manifest(tmp_path, n=10):
    rows = []
    for i in range(n):
        fake = i % 2
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        make_image(i, size=(80, 64), fake=bool(fake)).save(p)
        rows.append({"path": str(p), "label": fake, "key": f"k{i}", "generator": "g" if fake else "real",
                     "source": f"src{i % 3}", "family": "fam" if fake else "", "group": f"grp{i // 2}"})
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return ManifestSource(path)


def _cfg(out, **kw):
    return ExtractConfig(backbone=TINY, out=str(out), workers=0, batch_size=4, shard_size=4, layers=True,
                         views=["orig", "jpeg:60", "aug"], **kw)


def test_layers_and_views_rows_columns_and_verify(tmp_path, tiny_backbone):
    src = _manifest(tmp_path)
    extract(src, _cfg(tmp_path / "c"), backbone=tiny_backbone, progress=False)
    c = FeatureCache(tmp_path / "c")
    assert len(c) == 30 and c.has_layers and c.manifest["version"] == 2
    assert c.manifest["normalized"]  # says what the embeddings are; per-block tokens are not unit vectors
    m = c.meta
    assert list(m.view[:3]) == ["orig", "jpeg:60", "aug"] and list(m.key[:3]) == ["k0"] * 3
    assert list(m.source[:3]) == ["src0"] * 3 and m.group.iloc[4] == "grp0" and m.family.iloc[0] == "real"
    t, w = c.layers["tokens"], c.layers["width"]
    assert c.feature_dim("layers") == t * w and c.features("layers", np.arange(5)).shape == (5, t * w)
    lay = c.embeddings("layers")
    assert lay.shape == (30, t, w) and np.isfinite(lay).all()
    assert not np.array_equal(lay[0], lay[1])  # the JPEG view is another image
    assert verify_cache(tmp_path / "c").ok
    assert c.summary()["views"] == {"orig": 10, "jpeg:60": 10, "aug": 10}


def test_killed_layers_views_run_resumes_bit_for_bit(tmp_path, tiny_backbone, monkeypatch):
    src = _manifest(tmp_path)
    extract(src, _cfg(tmp_path / "ref"), backbone=tiny_backbone, progress=False)
    real_write = CacheWriter.write_shard
    monkeypatch.setattr(CacheWriter, "write_shard", interrupt_on_call(real_write, 2))  # stopped between shards
    with pytest.raises(KeyboardInterrupt):
        extract(src, _cfg(tmp_path / "cut"), backbone=tiny_backbone, progress=False)
    monkeypatch.setattr(CacheWriter, "write_shard", real_write)
    assert len(FeatureCache(tmp_path / "cut")) == 12  # one shard of 4 images x 3 views survived
    again = extract(src, _cfg(tmp_path / "cut"), backbone=tiny_backbone, progress=False)
    assert again.resumed_from == 4 and again.complete
    a, b = FeatureCache(tmp_path / "ref"), FeatureCache(tmp_path / "cut")
    assert list(a.meta.key + a.meta.view) == list(b.meta.key + b.meta.view)
    for kind in ("image", "layers"):
        assert np.array_equal(a.embeddings(kind), b.embeddings(kind))


def test_layer_setting_is_fixed_per_cache(tmp_path, tiny_backbone):
    src = _manifest(tmp_path, n=4)
    extract(src, _cfg(tmp_path / "c"), backbone=tiny_backbone, progress=False)
    with pytest.raises(CacheError, match="per-block features"):
        extract(src, ExtractConfig(backbone=TINY, out=str(tmp_path / "c"), workers=0), backbone=tiny_backbone,
                progress=False)
    extract(src, ExtractConfig(backbone=TINY, out=str(tmp_path / "plain"), workers=0), backbone=tiny_backbone,
            progress=False)
    plain = FeatureCache(tmp_path / "plain")
    assert not plain.has_layers
    with pytest.raises(CacheError, match="--layers"):
        plain.features("layers")


def test_version_1_shards_read_with_derived_columns(tmp_path):
    from helpers.synthetic import synthetic_identity

    w = CacheWriter(tmp_path / "v1", backbone=synthetic_identity(4))
    w.begin_run("r", {})
    meta = pd.DataFrame({"key": ["a", "b"], "label": [0, 1], "generator": ["real", "sd"], "split": "train",
                         "path": "", "caption": "", "width": 8, "height": 8, "format": "PNG", "mode": "RGB"})
    x = np.eye(2, 4, dtype=np.float32)
    w.write_shard("r", start=0, stop=2, img=x, txt=None, meta=meta, errors=pd.DataFrame(columns=["key"]))
    c = FeatureCache(tmp_path / "v1")
    assert list(c.columns("view", "group", "family", "source").itertuples(index=False, name=None)) == \
        [("orig", "a", "real", ""), ("orig", "b", "sd", "")]
    assert list(c.meta.group) == ["a", "b"] and verify_cache(tmp_path / "v1").ok


def test_empty_group_and_family_fall_back_to_key_and_generator(tmp_path, image_folder, tiny_backbone):
    from clipdetect.data.sources import ImageFolderSource

    extract(ImageFolderSource(image_folder), ExtractConfig(backbone=TINY, out=str(tmp_path / "c"), workers=0),
            backbone=tiny_backbone, progress=False)
    c = FeatureCache(tmp_path / "c")
    got = c.columns("group", "family")
    assert list(got["group"]) == list(c.meta.key) and list(got["family"]) == list(c.meta.generator)


def test_evaluate_reports_every_view(tmp_path):
    from helpers.synthetic import write_layered_cache
    from clipdetect.eval.evaluate import evaluate_detector
    from clipdetect.models.detector import Detector
    from clipdetect.models.train import TrainConfig

    cache = write_layered_cache(tmp_path / "c", n=120, views=("orig", "jpeg:50"))
    det = Detector.fit_cache(cache, feature_set="layers", config=TrainConfig(batch_size=32, epochs=2, width=8))
    table = evaluate_detector(det, cache, n_boot=0).table
    views = table[table.group == "view"]
    assert list(views.value) == ["jpeg:50", "orig"] and (views.n_real + views.n_fake).sum() == \
        table.iloc[0].n_real + table.iloc[0].n_fake
