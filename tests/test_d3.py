"""D3Source on a D3-schema parquet: row expansion, captions, generator selection, reals, extraction."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdetect.features.cache import FeatureCache
from clipdetect.data.d3 import D3Source
from clipdetect.data.d3_reals import MissingImage
from clipdetect.features.runner import ExtractConfig
from clipdetect.features.extract import extract
from clipdetect.features.pipeline import decode_refs
from clipdetect.data.imaging import SplitPreprocess
from clipdetect.data.registry import open_source
from helpers.images import TINY

from helpers.d3 import (FORMATS, MISSING, MODELS, ROUTES, SIZES, fake_format, make_d3_folder, make_d3_parquet,
                         real_bytes, row_id, serve_reals, write_reals_dir)

FETCH = dict(fetch_timeout=(1.0, 0.6), fetch_retries=1, fetch_backoff=0.01, fetch_workers=4)


@pytest.fixture(scope="module")
def server():
    with serve_reals() as srv:
        yield srv


@pytest.fixture(scope="module")
def d3(server, tmp_path_factory):
    return str(make_d3_parquet(tmp_path_factory.mktemp("d3") / "data" / "train-00000-of-00001.parquet",
                               server.base_url))


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
    assert [s.generator for s in row[1:]] == ["DeepFloyd/IF-II-L-v1.0", "CompVis/stable-diffusion-v1-4",
                                              "stabilityai/stable-diffusion-2-1-base",
                                              "stabilityai/stable-diffusion-xl-base-1.0"]  # D3's column order
    assert isinstance(row[0].image, MissingImage)  # no reals source configured


def test_reference_caption_policy_pairs_real_and_fake_prompts(d3):
    row = list(D3Source(d3, caption_policy="reference"))[5:10]
    assert row[0].caption == "a photo of object number 1"
    assert {s.caption for s in row[1:]} == {"a photo of object number 1, highly detailed, 8k, trending"}
    with pytest.raises(ValueError, match="caption_policy"):
        D3Source(d3, caption_policy="leaky")


def test_generator_selection_and_resume_positions(d3):
    src = D3Source(d3, generators=["sd21", "DeepFloyd/IF-II-L-v1.0"])
    samples = list(src)
    assert src.size() == len(samples) == 6 * 3
    assert {s.generator for s in samples} == {"real", MODELS[0], MODELS[2]}
    assert [s.key.split("/")[1] for s in samples[:3]] == ["real", "gen0", "gen2"]
    fakes_only = D3Source(d3, generators="gen1,sdxl", include_real=False)
    assert fakes_only.size() == 12 and {s.generator for s in fakes_only} == {MODELS[1], MODELS[3]}
    for alias, col in (("if", 0), ("sd14", 1), ("sd21", 2), ("sdxl", 3), ("COMPVIS/Stable-Diffusion-v1-4", 1)):
        picked = D3Source(d3, generators=alias, include_real=False)
        assert {s.key.split("/")[1] for s in picked} == {f"gen{col}"}, alias
    for source in (src, fakes_only, D3Source(d3)):
        every = [s.key for s in source]
        for start in (0, 1, 4, 7, len(every) - 1, len(every)):
            assert [s.key for s in source.iterate(start)] == every[start:]
    for bad in ("sd3", "stabilityai/stable-diffusion-2-1", "DeepFloyd/IF-I-M-v1.0"):  # not D3's model strings
        with pytest.raises(ValueError, match=r"\['" + bad + r"'\] match no model.*IF-II-L-v1\.0.*sd21 = "
                                             r"stabilityai/stable-diffusion-2-1-base.*gen0\.\.gen3"):
            D3Source(d3, generators=[bad])
    with pytest.raises(ValueError, match="sd3.*match no model"):
        D3Source(d3, generators="sd3", streaming=True)
    streamed = [s.key for s in D3Source(d3, generators="if", streaming=True)]
    assert streamed[:2] == [f"{row_id(0)}/real", f"{row_id(0)}/gen0"]
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
    assert summary.embedded == 24 and summary.errors == {"real_missing": 4, "fake_missing": 2}
    cache = FeatureCache(out)
    meta = cache.meta
    assert list(meta.key) == [s.key for s in src if not isinstance(s.image, MissingImage)]
    assert meta.generator.value_counts().to_dict() == {MODELS[0]: 5, MODELS[1]: 6, MODELS[2]: 5, MODELS[3]: 6,
                                                       "real": 2}
    fakes = meta[meta.label == 1]
    assert set(fakes.format) == {f for f, _ in FORMATS}  # every fake format decoded and recorded
    assert all(fake_format(int(k[:8]), int(k[-1]))[0] == f for k, f in zip(fakes.key, fakes.format))
    errors = cache.errors()
    assert errors.reason.value_counts().to_dict() == {"real_missing": 4, "fake_missing": 2}
    assert sorted(errors.key[errors.reason == "fake_missing"]) == sorted(f"{row_id(i)}/gen{g}" for i, g in MISSING)
    txt = cache.embeddings("text")
    row1 = np.flatnonzero(meta.key.str.startswith(row_id(1)).to_numpy())
    assert len(row1) == 5 and np.allclose(txt[row1], txt[row1[0]])  # one caption per row, all labels
    assert not np.allclose(txt[row1[0]], txt[0])


def test_extract_command_line_d3_flags(d3, server, tmp_path, capsys):
    import json

    from clipdetect.cli.main import main

    def run(out, *flags):
        code = main(["extract", f"d3:{d3}", "--out", str(tmp_path / out), "--backbone", TINY, "--workers", "0",
                     "--no-progress", "--json", *flags])
        return code, (json.loads(capsys.readouterr().out) if code == 0 else None)

    store = str(tmp_path / "store")
    fetch = ["--fetch-reals", "--reals-store", store, "--fetch-timeout", "1", "0.6", "--fetch-retries", "1",
             "--fetch-workers", "4"]
    code, first = run("a", *fetch)
    assert code == 0 and first["seen"] == 30 and first["complete"]
    assert first["errors"] == {"real_missing": 3, "fake_missing": 2}  # dead, slow (times out), html
    assert sorted(p.name for p in (tmp_path / "store").glob("failures*")) == ["failures.jsonl"]
    hits = dict(server.hits)
    code, again = run("b", "--reals-store", store)  # the store alone serves the reals: nothing fetched
    assert code == 0 and again["embedded"] == first["embedded"] and dict(server.hits) == hits
    code, fakes = run("c", "--no-reals", "--generators", "sd14,sdxl")
    assert code == 0 and (fakes["seen"], fakes["errors"]) == (12, {})
    assert set(FeatureCache(tmp_path / "c").meta.generator) == {MODELS[1], MODELS[3]}
    folder = tmp_path / "plain"
    folder.mkdir()
    code = main(["extract", str(folder), "--out", str(tmp_path / "e"), "--backbone", TINY, "--reals-store", store])
    assert code == 2 and "--reals-store only apply to D3 sources" in capsys.readouterr().err
    assert main(["extract", f"d3:{d3}", "--out", str(tmp_path / "f"), "--backbone", TINY,
                 "--ray-encoders", "2"]) == 2
    assert "need --engine ray" in capsys.readouterr().err


def test_fakes_decode_in_all_five_formats_and_missing_fakes_are_marked(d3):
    from clipdetect.data.imaging import BadImage, decode_image

    fakes = [s for s in D3Source(d3) if s.label == 1]
    seen = set()
    for s in fakes:
        i, g = int(s.key[:8]), int(s.key[-1])
        fmt, ext = fake_format(i, g)
        assert s.path == f"gen{g}/{s.key[:8]}.{ext}"
        if (i, g) in MISSING:
            assert isinstance(s.image, MissingImage) and s.image.reason == "fake_missing"
            with pytest.raises(BadImage, match="fake_missing"):
                decode_image(s.image)
            continue
        img, info = decode_image(s.image)
        assert (img.mode, img.size, info["format"]) == ("RGB", SIZES[g][i % len(SIZES[g])], fmt)
        seen.add(fmt)
    assert seen == {f for f, _ in FORMATS}


def test_split_files_follow_the_hub_layout(server, tmp_path, caplog):
    from clipdetect.data.d3_layout import split_files

    ids = make_d3_folder(tmp_path, server.base_url)
    data = tmp_path / "data"
    names = lambda files: sorted(Path(f).name for f in files)  # noqa: E731
    assert names(split_files(str(data), "train")) == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet",
                                                      "val-00000-of-00001.parquet"]
    assert names(split_files(str(data), "validation")) == ["validation-00000-of-00001.parquet"]
    assert names(split_files(str(data / "*.parquet"), "validation")) == ["validation-00000-of-00001.parquet"]
    assert names(split_files(str(data / "val-*.parquet"), "train")) == ["val-00000-of-00001.parquet"]
    with caplog.at_level("WARNING", logger="clipdetect.data.d3_layout"):  # a train-* glob misses val-*: said so
        assert len(split_files(str(data / "train-*.parquet"), "train")) == 2
    assert "leaves out 1 'train' file(s)" in caplog.text and "val-00000-of-00001.parquet" in caplog.text
    with pytest.raises(ValueError, match="no 'validation' files.*pass --split train"):
        split_files(str(data / "val-*.parquet"), "validation")
    with pytest.raises(ValueError, match="'test' is not a D3 split"):
        split_files(str(data), "test")
    for split in ("train", "validation"):  # a folder never mixes the splits, and keeps every row of its split
        src = D3Source(str(data), split=split)
        assert sorted({s.key.split("/")[0] for s in src}) == ids[split] and {s.split for s in src} == {split}
        assert [u for u in src.urls()] == [u for u in D3Source(str(tmp_path), split=split).urls()]
    assert len(ids["train"]) == 8 and len(ids["validation"]) == 3
    (data / "other.parquet").write_bytes((data / "val-00000-of-00001.parquet").read_bytes())
    with pytest.raises(ValueError, match="mixes D3 split files.*other.parquet"):
        D3Source(str(data))
    assert split_files(str(data / "other.parquet"), "anything") == [str(data / "other.parquet")]
