"""The Ray Data engine writes the local engine's cache, and a killed Ray run resumes like a local one."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data] (pip install 'clipdetect[ray]')")
pytest.importorskip("ray.data", reason="the Ray engine needs ray[data] (pip install 'clipdetect[ray]')")

from clipdetect.features.cache import FeatureCache  # noqa: E402
from clipdetect.data.d3 import D3Source  # noqa: E402
from clipdetect.features.runner import ExtractConfig  # noqa: E402
from clipdetect.features.extract import extract  # noqa: E402
from clipdetect.features.extract_ray import extract_ray  # noqa: E402
from helpers.images import TINY  # noqa: E402

from helpers.d3 import make_d3_parquet, write_reals_dir  # noqa: E402

pytestmark = pytest.mark.slow


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def cluster():
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # e.g. the raylet's fixed 30 s start-up timeout on an overloaded machine
        ray.shutdown()
        pytest.skip(f"could not start a local Ray cluster here: {type(exc).__name__}: {exc}")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("d3ray")
    path = make_d3_parquet(root / "data" / "train-00000-of-00001.parquet", "http://127.0.0.1:9", rows=6)  # URLs never contacted
    return D3Source(str(path), reals_dir=str(write_reals_dir(root / "reals", [0, 1, 3, 4])))


def _cfg(out):
    return ExtractConfig(backbone=TINY, out=str(out), batch_size=4, shard_size=10, workers=0)


def _assert_same_cache(a_dir, b_dir):
    a, b = FeatureCache(a_dir), FeatureCache(b_dir)
    assert list(a.meta.key) == list(b.meta.key)
    cols = ["label", "generator", "split", "path", "caption", "width", "height", "format"]
    assert a.meta[cols].equals(b.meta[cols])
    shards = lambda c: [(s["start"], s["stop"], s["rows"], s["errors"], s["run"]) for s in c.manifest["shards"]]  # noqa
    assert shards(a) == shards(b)
    for kind in ("image", "text"):
        np.testing.assert_allclose(a.embeddings(kind), b.embeddings(kind), atol=2e-3)  # fp16 storage
    assert a.errors().equals(b.errors())
    _assert_same_bytes(a_dir, b_dir)


def _assert_same_bytes(a_dir, b_dir):
    """Every shard file of the two caches, byte for byte (same run, so the same shard names)."""
    names = [s["name"] for s in FeatureCache(a_dir).manifest["shards"]]
    assert names == [s["name"] for s in FeatureCache(b_dir).manifest["shards"]]
    files = [f"{sub}/{n}.{ext}" for n in names for sub, ext in
             (("img_emb", "npy"), ("txt_emb", "npy"), ("layers", "npy"), ("meta", "parquet"), ("errors", "parquet"))]
    for f in files:
        assert (a_dir / f).exists() == (b_dir / f).exists(), f
        if (a_dir / f).exists():
            assert (a_dir / f).read_bytes() == (b_dir / f).read_bytes(), f
    assert any((a_dir / f).exists() for f in files if f.startswith("txt_emb"))


def test_ray_engine_matches_local_and_resumes_after_a_kill(cluster, source, tmp_path, tiny_backbone):
    local = extract(source, _cfg(tmp_path / "local"), backbone=tiny_backbone, progress=False)
    assert local.complete and local.errors == {"real_missing": 2, "fake_missing": 2}

    def die(name):
        raise Killed(name)

    with pytest.raises(Killed, match="part-00000"):
        extract_ray(source, _cfg(tmp_path / "ray"), backbone=tiny_backbone, progress=False, on_shard=die)
    killed = FeatureCache(tmp_path / "ray")
    assert len(killed.manifest["shards"]) == 1 and killed.manifest["runs"][local.run]["position"] == 10
    shutil.copytree(tmp_path / "ray", tmp_path / "ray_then_local")

    resumed = extract_ray(source, _cfg(tmp_path / "ray"), backbone=tiny_backbone, progress=False)
    assert (resumed.run, resumed.resumed_from, resumed.seen, resumed.complete) == (local.run, 10, 20, True)
    assert resumed.errors == {"real_missing": 2, "fake_missing": 2}  # rows 2, 5: no real; 2 fakes missing
    _assert_same_cache(tmp_path / "local", tmp_path / "ray")

    # the engines share the run: a local run finishes what a Ray run started
    finished = extract(source, _cfg(tmp_path / "ray_then_local"), backbone=tiny_backbone, progress=False)
    assert finished.resumed_from == 10 and finished.complete
    _assert_same_cache(tmp_path / "local", tmp_path / "ray_then_local")
    assert extract_ray(source, _cfg(tmp_path / "ray"), backbone=tiny_backbone, progress=False).seen == 0


def test_ray_engine_streams_a_source_of_unknown_size_and_resumes(cluster, source, tmp_path, tiny_backbone):
    streamed = D3Source(source.name_or_path, reals_dir=source.reals_dir, streaming=True)
    assert streamed.size() is None  # no random access: one read task walks the stream
    local = extract(source, _cfg(tmp_path / "local"), backbone=tiny_backbone, progress=False)

    def die(name):
        raise Killed(name)

    with pytest.raises(Killed, match="part-00000"):
        extract_ray(streamed, _cfg(tmp_path / "ray"), backbone=tiny_backbone, progress=False, on_shard=die)
    resumed = extract_ray(streamed, _cfg(tmp_path / "ray"), backbone=tiny_backbone, progress=False)
    assert (resumed.run, resumed.resumed_from, resumed.seen, resumed.complete) == (local.run, 10, 20, True)
    assert resumed.errors == {"real_missing": 2, "fake_missing": 2}
    _assert_same_cache(tmp_path / "local", tmp_path / "ray")


def test_pool_sizes_fill_the_cluster_and_refuse_what_cannot_be_scheduled():
    from clipdetect.features.extract_ray import _pool_sizes

    cpu, gpu = ExtractConfig(backbone=TINY, out="x"), ExtractConfig(backbone=TINY, out="x", device="cuda")
    assert _pool_sizes(cpu, {"CPU": 16}, False, None, None, 1) == (15, 1)
    assert _pool_sizes(cpu, {"CPU": 16}, True, None, None, 12) == (3, 1)  # a core left for the stream reader
    assert _pool_sizes(gpu, {"CPU": 96, "GPU": 8}, False, None, None, 1) == (88, 8)
    with pytest.raises(ValueError, match="has none"):
        _pool_sizes(gpu, {"CPU": 8}, False, None, None, 1)
    with pytest.raises(ValueError, match="need 5 CPUs but the Ray cluster has 2"):
        _pool_sizes(cpu, {"CPU": 2}, False, 1, 1, 4)


def test_ray_engine_writes_views_layers_and_mixed_captions_byte_for_byte(cluster, tmp_path, tiny_backbone):
    """Per-block tokens, two views, a caption-less row among captioned ones and a missing file:
    the Ray engine's shards have the local engine's bytes."""
    import pandas as pd

    from clipdetect.data.sources import ManifestSource
    from helpers.images import make_image

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(7):
        make_image(i, size=(64, 48), fake=bool(i % 2)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": i % 2, "key": f"k{i}", "caption": "" if i == 4 else f"c{i % 3}"})
    rows.insert(2, {"path": "img/gone.png", "label": 1, "key": "gone", "caption": "c9"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    src = ManifestSource(tmp_path / "m.csv")

    def cfg(out):
        return ExtractConfig(backbone=TINY, out=str(out), batch_size=3, shard_size=5, workers=0, layers=True,
                             views=["orig", "jpeg:60"])

    local = extract(src, cfg(tmp_path / "local"), backbone=tiny_backbone, progress=False)
    ray_run = extract_ray(src, cfg(tmp_path / "ray"), backbone=tiny_backbone, progress=False)
    assert local.errors == ray_run.errors == {"missing": 1} and local.embedded == ray_run.embedded == 14
    c = FeatureCache(tmp_path / "ray")
    assert c.has_layers and c.meta.caption.isna().sum() == 2  # k4 in both views
    _assert_same_bytes(tmp_path / "local", tmp_path / "ray")
