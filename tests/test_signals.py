"""SIGTERM and SIGHUP take Ctrl-C's clean-up path: real processes, real signals, sent to the
command alone (``docker stop``, ``kill``) or to its whole process group (a scheduler, a closed
terminal). Exit 143 / 129 with one line, no temporary file or folder left, decode workers
stopped, an extraction that resumes; and decode workers whose parent is SIGKILLed do not
linger as orphans."""
from __future__ import annotations

import os
import signal
import time

import pytest

from helpers.hostile import deadline_fixture
from helpers.images import TINY
from helpers.procs import run_cli, session_members, shard_count, start_cli, temporaries, training_logged, wait_until
from helpers.synthetic import write_synthetic_cache
from clipdetect.cli.main import main

_deadline = deadline_fixture(400)
EXTRACT = ["--backbone", TINY, "--shard-size", "8", "--batch-size", "4", "--no-progress"]


@pytest.fixture
def folder(images_60):
    return images_60


def _stopped_cleanly(r, status: int, name: str) -> None:
    assert r.rc == status, r.err
    assert "Traceback" not in r.err
    assert r.errors == [f"ERROR clipdetect: terminated by {name}; re-run the same command to resume"], r.err
    assert not r.leftover, f"processes left running: {r.leftover}"


@pytest.mark.slow  # a real process, stopped part-way
def test_sigterm_during_extraction_with_workers_then_resume(folder, tmp_path):
    cache = tmp_path / "cache"
    r = run_cli(["extract", folder, "--out", cache, "--workers", "2", *EXTRACT],
                ready=lambda: shard_count(cache) >= 1, send=signal.SIGTERM)
    _stopped_cleanly(r, 143, "SIGTERM")
    assert not temporaries(cache) and 1 <= shard_count(cache) < 15
    assert main(["extract", str(folder), "--out", str(cache), "--workers", "0", *EXTRACT]) == 0
    assert shard_count(cache) == 15 and main(["cache", "verify", str(cache)]) == 0


@pytest.mark.slow  # a real process, stopped part-way
def test_sigterm_to_the_process_group_during_prediction(folder, tmp_path, tiny_detector_dir):
    det = tiny_detector_dir
    out = tmp_path / "preds.csv"
    r = run_cli(["predict", det, folder, "--out", out, "--workers", "2", "--batch-size", "2", "--no-progress"],
                ready=lambda: any(p.name.startswith(".preds.csv.tmp-") for p in tmp_path.iterdir()),
                send=signal.SIGTERM, group=True)
    _stopped_cleanly(r, 143, "SIGTERM")
    assert not out.exists() and not temporaries(tmp_path)


@pytest.mark.slow  # a real process, stopped part-way
def test_sighup_during_training_leaves_no_output_folder(tmp_path):
    write_synthetic_cache(tmp_path / "cache", n=3000, dim=16)
    r = run_cli(["train", tmp_path / "cache", "--out", tmp_path / "det", "--epochs", "500", "--patience", "0",
                 "--batch-size", "16", "--no-progress"], ready=training_logged(tmp_path), send=signal.SIGHUP)
    _stopped_cleanly(r, 129, "SIGHUP")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


@pytest.mark.slow  # a real process, stopped part-way
def test_workers_of_a_killed_parent_exit_by_themselves(folder, tmp_path):
    """SIGKILL cannot be caught: the parent cleans nothing, but its decode workers notice and
    exit within seconds instead of living on (as they did, ~400 MB each)."""
    cache = tmp_path / "cache"
    proc = start_cli(["extract", folder, "--out", cache, "--workers", "2", *EXTRACT])
    try:
        wait_until(proc, lambda: shard_count(cache) >= 1)
        assert len(session_members(proc.pid)) == 3  # the command and its two decode workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        while session_members(proc.pid) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert session_members(proc.pid) == [], "decode workers outlived their killed parent"
    finally:
        for p in session_members(proc.pid):
            os.kill(p, signal.SIGKILL)


def test_handlers_are_restored_after_an_in_process_command(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert main(["cache", "info", str(tmp_path)]) == 2
    assert {s: signal.getsignal(s) for s in before} == before
