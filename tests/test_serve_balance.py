"""clipdetect.serve.balance: worker processes keep their keep-alive connections evenly split."""
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.serve import get, png
from clipdetect.serve.balance import ConnectionShare, ShedExcess

ROOT = Path(__file__).resolve().parents[1]


def test_a_worker_over_its_fair_share_sheds_the_excess_and_no_more(tmp_path):
    a = ConnectionShare(tmp_path, name="a", refresh=0)
    b = ConnectionShare(tmp_path, name="b", refresh=0)
    for _ in range(6):
        a.opened()
    for _ in range(2):
        b.opened()
    assert a.counts() == {"a": 6, "b": 2} and b.counts() == {"a": 6, "b": 2}  # read from each other's file
    assert [a.should_shed() for _ in range(4)] == [True, True, False, False]  # fair share ceil(8 / 2) = 4
    assert not b.should_shed()
    a.closed()
    a.closed()  # the two shed connections closed; their clients come back, one to each worker
    a.opened()
    b.opened()
    assert a.counts() == {"a": 5, "b": 3}
    assert a.should_shed() and not a.should_shed()  # 5 > ceil(8 / 2): one more
    b.close()
    assert not (tmp_path / "b").exists()
    assert a.counts() == {"a": 5}  # a lone worker is never over its share
    assert not a.should_shed()


def test_the_file_of_a_dead_worker_is_ignored_and_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / str(dead.pid)).write_bytes((100).to_bytes(4, "little"))
    a = ConnectionShare(tmp_path, name="a", refresh=0)
    a.opened()
    assert a.counts() == {"a": 1}
    assert not (tmp_path / str(dead.pid)).exists()
    assert not a.should_shed()


def test_shed_excess_adds_connection_close_only_while_over_the_share(tmp_path):
    share = ConnectionShare(tmp_path, name="a", refresh=0)
    other = ConnectionShare(tmp_path, name="b", refresh=0)
    for _ in range(3):
        share.opened()
    other.opened()  # 3 against 1: fair share 2, one to shed

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def one_request():
        sent = []

        async def send(message):
            sent.append(message)
        await ShedExcess(app, share)({"type": "http"}, None, send)
        return sent

    first, second = asyncio.run(one_request()), asyncio.run(one_request())
    assert (b"connection", b"close") in first[0]["headers"] and first[1]["body"] == b"ok"
    assert (b"connection", b"close") not in second[0]["headers"]  # the excess is already being shed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post_rounds(port: int, data: bytes, rounds: int, hold: list) -> None:
    """``rounds`` keep-alive requests; reconnects when an answer says Connection: close."""
    sock = None
    for _ in range(rounds):
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(data), data))
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
        head, _, body = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        while len(body) < int(headers[b"content-length"]):
            body += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), raw[:300]
        if headers.get(b"connection", b"").lower() == b"close":
            sock.close()
            sock = None
    hold.append(sock)


@pytest.mark.slow  # a real two-worker server
def test_two_workers_end_up_with_even_shares_of_sixteen_keep_alive_clients(tiny_detector_dir):
    import psutil

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clipdetect", "serve", str(tiny_detector_dir), "--port", str(port),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 90
        while _status(port) != 200:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        health = json.loads(get(f"http://127.0.0.1:{port}/healthz")[2])
        assert health["status"] == "ok" and health["workers_ready"] == 2  # 503 "starting" until both loaded
        data, splits = png(5), []
        for _ in range(3):
            hold: list = []
            threads = [threading.Thread(target=_post_rounds, args=(port, data, 6, hold)) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            per_worker = []
            for child in psutil.Process(proc.pid).children():
                conns = getattr(child, "net_connections", child.connections)(kind="tcp")
                per_worker.append(sum(c.status == "ESTABLISHED" and c.laddr.port == port for c in conns))
            splits.append(sorted(per_worker, reverse=True))
            for s in hold:
                if s is not None:
                    s.close()
            time.sleep(0.3)
        fair = math.ceil(16 / 2)
        assert all(split[0] <= fair + 1 for split in splits), splits  # before: 10/6, 11/5, 16/0 ...
    finally:
        proc.terminate()
        proc.wait(30)



def _status(port):
    try:
        return get(f"http://127.0.0.1:{port}/healthz")[0]
    except OSError:
        return None


def test_a_lost_folder_or_file_neither_breaks_requests_nor_leaks_descriptors(tmp_path):
    folder = tmp_path / "share"
    folder.mkdir()
    a = ConnectionShare(folder, name="a", refresh=0)
    b = ConnectionShare(folder, name="b", refresh=0)
    a.opened()
    assert b.counts() == {"a": 1, "b": 0} and "a" in b._fds
    a.close()  # a stopped and removed its file: b forgets its descriptor
    assert b.counts() == {"b": 0} and b._fds == {}
    (folder / "b").unlink()  # b's own file removed (a cleaner of temporary files): published again
    b.opened()
    assert b.counts() == {"b": 1} and (folder / "b").read_bytes() == (1).to_bytes(4, "little")
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()  # the whole folder gone: this worker alone, no error on any request
    assert b.counts() == {"b": 1} and not b.should_shed()
    b.close()


def test_healthz_says_starting_until_every_worker_has_loaded_then_stays_up():
    from types import SimpleNamespace

    from clipdetect.serve.app import healthz

    ready = [1]
    service = SimpleNamespace(batcher=SimpleNamespace(thread=threading.main_thread(), depth=0), inflight=0,
                              config=SimpleNamespace(workers=2))
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(service=service,
                                                                        workers_ready=lambda: ready[0])))

    def status():
        response = asyncio.run(healthz(request))
        return response.status_code, json.loads(response.body)["status"], response.headers.get("retry-after")

    assert status() == (503, "starting", "1")
    ready[0] = 2
    assert status() == (200, "ok", None)
    ready[0] = 1  # a worker restarting, or one fewer after SIGTTOU: the service is up all the same
    assert status() == (200, "ok", None)
