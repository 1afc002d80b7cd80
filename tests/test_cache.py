"""The cache: atomic shards, row-aligned metadata, memory-mapped selection, refusing mixed backbones."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from clipdetect.features.cache import FeatureCache
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.manifest import CacheError

IDENT = {"arch": "a", "weights": "random", "seed": 0, "embed_dim": 4, "preprocess": {"size": [8, 8]}}


def _write(root, n_shards=3, rows=5, text=True, ident=IDENT):
    w = CacheWriter(root, backbone=ident)
    w.begin_run("r", {"source": {}})
    rng = np.random.default_rng(0)
    for s in range(n_shards):
        keys = [f"s{s}-{i}" for i in range(rows)]
        meta = pd.DataFrame({"key": keys, "label": [i % 2 for i in range(rows)],
                             "generator": ["real" if i % 2 == 0 else f"g{s}" for i in range(rows)],
                             "split": ["train"] * (rows - 1) + ["test"], "path": keys, "caption": keys})
        img = rng.normal(size=(rows, 4)).astype(np.float32)
        w.write_shard("r", start=s * rows, stop=(s + 1) * rows, img=img, txt=img[:, ::-1] if text else None,
                      meta=meta, errors=pd.DataFrame([{"key": "bad", "path": "x", "reason": "empty", "detail": ""}]))
    return w


def test_write_and_read_back(tmp_path):
    _write(tmp_path)
    c = FeatureCache(tmp_path)
    assert len(c) == 15 and c.embed_dim == 4 and c.has_text
    assert list(c.meta.key[:2]) == ["s0-0", "s0-1"]
    rows = c.select(split="test")
    assert list(c.meta.key[rows]) == ["s0-4", "s1-4", "s2-4"]
    assert list(c.select(generator=["g1", "g2"], label=1)) == [6, 8, 11, 13]
    both = c.features("image+text", np.array([7, 0]))
    assert both.shape == (2, 8) and both.dtype == np.float32
    assert np.array_equal(both[:, 4:], both[:, 3::-1])
    assert np.load(tmp_path / "img_emb" / f"{c.shards[0].name}.npy").dtype == np.float16
    assert c.summary()["errors"] == {"empty": 3}
    assert not list(tmp_path.rglob(".*tmp*"))


def test_training_columns_are_read_without_the_rest(tmp_path, monkeypatch):
    _write(tmp_path)
    c = FeatureCache(tmp_path)
    reads, real = [], pd.read_parquet

    def spy(path, columns=None, **kw):
        if "meta" in str(path):
            reads.append(columns)
        return real(path, columns=columns, **kw)

    monkeypatch.setattr(pd, "read_parquet", spy)
    assert c.labels().tolist() == [0, 1, 0, 1, 0] * 3
    assert list(c.select(split="test")) == [4, 9, 14]
    assert c.summary()["generators"]["real"] == 9
    assert reads and all(cols is not None and not {"caption", "path"} & set(cols) for cols in reads)
    assert c._meta is None  # the full metadata table was never loaded
    assert c.columns("key", "label").equals(c.meta[["key", "label"]])
    with pytest.raises(KeyError, match="no metadata column"):
        c.columns("nope")


def test_reader_is_memory_mapped(tmp_path):
    _write(tmp_path)
    c = FeatureCache(tmp_path)
    c.features("image", np.array([0]))
    assert all(isinstance(m, np.memmap) for m in c._mmaps.values())


def test_refuses_other_backbone_or_preprocessing(tmp_path):
    _write(tmp_path, n_shards=1)
    with pytest.raises(CacheError, match="another backbone"):
        CacheWriter(tmp_path, backbone=dict(IDENT, preprocess={"size": [16, 16]}))
    with pytest.raises(CacheError, match="another backbone"):
        CacheWriter(tmp_path, backbone=dict(IDENT, arch="b"))
    with pytest.raises(CacheError, match="stores float16"):
        CacheWriter(tmp_path, backbone=IDENT, dtype="float32")
    CacheWriter(tmp_path, backbone=dict(IDENT, open_clip_version="other"))  # same embeddings: fine


def test_text_request_on_image_only_cache(tmp_path):
    _write(tmp_path, n_shards=1, text=False)
    c = FeatureCache(tmp_path)
    assert not c.has_text
    with pytest.raises(CacheError, match="without captions"):
        c.features("text")


def test_orphan_files_of_an_unrecorded_shard_are_ignored_and_replaced(tmp_path):
    _write(tmp_path, n_shards=1)
    # simulate a crash after a shard's files but before the manifest: a stray part and temp file
    np.save(tmp_path / "img_emb/part-00001.npy", np.zeros((9, 4), np.float16))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a writer that has exited
    stray = tmp_path / f"meta/.part-00001.parquet.tmp-{dead.pid}-abcd"
    stray.write_bytes(b"junk")
    assert len(FeatureCache(tmp_path)) == 5
    w = CacheWriter(tmp_path, backbone=IDENT)
    assert not stray.exists()
    w.write_shard("r", start=5, stop=7, img=np.ones((2, 4), np.float32), txt=None,
                  meta=pd.DataFrame({"key": ["a", "b"], "label": [0, 1], "generator": "", "split": "train",
                                     "path": "", "caption": None}), errors=pd.DataFrame())
    assert FeatureCache(tmp_path).embeddings("image", np.array([5, 6])).sum() == 8


def test_not_a_cache(tmp_path):
    with pytest.raises(CacheError, match="clipdetect extract"):
        FeatureCache(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CacheError):
        FeatureCache(tmp_path)


def test_misaligned_shard_refused(tmp_path):
    w = CacheWriter(tmp_path, backbone=IDENT)
    w.begin_run("r", {})
    with pytest.raises(CacheError, match="row-aligned"):
        w.write_shard("r", start=0, stop=2, img=np.zeros((2, 4)), txt=None,
                      meta=pd.DataFrame({"key": ["a"]}), errors=pd.DataFrame())


def test_caches_written_before_the_source_column_still_read(tmp_path):
    from helpers.synthetic import write_synthetic_cache
    from clipdetect.features.verify import verify_cache

    cache = write_synthetic_cache(tmp_path / "old", n=20, dim=8)  # shards without a "source" column
    assert "source" not in pd.read_parquet(next((tmp_path / "old" / "meta").glob("*.parquet"))).columns
    assert (cache.columns("source", "label")["source"] == "").all() and len(cache.columns("source")) == 20
    assert (FeatureCache(tmp_path / "old").meta["source"] == "").all()
    assert verify_cache(tmp_path / "old").ok
