"""One writer per cache: a second writer refuses naming the holder (or waits), live writers'
temporary files survive start-up clean-up, and two real `clipdetect extract` processes on one
cache keep both runs' rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from clipdetect.cli.main import main
from clipdetect.features.cache import FeatureCache
from clipdetect.features.cache_writer import LOCK_NAME, CacheWriter
from helpers.images import TINY, write_image_folder

ROOT = Path(__file__).resolve().parent.parent  # children import this checkout's package
HOLD = ("import sys; from clipdetect.core.lock import DirLock; lock = DirLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); sys.stdin.readline(); lock.release(); print('released', flush=True); "
        "sys.stdin.readline()")
IDENT = {"arch": "a", "weights": "random", "seed": 0, "embed_dim": 4, "preprocess": {"size": [8, 8]}}


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _folder(root: Path, prefix: str, n: int = 4) -> Path:
    return write_image_folder(root, n=n, fake_offset=50, seed=hash(prefix) % 1000, name=prefix + "{i}")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the cache's writer lock (it releases on the first line of stdin)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(cache / LOCK_NAME)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    assert proc.stdout.readline().strip() == "held"
    yield cache, proc
    proc.kill()
    proc.wait()


def _extract(src, cache, *extra):
    return main(["extract", str(src), "--out", str(cache), "--backbone", TINY, "--workers", "0",
                 "--no-progress", *extra])


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_second_writer_refuses_naming_the_holder(tmp_path, holder, capsys, engine):
    if engine == "ray":
        pytest.importorskip("ray.data", reason="the Ray engine needs ray[data]")
    cache, proc = holder
    src = _folder(tmp_path / "src", "a")
    assert _extract(src, cache, "--engine", engine) == 2
    err = capsys.readouterr().err
    assert "is being written by another process" in err and f"pid {proc.pid}" in err
    assert "from clipdetect.core.lock import DirLock" in err  # the holder's command line
    assert "--lock-timeout" in err and not (cache / "manifest.json").exists()


def test_holder_waits_for_a_new_holders_record(tmp_path):
    """Between taking the lock and recording itself, a holder's file is empty or names the last,
    finished holder; a refused writer re-reads it rather than blaming "an unknown process"."""
    from clipdetect.core.lock import DirLock
    path = tmp_path / "lock"
    path.write_text(json.dumps({"pid": 2 ** 22 + 7, "command": "old"}))  # a finished holder
    late = json.dumps({"pid": os.getpid(), "command": "new writer", "since": "now"})
    timer = threading.Timer(0.2, path.write_text, args=(late,))
    timer.start()
    try:
        said = DirLock(path).holder()
    finally:
        timer.join()
    assert said.startswith(f"pid {os.getpid()} (new writer") and "no longer running" not in said
    for junk in ("", "[1]", '{"pid": "x"}', "not json"):  # no record this module wrote ever came
        path.write_text(junk)
        assert DirLock(path).holder(settle=0.1) == "an unknown process"


def test_waits_for_the_lock_and_keeps_a_live_writers_temp_files(tmp_path, holder):
    cache, proc = holder
    (cache / "meta").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_tmp = cache / "meta" / f".part-00000-x.parquet.tmp-{proc.pid}-0a0b"
    dead_tmp = cache / "meta" / f".part-00000-x.parquet.tmp-{dead.pid}-0a0b"
    live_tmp.write_bytes(b"a live writer's file")
    dead_tmp.write_bytes(b"a dead writer's file")
    threading.Timer(0.5, lambda: (proc.stdin.write("go\n"), proc.stdin.flush())).start()
    with CacheWriter(cache, backbone=IDENT, lock_timeout=120):  # waits for the holder to release
        assert live_tmp.exists() and not dead_tmp.exists()
    assert proc.stdout.readline().strip() == "released"


@pytest.mark.slow
def test_two_extract_processes_on_one_cache_keep_both_runs(tmp_path):
    cache = tmp_path / "cache"
    sources = {p: _folder(tmp_path / p, p, n=6) for p in ("a", "b")}
    procs = [subprocess.Popen([sys.executable, "-m", "clipdetect", "extract", str(src), "--out", str(cache),
                               "--backbone", TINY, "--workers", "1", "--shard-size", "4", "--batch-size", "2",
                               "--no-progress"] + (["--lock-timeout", "600"] if p == "b" else []),
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p, src in sources.items()]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for rc, err in results:  # b waits for a; a may find b holding the lock and refuse, naming it
        assert rc == 0 or ("is being written by another process" in err and "pid" in err and rc == 2), err
    assert results[1][0] == 0
    if results[0][0] != 0:  # a refused: run it again now that b is done
        subprocess.run([sys.executable, "-m", "clipdetect", "extract", str(sources["a"]), "--out", str(cache),
                        "--backbone", TINY, "--workers", "0", "--shard-size", "4", "--batch-size", "2",
                        "--no-progress"], cwd=ROOT, env=_env(), check=True, capture_output=True)
    keys = set(FeatureCache(cache).meta["key"])
    want = {f"{label}/{p}{i}.png" for p in "ab" for label in ("real", "fake") for i in range(6)}
    assert keys == want
    manifest = json.loads((cache / "manifest.json").read_text())
    assert len(manifest["runs"]) == 2 and all(r["complete"] for r in manifest["runs"].values())
    names = [s["name"] for s in manifest["shards"]]
    assert len(names) == len(set(names)) == 6
    assert subprocess.run([sys.executable, "-m", "clipdetect", "cache", "verify", str(cache)], cwd=ROOT,
                          env=_env(), capture_output=True).returncode == 0
    assert not list(cache.rglob(".*.tmp-*"))
    assert pd.Series(sorted(keys)).is_unique
