"""Hostile feature caches and repeated extractions: every mutation from the generator in
``helpers/hostile.py`` (paths that climb out, links that lead out, wrong JSON types, duplicate keys,
damaged arrays, special files) makes ``cache verify`` say DAMAGED and every reader refuse with
one line; a file outside the cache is never opened (those lead to FIFOs, which would hang); and
extracting a source a cache already holds is a no-op or a refusal, never a second copy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.hostile import HOSTILE_CACHES, deadline_fixture, hostile_cache
from helpers.synthetic import write_synthetic_cache
from clipdetect.cli.main import main
from clipdetect.features.cache import FeatureCache
from clipdetect.features.manifest import CacheError
from clipdetect.features.verify import open_verified, verify_cache
from helpers.images import TINY, write_image_folder

_deadline = deadline_fixture(300)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good") / "cache"
    write_synthetic_cache(root, n=60, dim=8, shards=3)
    return root


def _read_everything(root: Path) -> None:
    """What the readers do: open, metadata, labels, every embedding (image and text)."""
    cache = FeatureCache(root)
    cache.columns("key", "label", "split", "generator")
    cache.labels()
    cache.features("image+text")
    cache.meta
    cache.errors()


@pytest.mark.parametrize("name", sorted(HOSTILE_CACHES))
def test_verify_calls_it_damaged_and_every_reader_refuses(good, tmp_path, name, capsys):
    c = hostile_cache(good, tmp_path, name)
    report = verify_cache(c, full=True)
    assert not report.ok
    with pytest.raises(CacheError) as exc:
        _read_everything(c)
    assert "\n" not in str(exc.value)
    message = str(exc.value).replace(str(tmp_path), "TMP")  # the fragment must not come from a path
    assert HOSTILE_CACHES[name][1].lower() in message.lower(), message
    capsys.readouterr()
    assert main(["cache", "verify", str(c)]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["train", str(c), "--out", str(tmp_path / "det"), "--epochs", "1", "--no-sam",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("ERROR")]) == 1
    assert not (tmp_path / "det").exists()


def test_the_sound_cache_reads_and_verifies(good):
    assert verify_cache(good, full=True).ok
    _read_everything(good)
    assert len(open_verified(good)) == 60


def test_a_shard_name_that_climbs_out_is_never_followed(good, tmp_path):
    """The traversal target exists outside and holds valid shard files: still refused, and the
    file there is a FIFO, so opening it would hang this test past its deadline."""
    c = hostile_cache(good, tmp_path, "shard_relative_traversal")
    outside = c.parent / "outside"  # CACHE/img_emb/../../outside
    outside.mkdir(parents=True, exist_ok=True)
    import os

    for ext in ("npy", "parquet"):
        os.mkfifo(outside / f"evil.{ext}")
    assert not verify_cache(c).ok
    with pytest.raises(CacheError, match="not an allowed name"):
        open_verified(c)


# ------------------------------------------------------------------------ re-extraction
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "imgs", n=5)


def _extract(folder, out, *extra):
    return main(["extract", str(folder), "--out", str(out), "--backbone", TINY, "--workers", "0",
                 "--no-progress", *extra])


def _rows(cache: Path) -> int:
    return sum(s["rows"] for s in json.loads((cache / "manifest.json").read_text())["shards"])


def test_another_shard_size_on_a_complete_extraction_is_a_no_op(folder, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert _extract(folder, cache, "--shard-size", "4") == 0 and _rows(cache) == 10
    before = {p: p.read_bytes() for p in cache.rglob("part-*")}
    assert _extract(folder, cache, "--shard-size", "3") == 0
    assert _extract(folder, cache, "--shard-size", "7", "--text", "no") == 0
    assert _rows(cache) == 10 and {p: p.read_bytes() for p in cache.rglob("part-*")} == before
    assert "nothing to do" in capsys.readouterr().err
    assert main(["cache", "verify", str(cache)]) == 0


def test_asking_for_captions_the_cache_lacks_is_refused(folder, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert _extract(folder, cache, "--text", "no", "--caption-template", "a {label_name} photo") == 0
    capsys.readouterr()
    assert _extract(folder, cache, "--text", "yes", "--caption-template", "a {label_name} photo") == 2
    assert "without caption embeddings" in capsys.readouterr().err and _rows(cache) == 10


def test_other_options_on_a_partial_extraction_are_refused(folder, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert _extract(folder, cache, "--shard-size", "4", "--limit", "4") == 0 and _rows(cache) == 4
    capsys.readouterr()
    assert _extract(folder, cache, "--shard-size", "3") == 2
    assert "--shard-size 4" in capsys.readouterr().err and _rows(cache) == 4
    assert _extract(folder, cache, "--shard-size", "4") == 0 and _rows(cache) == 10  # the same options resume


def test_a_second_source_with_the_same_keys_is_refused_before_writing(folder, tmp_path, capsys):
    """A manifest naming the folder's images with the folder's keys: every key is already held."""
    cache = tmp_path / "cache"
    assert _extract(folder, cache) == 0
    manifest = tmp_path / "m.csv"
    rows = ["path,label,key"] + [f"{p},{int(p.parent.name == 'fake')},{p.relative_to(folder)}"
                                 for p in sorted(folder.rglob("*.png"))]
    manifest.write_text("\n".join(rows) + "\n")
    before = (cache / "manifest.json").read_bytes()
    capsys.readouterr()
    assert _extract(manifest, cache) == 2
    err = capsys.readouterr().err
    assert "already holds key" in err and "nothing was written" in err
    assert (cache / "manifest.json").read_bytes() == before
    assert main(["cache", "verify", str(cache)]) == 0


def test_a_source_repeating_a_key_is_refused(folder, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    img = next(folder.rglob("*.png"))
    manifest.write_text(f"path,label,key\n{img},0,same\n{img},0,same\n")
    assert _extract(manifest, tmp_path / "cache") == 2
    assert "more than once" in capsys.readouterr().err


def test_non_unit_rows_are_recorded_as_such(tmp_path):
    """The manifest's ``normalized`` says what the rows are, so readers can hold caches to it."""
    import pandas as pd

    from clipdetect.features.cache_writer import CacheWriter
    from clipdetect.features.manifest import ERROR_COLUMNS

    w = CacheWriter(tmp_path, backbone={"arch": "a", "embed_dim": 4})
    w.begin_run("r", {})
    meta = pd.DataFrame({"key": ["a", "b"], "label": [0, 1], "generator": "", "split": "train", "path": "",
                         "caption": None, "width": 8, "height": 8, "format": "PNG", "mode": "RGB"})
    none = pd.DataFrame(columns=ERROR_COLUMNS)
    w.write_shard("r", start=0, stop=2, img=np.eye(4)[:2], txt=None, meta=meta, errors=none)
    assert json.loads((tmp_path / "manifest.json").read_text())["normalized"] is True
    meta = meta.assign(key=["c", "d"])
    w.write_shard("r", start=2, stop=4, img=np.ones((2, 4)), txt=None, meta=meta, errors=none)
    assert json.loads((tmp_path / "manifest.json").read_text())["normalized"] is False
    assert FeatureCache(tmp_path).embeddings().shape == (4, 4) and verify_cache(tmp_path).ok
