"""A D3-shaped parquet built by the tests, and a loopback HTTP server for its real images.

The parquet has the columns and types of ``elsaEU/ELSA_D3`` (image columns are Hugging
Face ``Image`` structs holding PNG/JPEG bytes at the D3 sizes). Real-image URLs point at a
``http.server`` bound to 127.0.0.1 whose routes misbehave on purpose:

* ``/ok/<id>``     an image;            ``/dead/<id>``  404;
* ``/slow/<id>``   answers after ``SLOW_SECONDS`` (beyond the tests' read timeout);
* ``/html/<id>``   200 with an HTML page; ``/flaky/<id>`` 500 once, then the image.
"""
from __future__ import annotations

import collections
import contextlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

MODELS = ["CompVis/stable-diffusion-v1-4", "stabilityai/stable-diffusion-2-1",
          "stabilityai/stable-diffusion-xl-base-1.0", "DeepFloyd/IF-I-M-v1.0"]
#: per generator column: (width, height) alternatives, D3's sizes
SIZES = [[(512, 512)], [(512, 512), (256, 256)], [(640, 480), (640, 360)], [(256, 256)]]
#: route of each row's real image, in row order
ROUTES = ["ok", "ok", "dead", "slow", "html", "flaky"]
SLOW_SECONDS = 2.5


def image_bytes(seed: int, size=(64, 48), fmt: str = "PNG") -> bytes:
    """A solid colour with a noisy patch: distinct per seed, small once encoded."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    arr[: h // 4, : w // 4] = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def real_bytes(i: int) -> bytes:
    return image_bytes(1000 + i, size=(320, 240), fmt="JPEG")


def row_id(i: int) -> str:
    return f"{i:08d}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        srv = self.server
        with srv.lock:
            srv.hits[self.path] += 1
            n = srv.hits[self.path]
        route, _, name = self.path.strip("/").partition("/")
        idx = int(name.split(".")[0]) if name.split(".")[0].isdigit() else -1
        try:
            if route == "dead" or idx < 0:
                return self._send(404, b"not here", "text/plain")
            if route == "slow":
                time.sleep(SLOW_SECONDS)
                return self._send(200, real_bytes(idx), "image/jpeg")
            if route == "html":
                return self._send(200, b"<html><body>This image is no longer available</body></html>",
                                  "text/html; charset=utf-8")
            if route == "flaky" and n == 1:
                return self._send(500, b"try again", "text/plain")
            return self._send(200, real_bytes(idx), "image/jpeg")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def _send(self, status: int, body: bytes, ctype: str):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_reals():
    """A loopback server; yields it (``.base_url``, ``.hits`` Counter of request paths)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.hits, srv.lock = collections.Counter(), threading.Lock()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def real_url(base_url: str, i: int) -> str:
    return f"{base_url}/{ROUTES[i % len(ROUTES)]}/{row_id(i)}.jpg"


def make_d3_parquet(path: Path, base_url: str, rows: int = 6) -> Path:
    """Write a D3-schema parquet with ``rows`` rows; returns its path."""
    import datasets

    feats = {"id": datasets.Value("string"), "original_prompt": datasets.Value("string"),
             "positive_prompt": datasets.Value("string"), "negative_prompt": datasets.Value("string"),
             "url": datasets.Value("string")}
    for kind, ftype in (("model", datasets.Value("string")), ("width", datasets.Value("int64")),
                        ("height", datasets.Value("int64")), ("num_inference_steps", datasets.Value("int64")),
                        ("filepath", datasets.Value("string")), ("image", datasets.Image())):
        feats.update({f"{kind}_gen{g}": ftype for g in range(4)})
    data: Dict[str, List] = {k: [] for k in feats}
    for i in range(rows):
        rid = row_id(i)
        data["id"].append(rid)
        data["original_prompt"].append(f"a photo of object number {i}")
        data["positive_prompt"].append(f"a photo of object number {i}, highly detailed, 8k, trending")
        data["negative_prompt"].append("blurry, low quality")
        data["url"].append(real_url(base_url, i))
        for g in range(4):
            w, h = SIZES[g][i % len(SIZES[g])]
            data[f"model_gen{g}"].append(MODELS[g])
            data[f"width_gen{g}"].append(w)
            data[f"height_gen{g}"].append(h)
            data[f"num_inference_steps_gen{g}"].append([50, 50, 40, 100][g])
            data[f"filepath_gen{g}"].append(f"gen{g}/{rid}.png")
            fmt = "JPEG" if g == 3 else "PNG"
            data[f"image_gen{g}"].append({"bytes": image_bytes(10 * i + g, (w, h), fmt), "path": None})
    ds = datasets.Dataset.from_dict(data, features=datasets.Features(feats))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


def write_reals_dir(folder: Path, rows: List[int]) -> Path:
    """Pre-downloaded reals named by row id (mixed extensions) for the given rows."""
    folder = Path(folder)
    for n, i in enumerate(rows):
        sub = folder / ("a" if n % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        ext, fmt = ((".jpg", "JPEG"), (".png", "PNG"))[n % 2]
        (sub / f"{row_id(i)}{ext}").write_bytes(image_bytes(1000 + i, (320, 240), fmt))
    return folder
