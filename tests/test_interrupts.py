"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during extraction with
decode workers, prediction and training: exit 130 with one line and no traceback, nothing
partial left behind, and an interrupted extraction resumes to the uninterrupted cache."""
from __future__ import annotations

import json
import os
import signal

import pytest

from clipdetect.cli.main import main
from helpers.images import TINY
from helpers.procs import run_cli, shard_count, start_cli, training_logged, wait_until
from helpers.synthetic import write_synthetic_cache

pytestmark = pytest.mark.slow

EXTRACT = ["--backbone", TINY, "--shard-size", "8", "--batch-size", "4", "--no-progress"]


def _interrupt(args, ready, timeout=300):
    """``clipdetect ARGS`` in its own process group; when ``ready()`` (progress on disk, not wall
    time), SIGINT goes to the whole group as a terminal sends it. Returns (exit code, stderr)."""
    wait = float(os.environ.get("CLIPDETECT_TEST_INTERRUPT_TIMEOUT", 120))
    r = run_cli(args, ready=ready, send=signal.SIGINT, group=True, timeout=timeout + wait)
    return r.rc, r.err


def _check_clean_exit(rc, err):
    assert rc == 130, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "ERROR" in line] == [
        "ERROR clipdetect: interrupted; re-run the same command to resume"]


@pytest.fixture
def folder(images_60):
    return images_60


def test_ctrl_c_during_extraction_with_workers_then_resume_identically(folder, tmp_path):
    cache = tmp_path / "cut"
    rc, err = _interrupt(["extract", str(folder), "--out", str(cache), "--workers", "2", *EXTRACT],
                         lambda: shard_count(cache) >= 1)
    _check_clean_exit(rc, err)
    assert not list(cache.rglob(".*.tmp-*"))
    done = shard_count(cache)
    assert 1 <= done < 15  # stopped part-way
    assert main(["extract", str(folder), "--out", str(cache), "--workers", "2", *EXTRACT]) == 0
    assert main(["extract", str(folder), "--out", str(tmp_path / "whole"), "--workers", "0", *EXTRACT]) == 0
    files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("part-*"))
    assert len(files) == 15 * 3  # img_emb, meta, errors
    for rel in files:
        assert (cache / rel).read_bytes() == (tmp_path / "whole" / rel).read_bytes(), rel


def test_ctrl_c_during_predict_leaves_no_partial_file(folder, tmp_path):
    cache = tmp_path / "cache"
    assert main(["extract", str(folder), "--out", str(cache), "--workers", "0", *EXTRACT]) == 0
    det = tmp_path / "det"
    assert main(["train", str(cache), "--out", str(det), "--epochs", "1", "--head", "linear", "--no-sam",
                 "--batch-size", "8", "--no-progress"]) == 0
    out = tmp_path / "preds.csv"
    rc, err = _interrupt(["predict", str(det), str(folder), "--out", str(out), "--workers", "2",
                          "--batch-size", "2", "--no-progress"],
                         lambda: any(p.name.startswith(".preds.csv.tmp-") for p in tmp_path.iterdir()))
    _check_clean_exit(rc, err)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".preds")]
    assert main(["predict", str(det), str(folder), "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    assert len(out.read_text().splitlines()) == 121


def test_ctrl_c_during_training_leaves_no_output_folder(tmp_path):
    write_synthetic_cache(tmp_path / "cache", n=3000, dim=16)
    rc, err = _interrupt(["train", str(tmp_path / "cache"), "--out", str(tmp_path / "det"), "--epochs", "500",
                          "--patience", "0", "--batch-size", "16", "--no-progress"], training_logged(tmp_path))
    _check_clean_exit(rc, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_killed_training_resumes_to_the_uninterrupted_detector(tmp_path):
    import numpy as np

    from clipdetect.core.tensorfile import read_safetensors

    write_synthetic_cache(tmp_path / "cache", n=3000, dim=16)
    det, ckpt = tmp_path / "det", tmp_path / ".det.checkpoints"
    train = ["train", str(tmp_path / "cache"), "--epochs", "6", "--patience", "0", "--batch-size", "16",
             "--width", "16", "--no-progress"]
    proc = start_cli([*train, "--out", det])
    try:
        wait_until(proc, (ckpt / "last.json").exists)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not det.exists() and json.loads((ckpt / "last.json").read_text())["epoch"] < 6
    assert main([*train, "--out", str(det)]) == 2  # an unfinished run is not overwritten silently
    assert main([*train, "--out", str(det), "--resume"]) == 0
    assert main([*train, "--out", str(tmp_path / "whole")]) == 0
    assert not ckpt.exists() and not (tmp_path / ".whole.checkpoints").exists()
    a, b = (read_safetensors(d / "model.safetensors") for d in (det, tmp_path / "whole"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    da, db = (json.loads((d / "detector.json").read_text()) for d in (det, tmp_path / "whole"))
    assert (da["threshold"], da["calibration"], da["metrics"]["best_epoch"]) == \
        (db["threshold"], db["calibration"], db["metrics"]["best_epoch"])
    logs = [(d / "train_log.jsonl").read_text().splitlines() for d in (det, tmp_path / "whole")]
    assert [json.loads(r)["train_loss"] for r in logs[0]] == [json.loads(r)["train_loss"] for r in logs[1]]
