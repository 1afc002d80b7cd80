"""Hostile input files: FIFOs, links to /dev/zero, huge sparse files, slow reads, folders named
like images, odd objects given to the API, and a manifest of nothing but missing paths. Each
becomes a recorded skip (the error ledger, predict's ``error`` column) or one clear error, in
bounded memory and time — checked on real processes under a deadline."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from helpers.hostile import deadline_fixture
from helpers.procs import run_cli
from clipdetect.cli.main import main
from clipdetect.core.inputs import InputError, check_regular, read_input
from clipdetect.data.imaging import BadImage, decode_image
from clipdetect.models.detector import Detector
from helpers.images import TINY, make_image, write_image_folder

_deadline = deadline_fixture(300)


@pytest.fixture(scope="module")
def det_dir(tiny_detector_dir):
    """A detector on the tiny backbone's features (trained on random arrays: scores only need to exist)."""
    return tiny_detector_dir


@pytest.fixture
def hostile_folder(tmp_path):
    """real/ and fake/ with two good images each, plus a FIFO, a link to /dev/zero, a 2 GiB
    sparse file and a folder, all named like images."""
    root = tmp_path / "imgs"
    write_image_folder(root, n=2, fake_offset=10, size=(32, 32), name="{i}")
    os.mkfifo(root / "real" / "x.jpg")
    (root / "real" / "zero.jpg").symlink_to("/dev/zero")
    with open(root / "fake" / "huge.png", "wb") as f:
        f.truncate(2 * 2**30)
    (root / "fake" / "dir.png").mkdir()
    return root


EXPECTED = {"real/x.jpg": "unreadable", "real/zero.jpg": "unreadable", "fake/huge.png": "too_large"}


def test_read_input_refuses_special_big_and_slow_files(hostile_folder, tmp_path):
    with pytest.raises(InputError, match="FIFO"):
        read_input(hostile_folder / "real" / "x.jpg")
    with pytest.raises(InputError, match="character device"):
        read_input(hostile_folder / "real" / "zero.jpg")
    with pytest.raises(InputError, match="directory"):
        check_regular(hostile_folder / "fake" / "dir.png")
    with pytest.raises(InputError) as exc:
        read_input(hostile_folder / "fake" / "huge.png")
    assert exc.value.reason == "too_large"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 * 2**20))
    assert len(read_input(big, max_bytes=2**24)) == 8 * 2**20
    with pytest.raises(InputError) as exc:  # read chunk by chunk against a deadline
        read_input(big, timeout=1e-9)
    assert exc.value.reason == "read_timeout"
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(BadImage) as bad:
        decode_image(loop)
    assert bad.value.reason == "unreadable" and "loop" in bad.value.detail


@pytest.mark.parametrize("workers", [0, 1])
def test_extract_records_hostile_files_in_the_ledger(hostile_folder, tmp_path, workers, tiny_backbone):
    """In this process (workers=0) and in a decode process (workers=1): a hang would be
    interrupted by the test's deadline."""
    from clipdetect.data.sources import ImageFolderSource
    from clipdetect.features.cache import FeatureCache
    from clipdetect.features.runner import ExtractConfig
    from clipdetect.features.extract import extract

    extract(ImageFolderSource(hostile_folder), ExtractConfig(backbone=TINY, out=str(tmp_path / "cache"),
                                                             workers=workers), backbone=tiny_backbone,
            progress=False)
    cache = FeatureCache(tmp_path / "cache")
    reasons = dict(zip(cache.errors()["key"], cache.errors()["reason"]))
    assert {k: reasons.get(k) for k in EXPECTED} == EXPECTED  # (a folder named dir.png is a folder: walked)
    assert len(cache) == 4


@pytest.mark.slow
def test_predict_gives_hostile_files_an_error_row(hostile_folder, det_dir, tmp_path):
    out = tmp_path / "p.csv"
    r = run_cli(["predict", det_dir, hostile_folder, "--out", out, "--workers", "1", "--no-progress"], timeout=280,
                memory_gb=4)
    assert r.rc == 0, r.err
    assert r.peak_rss_mb < 1500 and not r.leftover
    df = pd.read_csv(out).set_index("key")
    assert {k: df.loc[k, "error"].split(":")[0] for k in EXPECTED} == EXPECTED
    assert df["logit"].notna().sum() == 4


def test_max_bytes_and_read_timeout_options(det_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    make_image(1, size=(64, 64)).save(folder / "a.png")
    size = (folder / "a.png").stat().st_size
    out = tmp_path / "p.csv"
    assert main(["predict", str(det_dir), str(folder), "--out", str(out), "--workers", "0", "--no-progress",
                 "--max-bytes", str(size - 1)]) == 0  # refused by a limit the user set: a recorded skip
    assert pd.read_csv(out)["error"].str.startswith("too_large").all()
    assert main(["predict", str(det_dir), str(folder), "--out", str(out), "--workers", "0", "--no-progress",
                 "--max-bytes", "1K", "--read-timeout", "5", "--force"]) == 0
    (tmp_path / "zero" / "real").mkdir(parents=True)  # nothing readable at all: exit 1, the file still written
    (tmp_path / "zero" / "real" / "b.png").symlink_to("/dev/zero")
    assert main(["predict", str(det_dir), str(tmp_path / "zero"), "--out", str(out), "--workers", "0",
                 "--no-progress", "--force"]) == 1
    assert "not one of the 1 images could be read (unreadable: 1)" in capsys.readouterr().err
    assert pd.read_csv(out)["error"].str.startswith("unreadable").all()
    with pytest.raises(SystemExit):
        main(["predict", str(det_dir), str(folder), "--out", str(out), "--max-bytes", "lots"])
    assert "is not a size" in capsys.readouterr().err



def test_a_manifest_of_missing_paths_exits_1_in_one_line(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("path,label\n" + "".join(f"/nonexistent/{i}.png,{i % 2}\n" for i in range(3000)))
    assert main(["extract", str(m), "--out", str(tmp_path / "cache"), "--backbone", TINY, "--workers", "0",
                 "--no-progress"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert len(err) == 1 and "not one of the 3000 images could be read (missing: 3000)" in err[0]


def test_score_images_takes_one_bytes_like_image_and_refuses_odd_items(det_dir):
    import io

    det = Detector.load(det_dir)
    buf = io.BytesIO()
    make_image(3, size=(32, 32)).save(buf, "PNG")
    data = buf.getvalue()
    for one in (memoryview(data), bytearray(data), data):
        scores = det.score_images(one)
        assert len(scores) == 1 and scores["error"].isna().all()
    with pytest.raises(TypeError, match="image 0 is a int"):
        det.score_images(list(data[:3]))
    assert len(det.score_images([memoryview(data), data])) == 2


def test_json_inputs_that_are_special_files_are_refused_without_hanging(det_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "det"
    shutil.copytree(det_dir, d)
    (d / "detector.json").unlink()
    os.mkfifo(d / "detector.json")
    assert main(["predict", str(d), str(tmp_path), "--out", str(tmp_path / "p.csv")]) == 2
    assert "FIFO" in capsys.readouterr().err
    c = tmp_path / "cache"
    c.mkdir()
    (c / "manifest.json").symlink_to("/dev/zero")
    assert main(["cache", "info", str(c)]) == 2
    assert "character device" in capsys.readouterr().err


def test_large_in_memory_bytes_are_capped(tmp_path):
    with pytest.raises(BadImage) as exc:
        decode_image(memoryview(b"\0" * 2048), max_bytes=1024)
    assert exc.value.reason == "too_large"


def test_default_cap_is_documented():
    from clipdetect.core.inputs import MAX_IMAGE_BYTES, READ_TIMEOUT

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert MAX_IMAGE_BYTES == 256 * 2**20 and "256 MiB" in readme and "--max-bytes" in readme
    assert f"{READ_TIMEOUT:g} s" in readme and "--read-timeout" in readme
