"""A full disk during extraction: one line naming the file and the bytes (exit 1), no temporary
file left, a manifest listing only complete shards (untouched when nothing could be written),
and, once space is freed, a resume to the same cache as an uninterrupted run."""
from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

import clipdetect.core.io as cio
from clipdetect.cli.main import main
from helpers.images import TINY

ARGS = ["--backbone", TINY, "--workers", "0", "--shard-size", "4", "--batch-size", "2", "--no-progress"]


class Disk:
    """``open`` for clipdetect.core.io whose files share ``free`` bytes, then fail with ENOSPC
    after a short write, as a full file system does."""

    def __init__(self, free: int):
        self.free = free

    def __call__(self, path, mode="r", **kwargs):
        return _File(open(path, mode, **kwargs), self)


class _File:
    def __init__(self, f, disk: Disk):
        self.f, self.disk = f, disk

    def write(self, data):
        size = len(memoryview(data).cast("B"))
        if size > self.disk.free:
            self.f.write(bytes(memoryview(data).cast("B")[:self.disk.free]))
            self.disk.free = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.disk.free -= size
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def _parts(cache: Path):
    return {p.relative_to(cache): p.read_bytes() for p in cache.rglob("part-*")}


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def whole(image_folder, tmp_path):
    out = tmp_path / "whole"
    assert main(["extract", str(image_folder), "--out", str(out), *ARGS]) == 0
    return out


def test_full_disk_mid_run_then_resume_identically(image_folder, whole, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    capsys.readouterr()
    monkeypatch.setattr(cio, "open", Disk(free=9000), raising=False)
    assert main(["extract", str(image_folder), "--out", str(cache), *ARGS]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on the device writing" in line and str(cache) in line and "bytes" in line
    assert "re-run the same command" in line
    assert not list(cache.rglob(".*.tmp-*"))
    assert main(["cache", "verify", str(cache), "--quick"]) == 0  # only complete shards are listed
    written = _parts(cache)
    monkeypatch.undo()  # space freed
    assert main(["extract", str(image_folder), "--out", str(cache), *ARGS]) == 0
    assert _parts(cache) == _parts(whole) and set(written) < set(_parts(whole))


def test_full_disk_before_anything_leaves_the_manifest_untouched(image_folder, whole, tmp_path,
                                                                 monkeypatch, capsys):
    before = (whole / "manifest.json").read_bytes()
    other = tmp_path / "other"
    for label in ("real", "fake"):
        (other / label).mkdir(parents=True)
        for p in (image_folder / label).iterdir():
            (other / label / f"o{p.name}").write_bytes(p.read_bytes())
    capsys.readouterr()
    monkeypatch.setattr(cio, "open", Disk(free=0), raising=False)
    assert main(["extract", str(other), "--out", str(whole), *ARGS]) == 1
    assert "manifest.json" in _one_error_line(capsys.readouterr().err)
    assert (whole / "manifest.json").read_bytes() == before
    assert not list(whole.rglob(".*.tmp-*"))


def test_real_small_filesystem(image_folder, whole, tmp_path, capsys):
    """A 20 KiB tmpfs: five pages (needs permission to mount; skipped where it is not granted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        cache = mnt / "cache"
        capsys.readouterr()
        assert main(["extract", str(image_folder), "--out", str(cache), *ARGS]) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert "no space left on the device writing" in line and str(cache) in line
        assert not list(cache.rglob(".*.tmp-*"))
        assert main(["cache", "verify", str(cache), "--quick"]) == 0
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        assert main(["extract", str(image_folder), "--out", str(cache), *ARGS]) == 0
        assert _parts(cache) == _parts(whole)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
