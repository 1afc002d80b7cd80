"""A pure ASGI middleware: request metrics and the security headers of every answer."""
from __future__ import annotations

import time
from typing import Iterable

from clipdetect.serve.metrics import Metrics

#: pages load scripts and styles from this service only; images the user drops are blob: URLs
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
#: the HTML report is static: inline styles and embedded figures, no script at all
REPORT_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
              "frame-ancestors 'none'")


class ObserveMiddleware:
    """Counts requests by path and status, times them, and adds ``nosniff``, ``no-store`` and a CSP."""

    def __init__(self, app, *, metrics: Metrics, known: Iterable[str]):
        self.app, self.metrics, self.known = app, metrics, set(known)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        label = path if path in self.known else "other"  # bounded label set: no path from a client
        csp = REPORT_CSP if path == "/report" else PAGE_CSP
        start, status = time.perf_counter(), [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"),
                            (b"content-security-policy", csp.encode()), (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inc("clipdetect_requests_total", path=label, status=str(status[0]))
            self.metrics.observe("clipdetect_request_seconds", time.perf_counter() - start, path=label)
