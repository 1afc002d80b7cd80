"""Helpers of the service tests: a tiny detector and a real uvicorn server on a loopback port."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from helpers.images import make_image

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load_experiment(name: str):
    """An ``experiments/NAME.py`` script as a module (it holds the hostile payloads)."""
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def png(seed: int, size=(48, 40), fake: bool = False) -> bytes:
    buf = io.BytesIO()
    make_image(seed, size=size, fake=fake).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def running_server(detector, backbone, config, **kw):
    """``http://127.0.0.1:PORT`` of a uvicorn server (a real socket) running in a thread."""
    from clipdetect.serve.server import build_server

    server = build_server(detector, backbone, config, **kw)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(30)


def get(url: str):
    """(status, headers, body bytes) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str):
    status, headers, body = get(url)
    return status, json.loads(body)
