"""A D3-shaped parquet built by the tests, and a loopback HTTP server for its real images.

The parquet has the columns and types of ``elsaEU/ELSA_D3``, generators in its order (IF,
SD-1.4, SD-2.1, SD-XL). Image columns are Hugging Face ``Image`` structs holding the bytes
at the D3 sizes, in the five formats D3's fakes come in (PNG, JPEG, BMP, GIF, TIFF; the
extension is in ``filepath_gen*``); some fakes are missing (``None`` or empty bytes, see
``MISSING``). :func:`make_d3_folder` lays files out as the hub's ``data/`` folder
(``train-*``, ``val-*``, ``validation-*``). Real-image URLs point at a
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

MODELS = ["DeepFloyd/IF-II-L-v1.0", "CompVis/stable-diffusion-v1-4", "stabilityai/stable-diffusion-2-1-base",
          "stabilityai/stable-diffusion-xl-base-1.0"]
#: per generator column: (width, height) alternatives, D3's sizes
SIZES = [[(256, 256)], [(512, 512)], [(512, 512), (256, 256)], [(640, 480), (640, 360)]]
#: fake formats; row i, column g is FORMATS[(i + g) % 5], so every column has all five
FORMATS = [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tiff")]
#: (row, column) → how the fake is missing: None (a null image) or b"" (empty bytes)
MISSING = {(4, 2): None, (5, 0): b""}
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


def fake_format(i: int, g: int):
    """(PIL format, file extension) of row ``i``'s fake in column ``g``."""
    return FORMATS[(i + g) % len(FORMATS)]


def make_d3_parquet(path: Path, base_url: str, rows: int = 6, first: int = 0) -> Path:
    """Write a D3-schema parquet with ``rows`` rows (row indices ``first``..); returns its path."""
    import datasets

    feats = {"id": datasets.Value("string"), "original_prompt": datasets.Value("string"),
             "positive_prompt": datasets.Value("string"), "negative_prompt": datasets.Value("string"),
             "url": datasets.Value("string")}
    for kind, ftype in (("model", datasets.Value("string")), ("width", datasets.Value("int64")),
                        ("height", datasets.Value("int64")), ("num_inference_steps", datasets.Value("int64")),
                        ("filepath", datasets.Value("string")), ("image", datasets.Image())):
        feats.update({f"{kind}_gen{g}": ftype for g in range(4)})
    data: Dict[str, List] = {k: [] for k in feats}
    for i in range(first, first + rows):
        rid = row_id(i)
        data["id"].append(rid)
        data["original_prompt"].append(f"a photo of object number {i}")
        data["positive_prompt"].append(f"a photo of object number {i}, highly detailed, 8k, trending")
        data["negative_prompt"].append("blurry, low quality")
        data["url"].append(real_url(base_url, i))
        for g in range(4):
            w, h = SIZES[g][i % len(SIZES[g])]
            fmt, ext = fake_format(i, g)
            data[f"model_gen{g}"].append(MODELS[g])
            data[f"width_gen{g}"].append(w)
            data[f"height_gen{g}"].append(h)
            data[f"num_inference_steps_gen{g}"].append([100, 50, 50, 40][g])
            data[f"filepath_gen{g}"].append(f"gen{g}/{rid}.{ext}")
            if (i, g) in MISSING:
                missing = MISSING[i, g]
                data[f"image_gen{g}"].append(None if missing is None else {"bytes": missing, "path": None})
            else:
                data[f"image_gen{g}"].append({"bytes": image_bytes(10 * i + g, (w, h), fmt), "path": None})
    ds = datasets.Dataset.from_dict(data, features=datasets.Features(feats))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


#: the hub's data/ files: (name, rows); ``train`` = train-* + val-*, ``validation`` = validation-*
HUB_FILES = [("train-00000-of-00002.parquet", 4), ("train-00001-of-00002.parquet", 2),
             ("val-00000-of-00001.parquet", 2), ("validation-00000-of-00001.parquet", 3)]


def make_d3_folder(root: Path, base_url: str) -> Dict[str, List[str]]:
    """Write ``HUB_FILES`` under ``root/data`` with consecutive row ids; returns the row ids per hub split."""
    ids: Dict[str, List[str]] = {"train": [], "validation": []}
    first = 0
    for name, rows in HUB_FILES:
        make_d3_parquet(Path(root) / "data" / name, base_url, rows=rows, first=first)
        ids["validation" if name.startswith("validation-") else "train"] += [row_id(i) for i in
                                                                             range(first, first + rows)]
        first += rows
    return ids


def write_reals_dir(folder: Path, rows: List[int]) -> Path:
    """Pre-downloaded reals named by row id (mixed extensions) for the given rows."""
    folder = Path(folder)
    for n, i in enumerate(rows):
        sub = folder / ("a" if n % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        ext, fmt = ((".jpg", "JPEG"), (".png", "PNG"))[n % 2]
        (sub / f"{row_id(i)}{ext}").write_bytes(image_bytes(1000 + i, (320, 240), fmt))
    return folder
