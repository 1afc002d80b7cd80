"""Every limit of the scoring service in one dataclass (saved as JSON, shown at ``/v1/model``).

Request-level limits answer with a 4xx JSON error naming the limit; image-level limits
(``max_pixels``, ``max_aspect``: the package decoder's) are reported per image.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

from clipdetect.data.imaging import CROP_ASPECT, MAX_PIXELS

#: images of at most this many pixels (256 x 256) are decoded on the request's thread
INLINE_DECODE_PIXELS = 256 * 256


@dataclass
class ServeConfig:
    """Options of ``clipdetect serve``; each field has the same-named ``--option``."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: bytes of one request body (413 ``max_body_bytes``)
    max_body_bytes: int = 16 * 1024 * 1024
    #: images in one request (413 ``max_images``)
    max_images: int = 32
    #: decoder limit: more pixels is a ``decompression_bomb`` (422 when every image of a request fails)
    max_pixels: int = MAX_PIXELS
    #: decoder limit: images thinner than 1:max_aspect are refused (``extreme_aspect``); None: cropped
    max_aspect: Optional[float] = CROP_ASPECT
    #: seconds for the whole body to arrive (408 ``read_timeout``; stops slow-drip uploads)
    read_timeout: float = 10.0
    #: seconds from admission to the scores (503 ``request_timeout`` with Retry-After)
    request_timeout: float = 60.0
    #: requests admitted at once (reading, queued or scoring); more are answered 503 + Retry-After
    max_concurrent: int = 16
    #: open connections uvicorn accepts (beyond them it answers 503 itself); None: 8 x max_concurrent
    max_connections: Optional[int] = None
    #: images per encoder batch across requests (dynamic batching)
    max_batch: int = 32
    #: milliseconds the batcher waits at most for more images after the first one arrives (none
    #: when every admitted request's images are queued already)
    max_wait_ms: float = 5.0
    #: images of at most this many pixels (by their header) are decoded on the request's thread
    #: rather than handed to the decode pool, whose hand-over costs more than a thumbnail's
    #: decode; 0: every image goes to the pool
    inline_decode_pixels: int = INLINE_DECODE_PIXELS
    #: server processes sharing the port, each with its own copy of the model, batcher, limits
    #: and /metrics (requests from many clients then use more than one core's Python)
    workers: int = 1
    #: the Retry-After header (seconds) of 503 answers
    retry_after: int = 1
    #: a self-contained HTML report (``clipdetect report --format html``) shown at /report
    report: Optional[str] = None

    def __post_init__(self):
        for name in ("max_body_bytes", "max_images", "max_pixels", "max_concurrent", "max_batch", "workers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("read_timeout", "request_timeout"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if int(self.inline_decode_pixels) < 0:
            raise ValueError(f"inline_decode_pixels must be >= 0, got {self.inline_decode_pixels!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.max_aspect is not None and not self.max_aspect >= 1:
            raise ValueError(f"max_aspect must be >= 1 (a long:short side ratio), got {self.max_aspect!r}")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")

    @property
    def connection_limit(self) -> int:
        return int(self.max_connections or 8 * self.max_concurrent)

    def limits(self) -> Dict[str, Any]:
        """The limits a client may want to know (``GET /v1/model``)."""
        skip = {"host", "port", "report"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
