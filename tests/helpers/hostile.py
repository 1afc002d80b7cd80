"""Helpers for the hostile-input tests: a per-test deadline and generators of hostile detector
bundles and feature caches (the real-process runner is in :mod:`helpers.procs`).

Every generator starts from a sound artefact and applies one named mutation, so each case is
one attack with one expected refusal; the tests run every case and the same attack classes
with inputs they do not list can be added here in one line.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

@contextlib.contextmanager
def deadline(seconds: int):
    """Fail the test (instead of hanging the suite) when it runs past ``seconds``: SIGALRM also
    interrupts a blocking read or open in the main thread."""
    def expired(*_):
        raise TimeoutError(f"the test ran past its {seconds} s deadline (a hang?)")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def deadline_fixture(seconds: int):
    """An autouse fixture giving every test of a module its own deadline."""
    @pytest.fixture(autouse=True)
    def _deadline():
        with deadline(seconds):
            yield
    return _deadline


# ------------------------------------------------------------------------ hostile bundles
def _edit_json(edit, name: str = "detector.json"):
    """An attack rewriting the JSON file ``name`` of a folder (a bundle, a cache) through ``edit``."""
    def apply(d: Path):
        doc = json.loads((d / name).read_text())
        (d / name).write_text(json.dumps(edit(doc)))
    return apply


def _edit_head(**fields):
    return _edit_json(lambda c: {**c, "head_config": {**c["head_config"], **fields}})


def _edit_tensors(edit):
    def apply(d: Path):
        from safetensors.numpy import load_file, save_file

        t = load_file(str(d / "model.safetensors"))
        save_file(edit(t), str(d / "model.safetensors"))
    return apply


def _each_float(fn):
    return _edit_tensors(lambda t: {k: fn(v) if v.dtype.kind == "f" else v for k, v in t.items()})


def _replace(name: str, make):
    def apply(d: Path):
        (d / name).unlink()
        make(d / name)
    return apply


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


#: name → (mutation of a sound bundle folder, what the one-line refusal must mention)
HOSTILE_BUNDLES: Dict[str, tuple] = {
    "nan_weights": (_each_float(lambda v: np.full_like(v, np.nan)), "NaN or inf"),
    "inf_weight": (_each_float(lambda v: np.where(np.arange(v.size).reshape(v.shape) == 0, np.inf, v)
                               .astype(v.dtype)), "NaN or inf"),
    "int64_weights": (_each_float(lambda v: (v * 1000).astype(np.int64)), "floating-point"),
    "negative_variance": (_edit_tensors(lambda t: {k: -np.abs(v) - 1 if k.endswith("running_var") else v
                                                   for k, v in t.items()}), "negative variances"),
    "wrong_shape": (_edit_tensors(lambda t: {k: (v[:-1] if k.endswith("out.weight") else v)
                                             for k, v in t.items()}), "shape"),
    "extra_tensor": (_edit_tensors(lambda t: {**t, "evil": np.zeros(3, np.float32)}), "unexpected"),
    "pickle_weights": (_replace("model.safetensors", lambda p: p.write_bytes(b"\x80\x04\x95junk")), "pickle"),
    "zero_weights_file": (_replace("model.safetensors", lambda p: p.write_bytes(b"")), "safetensors"),
    "header_overflow": (_replace("model.safetensors",
                                 lambda p: p.write_bytes((2**60).to_bytes(8, "little") + b"{}")), "safetensors"),
    "weights_dev_zero": (_replace("model.safetensors", lambda p: p.symlink_to("/dev/zero")), "not a regular file"),
    "weights_fifo": (_replace("model.safetensors", lambda p: os.mkfifo(p)), "not a regular file"),
    "json_list": (_edit_json(lambda c: [c]), "expected an object"),
    "threshold_null": (_edit_json(lambda c: {**c, "threshold": None}), "threshold"),
    "threshold_string": (_edit_json(lambda c: {**c, "threshold": "0.5"}), "threshold"),
    "threshold_above_one": (_edit_json(lambda c: {**c, "threshold": 1.5}), "threshold"),
    "version_string": (_edit_json(lambda c: {**c, "version": "2"}), "version"),
    "version_future": (_edit_json(lambda c: {**c, "version": 99}), "version"),
    "no_head_config": (_edit_json(lambda c: {k: v for k, v in c.items() if k != "head_config"}), "head_config"),
    "head_config_list": (_edit_json(lambda c: {**c, "head_config": [1, 2]}), "head_config"),
    "unknown_head_field": (_edit_head(evil=1), "unknown field"),
    "depth_200000": (_edit_head(depth=200000), "head_config.depth"),
    "width_120000": (_edit_head(width=120000), "head_config.width"),
    "in_dim_string": (_edit_head(in_dim="16"), "head_config.in_dim"),
    "depth_bool": (_edit_head(depth=True), "head_config.depth"),
    "too_many_parameters": (_edit_head(width=40000, depth=64), "parameters"),
    "dropout_one": (_edit_head(dropout=1.0), "head_config.dropout"),
    "svd_rank_1e9": (_edit_json(lambda c: {**c, "extra": {"compression": {"svd": {"body.0": 10**9}}}}), "svd"),
    "svd_rank_too_big": (_edit_json(lambda c: {**c, "extra": {"compression": {"svd": {"body.0": 17}}}}), "rank"),
    "svd_not_a_layer": (_edit_json(lambda c: {**c, "extra": {"compression": {"svd": {"body.1": 2}}}}), "BatchNorm"),
    "svd_no_such_layer": (_edit_json(lambda c: {**c, "extra": {"compression": {"svd": {"../x": 2}}}}), "exist"),
    "temperature_1e308": (_edit_json(lambda c: {**c, "temperature": 1e308}), "temperature"),
    "temperature_5e-324": (_edit_json(lambda c: {**c, "temperature": 5e-324}), "temperature"),
    "temperature_negative": (_edit_json(lambda c: {**c, "temperature": -1}), "temperature"),
    "feature_set_bogus": (_edit_json(lambda c: {**c, "feature_set": "pixels"}), "feature_set"),
    "backbone_list": (_edit_json(lambda c: {**c, "backbone": ["x"]}), "backbone"),
    "format_other": (_edit_json(lambda c: {**c, "format": "other"}), "format"),
    "nested_100000": (_replace("detector.json", lambda p: p.write_text(_nested(100000))), "cannot be parsed"),
    "int_5000_digits": (_replace("detector.json", lambda p: p.write_text('{"x": ' + "9" * 5000 + "}")),
                        "cannot be parsed"),
    "not_utf8": (_replace("detector.json", lambda p: p.write_bytes(b"\xff\xfe{}")), "UTF-8"),
    "json_sparse_2gb": (_replace("detector.json", lambda p: os.truncate(_touch(p), 2 * 2**30)), "allowed"),
    "json_fifo": (_replace("detector.json", lambda p: os.mkfifo(p)), "not a regular file"),
    "json_dev_zero": (_replace("detector.json", lambda p: p.symlink_to("/dev/zero")), "not a regular file"),
}


def _touch(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def hostile_bundle(good: Path, out: Path, name: str) -> Path:
    """A copy of bundle ``good`` at ``out/bundle`` with attack ``name`` applied."""
    d = out / "bundle"  # a neutral name: messages are searched for what the refusal must mention
    shutil.copytree(good, d)
    HOSTILE_BUNDLES[name][0](d)
    return d


# ------------------------------------------------------------------------ hostile caches
def _manifest(edit):
    return _edit_json(edit, "manifest.json")


def _first_shard(**fields):
    return _manifest(lambda m: {**m, "shards": [{**m["shards"][0], **fields}, *m["shards"][1:]]})


def _shard_file(sub: str, ext: str, change):
    def apply(c: Path):
        name = json.loads((c / "manifest.json").read_text())["shards"][0]["name"]
        change(c / sub / f"{name}.{ext}", c)
    return apply


def _outside_link(path: Path, cache: Path):
    """The shard file replaced by a link to a FIFO outside the cache: following it would hang."""
    outside = cache.parent / f"outside-{path.name}"
    os.mkfifo(outside)
    path.unlink()
    path.symlink_to(outside)


def _duplicate_keys(c: Path):
    import pandas as pd

    shards = json.loads((c / "manifest.json").read_text())["shards"]
    a, b = (c / "meta" / f"{s['name']}.parquet" for s in shards[:2])
    ma, mb = pd.read_parquet(a), pd.read_parquet(b)
    mb.loc[0, "key"] = ma.loc[0, "key"]
    mb.to_parquet(b, index=False)


def _labels_two(c: Path):
    import pandas as pd

    name = json.loads((c / "manifest.json").read_text())["shards"][0]["name"]
    p = c / "meta" / f"{name}.parquet"
    m = pd.read_parquet(p)
    m.loc[1, "label"] = 2
    m.to_parquet(p, index=False)


def _npy_rows(change):
    def apply(path: Path, cache: Path):
        arr = np.load(path)
        np.save(path, change(arr))
    return apply


#: name → (mutation of a sound cache folder, what the refusal must mention). Shard files that
#: point outside lead to a FIFO: a reader that followed them would hang, which fails the test.
HOSTILE_CACHES: Dict[str, tuple] = {
    "shard_relative_traversal": (_first_shard(name="../../outside/evil"), "not an allowed name"),
    "shard_absolute_path": (_first_shard(name="/tmp/evil"), "not an allowed name"),
    "shard_dotdot": (_first_shard(name=".."), "not an allowed name"),
    "shard_link_leads_out": (_shard_file("img_emb", "npy", _outside_link), "outside"),
    "meta_link_leads_out": (_shard_file("meta", "parquet", _outside_link), "outside"),
    "shards_5": (_manifest(lambda m: {**m, "shards": 5}), "shards"),
    "dtype_bogus": (_manifest(lambda m: {**m, "dtype": "qint3"}), "dtype"),
    "embed_dim_string": (_manifest(lambda m: {**m, "embed_dim": "8"}), "embed_dim"),
    "embed_dim_huge": (_manifest(lambda m: {**m, "embed_dim": 10**12}), "embed_dim"),
    "rows_negative": (_first_shard(rows=-5), "rows"),
    "manifest_list": (_manifest(lambda m: [m]), "expected an object"),
    "no_runs": (_manifest(lambda m: {k: v for k, v in m.items() if k != "runs"}), "runs"),
    "shard_twice": (_manifest(lambda m: {**m, "shards": [m["shards"][0], *m["shards"]]}), "twice"),
    "unknown_run": (_first_shard(run="nobody"), "lacks"),
    "beyond_position": (_first_shard(stop=10**6), "beyond"),
    "duplicate_keys": (_duplicate_keys, "key"),
    "labels_two": (_labels_two, "labels"),
    "nan_row": (_shard_file("img_emb", "npy", _npy_rows(lambda a: np.where(np.arange(len(a))[:, None] == 1,
                                                                           np.nan, a).astype(a.dtype))), "NaN"),
    "norm_off": (_shard_file("img_emb", "npy", _npy_rows(lambda a: (a * 3).astype(a.dtype))), "norm"),
    "trailing_bytes": (_shard_file("img_emb", "npy", lambda p, c: p.write_bytes(p.read_bytes() + b"\0" * 64)),
                       "bytes"),
    "truncated_npy": (_shard_file("img_emb", "npy", lambda p, c: p.write_bytes(p.read_bytes()[:-64])), "truncated"),
    "npy_float64": (_shard_file("img_emb", "npy", _npy_rows(lambda a: a.astype(np.float64))), "float64"),
    "npy_fifo": (_shard_file("img_emb", "npy", lambda p, c: (p.unlink(), os.mkfifo(p))), "not a regular file"),
    "meta_fifo": (_shard_file("meta", "parquet", lambda p, c: (p.unlink(), os.mkfifo(p))), "not a regular file"),
    "manifest_fifo": (lambda c: ((c / "manifest.json").unlink(), os.mkfifo(c / "manifest.json")),
                      "not a regular file"),
    "manifest_nested": (lambda c: (c / "manifest.json").write_text(_nested(100000)), "cannot be parsed"),
}


def hostile_cache(good: Path, out: Path, name: str) -> Path:
    """A copy of cache ``good`` at ``out/case/cache`` with attack ``name`` applied."""
    c = out / "case" / "cache"
    shutil.copytree(good, c)
    HOSTILE_CACHES[name][0](c)
    return c
