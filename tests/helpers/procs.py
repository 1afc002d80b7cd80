"""Real ``python -m clipdetect`` processes: start one in its own session, wait for progress on
disk, signal or kill it, and see what it left behind (temporary files, processes)."""
from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]  # children import this checkout's package


def cli_env(**extra) -> dict:
    """The environment of a child that imports this checkout's package."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


@dataclass
class Run:
    rc: int
    err: str
    seconds: float
    peak_rss_mb: float
    leftover: list  # pids still alive in the command's session after it exited

    @property
    def errors(self):
        return [line for line in self.err.splitlines() if line.startswith("ERROR")]


def session_members(sid: int) -> list:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def run_cli(args, *, cwd: Optional[Path] = None, timeout: float = 280, ready: Optional[Callable[[], bool]] = None,
            send: Optional[int] = None, group: bool = False, memory_gb: Optional[float] = None) -> Run:
    """``python -m clipdetect ARGS`` in its own session. When ``ready()`` turns true, signal
    ``send`` goes to the command alone (as ``docker stop`` sends it) or to its whole process
    group (``group``, as a terminal or a scheduler does). A run past ``timeout`` is killed
    and fails the test. Peak RSS comes from ``wait4``; ``leftover`` lists processes of the
    session still alive a moment after the command exited (orphaned workers)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    limit = None if memory_gb is None else int(memory_gb * 2**30)

    def setup():
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    err_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"clipdetect-test-{os.getpid()}-{time.monotonic_ns()}.err"
    t0 = time.monotonic()
    with open(err_file, "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "clipdetect", *map(str, args)], cwd=cwd or ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, preexec_fn=setup)
        sent = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if ready is not None and not sent and ready():
                (os.killpg if group else os.kill)(proc.pid, send)
                sent = True
            if time.monotonic() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                err.seek(0)
                pytest.fail(f"clipdetect {' '.join(map(str, args))} hung (> {timeout} s): {err.read()[-2000:]}")
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read()
    err_file.unlink()
    seconds = time.monotonic() - t0
    if ready is not None and not sent:
        pytest.fail(f"finished before the signal could be sent: {text[-2000:]}")
    time.sleep(0.3)
    leftover = session_members(proc.pid)
    for p in leftover:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return Run(proc.returncode, text, seconds, usage.ru_maxrss / 1024, leftover)



def start_cli(args, **popen) -> subprocess.Popen:
    """``python -m clipdetect ARGS`` in its own session (its pid is its process group's), output
    discarded unless ``popen`` says otherwise."""
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": cli_env(), **popen}
    return subprocess.Popen([sys.executable, "-m", "clipdetect", *map(str, args)], cwd=ROOT,
                            start_new_session=True, **popen)


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> None:
    """Poll ``ready()`` (progress on disk, not wall time) while ``proc`` runs; fail the test when it
    finished first or nothing happened within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "finished before it could be stopped"
        assert time.monotonic() < deadline, "no progress to stop"
        time.sleep(0.02)


def shard_count(cache: Path) -> int:
    """Shards the manifest of ``cache`` lists (0 while there is none)."""
    try:
        return len(json.loads((cache / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def training_logged(folder: Path) -> Callable[[], bool]:
    """Whether a ``train --out folder/det`` run has logged an epoch in its temporary output folder."""
    def logged():
        return any(p.name.startswith(".det.tmp-") and (p / "train_log.jsonl").exists()
                   and (p / "train_log.jsonl").stat().st_size > 0 for p in folder.iterdir())
    return logged


def temporaries(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name)
