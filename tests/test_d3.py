"""D3Source on a D3-schema parquet: row expansion, captions, generator selection, reals, extraction."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdetect.features.cache import FeatureCache
from clipdetect.data.d3 import D3Source, MissingImage
from clipdetect.features.extract import ExtractConfig, decode_refs, extract
from clipdetect.data.imaging import SplitPreprocess
from clipdetect.data.registry import open_source
from conftest import TINY

from _d3_fixture import (MODELS, ROUTES, SIZES, make_d3_parquet, real_bytes, row_id, serve_reals,
                         write_reals_dir)

FETCH = dict(fetch_timeout=(1.0, 0.6), fetch_retries=1, fetch_backoff=0.01, fetch_workers=4)


@pytest.fixture(scope="module")
def server():
    with serve_reals() as srv:
        yield srv


@pytest.fixture(scope="module")
def d3(server, tmp_path_factory):
    return str(make_d3_parquet(tmp_path_factory.mktemp("d3") / "train-00000.parquet", server.base_url))


def test_one_row_is_one_real_and_four_fakes(d3):
    src = D3Source(d3)
    samples = list(src)
    assert src.size() == len(samples) == 6 * 5
    row = samples[:5]
    assert [s.key for s in row] == [f"{row_id(0)}/real"] + [f"{row_id(0)}/gen{i}" for i in range(4)]
    assert [s.label for s in row] == [0, 1, 1, 1, 1]
    assert [s.generator for s in row] == ["real"] + MODELS
    assert {s.caption for s in row} == {"a photo of object number 0"}  # same caption: no text leak
    assert row[0].path.endswith(f"/ok/{row_id(0)}.jpg") and row[1].path == f"gen0/{row_id(0)}.png"
    for i, s in enumerate(row[1:]):
        assert Image.open(io.BytesIO(s.image)).size == SIZES[i][0]
    assert isinstance(row[0].image, MissingImage)  # no reals source configured


def test_reference_caption_policy_pairs_real_and_fake_prompts(d3):
    row = list(D3Source(d3, caption_policy="reference"))[5:10]
    assert row[0].caption == "a photo of object number 1"
    assert {s.caption for s in row[1:]} == {"a photo of object number 1, highly detailed, 8k, trending"}
    with pytest.raises(ValueError, match="caption_policy"):
        D3Source(d3, caption_policy="leaky")


def test_generator_selection_and_resume_positions(d3):
    src = D3Source(d3, generators=["sd21", "DeepFloyd/IF-I-M-v1.0"])
    samples = list(src)
    assert src.size() == len(samples) == 6 * 3
    assert {s.generator for s in samples} == {"real", MODELS[1], MODELS[3]}
    assert [s.key.split("/")[1] for s in samples[:3]] == ["real", "gen1", "gen3"]
    fakes_only = D3Source(d3, generators="gen0,sdxl", include_real=False)
    assert fakes_only.size() == 12 and {s.generator for s in fakes_only} == {MODELS[0], MODELS[2]}
    for source in (src, fakes_only, D3Source(d3)):
        every = [s.key for s in source]
        for start in (0, 1, 4, 7, len(every) - 1, len(every)):
            assert [s.key for s in source.iterate(start)] == every[start:]
    with pytest.raises(ValueError, match="match no model.*stable-diffusion-2-1"):
        D3Source(d3, generators=["sd3"])
    assert src.describe() != D3Source(d3).describe()


def test_reals_from_a_folder_and_missing_reals_reported(d3, tmp_path):
    folder = write_reals_dir(tmp_path / "reals", [0, 2, 4])
    with_reals = D3Source(d3, reals_dir=str(folder))
    assert with_reals.describe() == D3Source(d3).describe()  # adding reals resumes the same run
    reals = [s for s in with_reals if s.label == 0]
    assert [isinstance(s.image, str) for s in reals] == [True, False, True, False, True, False]
    assert [Path(reals[i].image).stem for i in (0, 2, 4)] == [row_id(0), row_id(2), row_id(4)]
    pre = SplitPreprocess(lambda img: img)
    pre.pil_stage = []
    decoded = decode_refs([s.image for s in reals], pre, 10 ** 7)
    assert [d[0] for d in decoded] == ["ok", "err"] * 3
    assert {d[1] for d in decoded if d[0] == "err"} == {"real_missing"}


def test_fetch_reals_uses_store_and_ledger(d3, server, tmp_path):
    store = tmp_path / "store"
    src = D3Source(d3, fetch_reals=True, store=str(store), fetch_window=4, **FETCH)
    assert [u.rsplit("/", 2)[1] for u in src.urls()] == ROUTES
    reals = [s for s in src if s.label == 0]
    for i, (s, route) in enumerate(zip(reals, ROUTES)):
        if route in ("ok", "flaky"):
            assert open(s.image, "rb").read() == real_bytes(i)
        else:
            assert isinstance(s.image, MissingImage) and s.image.reason == "real_missing"
    assert "not_found" in reals[2].image.detail and "not_an_image" in reals[4].image.detail
    before = dict(server.hits)
    again = [s.image for s in D3Source(d3, fetch_reals=True, store=str(store), **FETCH) if s.label == 0]
    assert dict(server.hits) == before, "already fetched or known-dead URLs are not fetched again"
    # a store filled earlier serves reals without fetching
    assert [type(x) for x in again] == [type(s.image) for s in reals]
    assert [s.image for s in D3Source(d3, store=str(store)) if s.label == 0][0] == reals[0].image
    clone = pickle.loads(pickle.dumps(src))  # reopens the dataset (Ray / worker processes)
    assert [s.key for s in clone] == [s.key for s in src] and clone.describe() == src.describe()


def test_extract_d3_end_to_end_counts_missing_reals(d3, tmp_path, tiny_backbone):
    folder = write_reals_dir(tmp_path / "reals", [1, 3])
    src = open_source(f"d3:{d3}", reals_dir=str(folder), split=None, generators=None, streaming=None)
    out = tmp_path / "cache"
    summary = extract(src, ExtractConfig(backbone=TINY, out=str(out), batch_size=7, shard_size=12, workers=0),
                      backbone=tiny_backbone, progress=False)
    assert summary.complete and summary.seen == 30
    assert summary.embedded == 26 and summary.errors == {"real_missing": 4}
    cache = FeatureCache(out)
    meta = cache.meta
    assert list(meta.key) == [s.key for s in src if not isinstance(s.image, MissingImage)]
    assert meta.generator.value_counts().to_dict() == {**{m: 6 for m in MODELS}, "real": 2}
    assert set(cache.errors().reason) == {"real_missing"} and len(cache.errors()) == 4
    txt = cache.embeddings("text")
    row1 = np.flatnonzero(meta.key.str.startswith(row_id(1)).to_numpy())
    assert len(row1) == 5 and np.allclose(txt[row1], txt[row1[0]])  # one caption per row, all labels
    assert not np.allclose(txt[row1[0]], txt[0])


def test_extract_command_line_d3_flags(d3, server, tmp_path, capsys):
    import json

    from clipdetect.cli.main import main

    def run(out, *flags):
        code = main(["extract", f"d3:{d3}", "--out", str(tmp_path / out), "--backbone", TINY, "--workers", "0",
                     "--no-progress", *flags])
        return code, (json.loads(capsys.readouterr().out) if code == 0 else None)

    store = str(tmp_path / "store")
    fetch = ["--fetch-reals", "--reals-store", store, "--fetch-timeout", "1", "0.6", "--fetch-retries", "1",
             "--fetch-workers", "4"]
    code, first = run("a", *fetch)
    assert code == 0 and first["seen"] == 30 and first["complete"]
    assert first["errors"] == {"real_missing": 3}  # dead, slow (times out), html
    assert sorted(p.name for p in (tmp_path / "store").glob("failures*")) == ["failures.jsonl"]
    hits = dict(server.hits)
    code, again = run("b", "--reals-store", store)  # the store alone serves the reals: nothing fetched
    assert code == 0 and again["embedded"] == first["embedded"] and dict(server.hits) == hits
    code, fakes = run("c", "--no-reals", "--generators", "sd14,sdxl")
    assert code == 0 and (fakes["seen"], fakes["errors"]) == (12, {})
    assert set(FeatureCache(tmp_path / "c").meta.generator) == {MODELS[0], MODELS[2]}
    folder = tmp_path / "plain"
    folder.mkdir()
    code = main(["extract", str(folder), "--out", str(tmp_path / "e"), "--backbone", TINY, "--reals-store", store])
    assert code == 2 and "--reals-store only apply to D3 sources" in capsys.readouterr().err
    assert main(["extract", f"d3:{d3}", "--out", str(tmp_path / "f"), "--backbone", TINY,
                 "--ray-encoders", "2"]) == 2
    assert "need --engine ray" in capsys.readouterr().err
