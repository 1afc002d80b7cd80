"""Hostile uploads against a running ``clipdetect serve`` (loopback only), and what each must get back.

Each attack is sent over a raw socket (so bodies can be dripped, cut or declared larger
than sent) to ``http://127.0.0.1:PORT``; :func:`run_attacks` returns one record per attack:
the status, the JSON error code and limit, whether they match the expectation, and whether
``/healthz`` still answers afterwards. Used by ``serve_load.py`` and by the tests.

The payloads: decompression bombs (a real 1-bit PNG of zeros, and a header claiming
100000²), a truncated PNG, polyglots (JPEG magic + HTML, the GIF/JavaScript trick, and a
valid PNG with a ZIP appended — a valid image, so it is scored), a 1×100000 image, empty
bodies and file parts, wrong content types, thousands of multipart parts, bodies over the
size limit (declared and chunked), a malformed multipart body and a slow-drip body.
"""
from __future__ import annotations

import io
import json
import socket
import struct
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

BOUNDARY = "clipdetectboundary7d91"


# ------------------------------------------------------------------ payloads
def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def noise_png(size: Tuple[int, int] = (96, 80), seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(arr, "RGB"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int) -> bytes:
    """A valid 1-bit greyscale PNG of ``side``² black pixels: tiny on the wire, huge decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp, parts = zlib.compressobj(9), []
    block = row * 256
    for _ in range(side // 256):
        parts.append(comp.compress(block))
    parts.append(comp.compress(row * (side % 256)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` RGB with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        _chunk(b"IEND", b"")


def png_with_zip() -> bytes:
    """A valid PNG followed by a ZIP archive (opens as both)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.html", "<script>alert(1)</script>")
    return noise_png(seed=7) + buf.getvalue()


def multipart(parts: Sequence[Tuple[str, bytes]], boundary: str = BOUNDARY) -> bytes:
    out = []
    for name, data in parts:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


# ------------------------------------------------------------------ raw HTTP
def http(port: int, method: str, path: str, headers: Dict[str, str], body: bytes = b"", *,
         chunks: Optional[List[Tuple[bytes, float]]] = None, timeout: float = 30.0,
         host: str = "127.0.0.1") -> Tuple[int, Dict[str, str], bytes]:
    """One request on a fresh connection: ``body``, or ``chunks`` of (bytes, delay before) sent
    as they are (the caller frames them). Returns (status, headers, body); status 0 when the
    server closed without an answer."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(head.encode() + body)
            for data, delay in chunks or []:
                time.sleep(delay)
                s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read what it said
        raw = b""
        try:
            while True:
                got = s.recv(65536)
                if not got:
                    break
                raw += got
        except (ConnectionResetError, socket.timeout):
            pass
    if not raw:
        return 0, {}, b""
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), hdrs, payload


# ------------------------------------------------------------------ the attacks
@dataclass
class Attack:
    name: str
    send: Callable[[int], Tuple[int, Dict[str, str], bytes]]
    status: Tuple[int, ...]          # acceptable status codes
    code: Optional[str] = None       # expected error code (None: a 200 with scores)
    limit: Optional[str] = None      # expected limit named in the error


@dataclass
class Outcome:
    name: str
    status: int
    code: Optional[str]
    limit: Optional[str]
    ok: bool
    healthy_after: bool
    seconds: float
    message: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)


def _raw(data: bytes, ctype: str = "image/png"):
    return lambda port: http(port, "POST", "/v1/score", {"Content-Type": ctype, "Content-Length": str(len(data))},
                             data)


def _form(parts):
    body = multipart(parts)
    return _raw(body, f"multipart/form-data; boundary={BOUNDARY}")


def _chunked(total: int, piece: int = 65536):
    def send(port):
        chunks, sent = [], 0
        while sent < total:
            n = min(piece, total - sent)
            chunks.append((f"{n:x}\r\n".encode() + b"\x00" * n + b"\r\n", 0.0))
            sent += n
        chunks.append((b"0\r\n\r\n", 0.0))
        return http(port, "POST", "/v1/score", {"Content-Type": "image/png", "Transfer-Encoding": "chunked"},
                    chunks=chunks)
    return send


def _drip(declared: int, seconds: float, every: float = 0.2):
    def send(port):
        n = max(1, int(seconds / every))
        return http(port, "POST", "/v1/score", {"Content-Type": "image/png", "Content-Length": str(declared)},
                    chunks=[(b"\x89", every)] * n, timeout=seconds + 30)
    return send


def _declared_only(declared: int):
    return lambda port: http(port, "POST", "/v1/score", {"Content-Type": "image/png",
                                                         "Content-Length": str(declared)})


def attacks(limits: Dict[str, Any]) -> List[Attack]:
    """The hostile uploads for a service with these ``limits`` (``GET /v1/model``'s ``limits``)."""
    max_px, max_body = int(limits["max_pixels"]), int(limits["max_body_bytes"])
    side = int((4 * max_px) ** 0.5) + 1
    good = noise_png(seed=3)
    return [
        Attack("decompression_bomb_png", _raw(png_bomb(side)), (422,), "decompression_bomb", "max_pixels"),
        Attack("bomb_header_100000x100000", _raw(png_header_claiming(100_000, 100_000)), (422,),
               "decompression_bomb", "max_pixels"),
        Attack("truncated_png", _raw(noise_png((256, 256), seed=1)[:40_000]), (422,), "corrupt"),
        Attack("polyglot_jpeg_magic_html", _raw(b"\xff\xd8\xff\xe0" + b"<html><script>alert(1)</script></html>",
                                               "image/jpeg"), (422,), None),
        Attack("polyglot_gif_javascript", _raw(b"GIF89a/*\x00\x00*/=1;alert(document.domain);", "image/gif"),
               (422,), None),
        Attack("polyglot_png_plus_zip (valid image: scored)", _raw(png_with_zip()), (200,), None),
        Attack("thin_1x100000", _raw(png_bytes(Image.new("RGB", (1, 100_000), (9, 9, 9)))), (422,),
               "extreme_aspect", "max_aspect"),
        Attack("empty_body", _raw(b""), (400,), "empty_body"),
        Attack("empty_file_part", _form([("empty.png", b"")]), (422,), "empty"),
        Attack("one_bad_part_in_a_batch", _form([("good.png", good), ("bad.png", b"not an image")]), (200,), None),
        Attack("content_type_text_html", _raw(good, "text/html"), (415,), "unsupported_media_type", "content_type"),
        Attack("content_type_json", _raw(b'{"url": "http://127.0.0.1/x.png"}', "application/json"), (415,),
               "unsupported_media_type", "content_type"),
        Attack("huge_multipart_count_10000", _form([(f"{i}.png", b"x") for i in range(10_000)]), (413,),
               "too_many_images", "max_images"),
        Attack("malformed_multipart", _raw(b"--nope\r\n\r\n", "multipart/form-data"), (400,), "bad_multipart"),
        Attack("declared_over_max_body", _declared_only(max_body + 1), (413,), "payload_too_large",
               "max_body_bytes"),
        Attack("chunked_over_max_body", _chunked(max_body + 65536), (413,), "payload_too_large", "max_body_bytes"),
        Attack("slow_drip_body", _drip(100_000, float(limits["read_timeout"]) + 2.0), (408,), "read_timeout",
               "read_timeout"),
    ]


def healthy(port: int) -> bool:
    try:
        status, _, _ = http(port, "GET", "/healthz", {}, timeout=10)
    except OSError:
        return False
    return status == 200


def run_attacks(port: int, limits: Dict[str, Any], *, only: Optional[Sequence[str]] = None) -> List[Outcome]:
    out = []
    for a in attacks(limits):
        if only and not any(a.name.startswith(o) for o in only):
            continue
        t0 = time.perf_counter()
        status, _, body = a.send(port)
        seconds = time.perf_counter() - t0
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {"unparsed": body[:200].decode("latin-1")}
        err = payload.get("error") or {}
        ok = status in a.status and (a.code is None or err.get("code") == a.code) and \
            (a.limit is None or err.get("limit") == a.limit) and (status == 200 or bool(err.get("message")))
        out.append(Outcome(a.name, status, err.get("code"), err.get("limit"), ok, healthy(port), round(seconds, 3),
                           message=str(err.get("message", ""))[:300],
                           extra={"n_scored": payload.get("n_scored"), "n_errors": payload.get("n_errors")}))
    return out


def as_records(outcomes: List[Outcome]) -> List[Dict[str, Any]]:
    return [asdict(o) for o in outcomes]
