"""`clipdetect cache verify` and the cheap checks train/evaluate run when they open a cache:
each kind of damage is named with its shard, file and rows, and nothing is trained on it."""
import json

import numpy as np
import pandas as pd
import pytest

from clipdetect.cli.main import main
from clipdetect.features.cache import FeatureCache

from helpers.synthetic import write_synthetic_cache

TRAIN = ["--epochs", "1", "--batch-size", "32", "--no-progress", "--no-sam", "--head", "linear"]


@pytest.fixture
def cache(tmp_path):
    write_synthetic_cache(tmp_path / "cache", n=120, dim=8, shards=3)
    return tmp_path / "cache"


def _shard(cache, i=1):
    return FeatureCache(cache).shards[i].name


def _verify(cache, capsys, *extra):
    rc = main(["cache", "verify", str(cache), *extra])
    return rc, capsys.readouterr().out


def _refused(cache, tmp_path, capsys):
    """train refuses before any work: exit 2, no output folder, the message is returned."""
    out = tmp_path / "det"
    rc = main(["train", str(cache), "--out", str(out), *TRAIN])
    assert rc == 2 and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".det")]  # nor its staging folder
    return capsys.readouterr().err


def test_sound_cache_verifies(cache, capsys):
    rc, out = _verify(cache, capsys)
    assert rc == 0 and "3 shards, 120 rows, full check: sound" in out


def test_nan_and_inf_are_named_by_shard_and_row(cache, tmp_path, capsys):
    name = _shard(cache)
    path = cache / "img_emb" / f"{name}.npy"
    x = np.load(path)
    x[3, 0], x[7, 2] = np.nan, np.inf
    np.save(path, x)
    rc, out = _verify(cache, capsys)
    assert rc == 1 and f"img_emb/{name}.npy (shard {name}): NaN or inf values at rows 3, 7" in out
    assert _verify(cache, capsys, "--quick")[0] == 0  # the cheap part does not read the data
    err = _refused(cache, tmp_path, capsys)  # ... but reading a batch does, before a single step
    assert "NaN/inf image embeddings" in err and f"{name} row 3" in err and "cache verify" in err


def test_norms_off_one_are_reported(cache, capsys):
    name = _shard(cache, 0)
    path = cache / "img_emb" / f"{name}.npy"
    x = np.load(path)
    x[5] *= 3
    np.save(path, x)
    rc, out = _verify(cache, capsys)
    assert rc == 1 and "norm differs from 1" in out and "rows 5" in out


def test_fewer_rows_than_the_manifest_is_refused_before_training(cache, tmp_path, capsys):
    name = _shard(cache)
    path = cache / "img_emb" / f"{name}.npy"
    np.save(path, np.load(path)[:-2])
    rc, out = _verify(cache, capsys, "--quick")
    assert rc == 1 and f"holds shape (38, 8) but the manifest says (40, 8)" in out
    err = _refused(cache, tmp_path, capsys)
    assert f"{name}.npy" in err and "damaged" in err and "Traceback" not in err


def test_truncated_npy_is_named_with_its_sizes(cache, tmp_path, capsys):
    name = _shard(cache, 2)
    path = cache / "txt_emb" / f"{name}.npy"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    rc, out = _verify(cache, capsys)
    assert rc == 1 and f"txt_emb/{name}.npy (shard {name}): truncated: {len(data) - 100:,} bytes" in out
    err = _refused(cache, tmp_path, capsys)
    assert "truncated" in err and f"txt_emb/{name}.npy" in err


def test_evaluate_refuses_a_damaged_cache_before_writing(cache, tmp_path, capsys):
    assert main(["train", str(cache), "--out", str(tmp_path / "det"), *TRAIN]) == 0
    (cache / "meta" / f"{_shard(cache)}.parquet").write_bytes(b"not parquet")
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "det"), str(cache), "--out", str(out), "--n-boot", "0"]) == 2
    err = capsys.readouterr().err
    assert "unreadable parquet" in err and f"meta/{_shard(cache)}.parquet" in err and not out.exists()


def test_metadata_misaligned_or_duplicate_keys(cache, capsys):
    a, b = _shard(cache, 0), _shard(cache, 1)
    meta = pd.read_parquet(cache / "meta" / f"{b}.parquet")
    meta.loc[4, "key"] = pd.read_parquet(cache / "meta" / f"{a}.parquet")["key"][0]
    meta.to_parquet(cache / "meta" / f"{b}.parquet", index=False)
    rc, out = _verify(cache, capsys)
    assert rc == 1 and f"meta/{b}.parquet (shard {b}): duplicate keys" in out and "rows 4" in out
    meta.iloc[:-1].to_parquet(cache / "meta" / f"{b}.parquet", index=False)
    rc, out = _verify(cache, capsys, "--quick")
    assert rc == 1 and "has 39 rows but the manifest says 40" in out


def test_malformed_manifest_names_file_and_position(cache, tmp_path, capsys):
    text = (cache / "manifest.json").read_text()
    (cache / "manifest.json").write_text(text[:200])
    rc, out = _verify(cache, capsys)
    assert rc == 1 and "manifest.json" in out and "is not valid JSON (line" in out
    err = _refused(cache, tmp_path, capsys)
    assert "manifest.json" in err and "line" in err and "column" in err


def test_ledger_and_run_positions_are_checked(cache, capsys):
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"][2]["errors"] = 5
    manifest["runs"]["synthetic"]["position"] = 50
    (cache / "manifest.json").write_text(json.dumps(manifest))
    rc, out = _verify(cache, capsys, "--quick")
    assert rc == 1 and "has 0 rows but the manifest says 5" in out and "beyond its run's position 50" in out
