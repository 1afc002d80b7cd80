"""Request bodies → images, under the service's limits; every refusal is an :class:`ApiError`.

Accepted: ``multipart/form-data`` (each file part is one image; other fields are ignored)
or one image as the raw body (``image/*`` or ``application/octet-stream``). Bytes only:
the service never fetches a URL and never opens a path a client names. The body is read
with a size cap (``max_body_bytes``; a larger ``Content-Length`` is refused before reading)
and a deadline (``read_timeout``: a body dripped in slowly is cut off).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, List, Optional

RAW_TYPES = ("image/*", "application/octet-stream")
MULTIPART = "multipart/form-data"
#: feed the multipart parser in slices of this size
CHUNK = 64 * 1024


class ApiError(Exception):
    """An error answered to the client as JSON: ``{"error": {"code", "message", "limit"?, "limit_value"?}}``."""

    def __init__(self, status: int, code: str, message: str, *, limit: Optional[str] = None,
                 limit_value: Any = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.limit, self.limit_value, self.headers = limit, limit_value, dict(headers or {})

    def payload(self) -> Dict[str, Any]:
        err: Dict[str, Any] = {"code": self.code, "message": self.message}
        if self.limit is not None:
            err.update(limit=self.limit, limit_value=self.limit_value)
        return {"error": err}


@dataclass
class Upload:
    name: str
    data: bytes


class Body:
    """A request's body, read at most once, under a byte cap and a deadline."""

    def __init__(self, request, *, max_bytes: int, timeout: float):
        self.request, self.max_bytes, self.timeout = request, int(max_bytes), float(timeout)
        self.done = False  # the whole body was received (the connection can be reused)

    def declared(self) -> Optional[int]:
        text = self.request.headers.get("content-length")
        if text is None:
            return None
        try:
            n = int(text)
        except ValueError:
            raise ApiError(400, "bad_content_length", f"Content-Length {text!r} is not a number") from None
        if n < 0:
            raise ApiError(400, "bad_content_length", f"Content-Length {n} is negative")
        return n

    def too_large(self, n: Optional[int] = None) -> ApiError:
        size = f"{n:,} bytes" if n is not None else "more bytes"
        return ApiError(413, "payload_too_large", f"the body has {size}; the limit is {self.max_bytes:,} "
                        "(max_body_bytes): send fewer or smaller images per request",
                        limit="max_body_bytes", limit_value=self.max_bytes, headers={"Connection": "close"})

    async def read(self, keep: bool = True) -> bytes:
        """The body (``keep=False``: read and drop it, for an answer that does not need it)."""
        n = self.declared()
        if n is not None and n > self.max_bytes:
            raise self.too_large(n)
        buf, size = bytearray(), [0]

        async def consume():
            async for chunk in self.request.stream():
                size[0] += len(chunk)
                if size[0] > self.max_bytes:
                    raise self.too_large()
                if keep:
                    buf.extend(chunk)
        from starlette.requests import ClientDisconnect

        try:
            await asyncio.wait_for(consume(), self.timeout)
        except ClientDisconnect:  # nobody is left to read the answer
            raise ApiError(400, "client_disconnected", f"the client went away after {size[0]:,} bytes",
                           headers={"Connection": "close"}) from None
        except asyncio.TimeoutError:
            raise ApiError(408, "read_timeout", f"the body did not arrive within {self.timeout:g} s "
                           f"(read_timeout; {size[0]:,} bytes came)", limit="read_timeout",
                           limit_value=self.timeout, headers={"Connection": "close"}) from None
        self.done = True
        return bytes(buf)

    async def discard(self) -> None:
        """Read and drop what is left of the body, so that the client hears the answer; never raises."""
        if self.done or self.request.headers.get("content-length") == "0":
            return
        try:
            await self.read(keep=False)
        except Exception:  # the answer goes out on a closing connection instead
            pass


def media_type(request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_media_type(request) -> str:
    """``multipart`` or ``raw``; an empty or other content type is a 415 naming the accepted ones."""
    mime = media_type(request)
    if mime == MULTIPART:
        return "multipart"
    if mime.startswith("image/") or mime == "application/octet-stream":
        return "raw"
    shown = mime or "none"
    raise ApiError(415, "unsupported_media_type", f"Content-Type {shown!r} is not accepted: send "
                   f"{MULTIPART} (one file part per image) or one image as the body ({', '.join(RAW_TYPES)})",
                   limit="content_type", limit_value=[MULTIPART, *RAW_TYPES])


async def _slices(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i:i + CHUNK]
    yield b""


async def parse_multipart(headers, data: bytes, *, max_images: int) -> List[Upload]:
    """The file parts of a multipart body, at most ``max_images`` of them (413 beyond)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(headers, _slices(data), max_files=max_images, max_fields=max_images)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise ApiError(413, "too_many_images", f"more than {max_images} images in one request (max_images): "
                           "split them over several requests", limit="max_images", limit_value=max_images) from None
        if "Too many fields" in exc.message:
            raise ApiError(413, "too_many_fields", f"more than {max_images} non-file form fields (max_images)",
                           limit="max_images", limit_value=max_images) from None
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be parsed: {exc.message}") from None
    uploads = []
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(Upload(name=value.filename or f"image-{len(uploads)}", data=await value.read()))
    finally:
        await form.close()
    return uploads


async def read_uploads(request, body: Body, *, max_images: int) -> List[Upload]:
    """The images of a ``POST /v1/score`` request, or an :class:`ApiError`."""
    kind = check_media_type(request)
    data = await body.read()
    if not data:
        raise ApiError(400, "empty_body", "the request has no body: send images as multipart file parts "
                       "or one image as the body")
    if kind == "raw":
        name = request.query_params.get("name") or "image"
        return [Upload(name=name[:200], data=data)]
    uploads = await parse_multipart(request.headers, data, max_images=max_images)
    if not uploads:
        raise ApiError(400, "no_images", "the multipart body has no file parts (send each image as a file part, "
                       "e.g. curl -F image=@photo.jpg)")
    return uploads
