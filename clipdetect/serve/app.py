"""The Starlette application of ``clipdetect serve``.

Routes: ``POST /v1/score`` (images → P(fake), verdict, threshold, timing), ``GET /v1/model``
(the model card and the limits), ``GET /healthz``, ``GET /metrics`` (Prometheus text), the
web page at ``/`` and, when configured, the HTML report at ``/report``.

Failure behaviour: every error is a JSON body ``{"error": {"code", "message", "limit"?,
"limit_value"?}}`` (never a traceback); more than ``max_concurrent`` scoring requests at
once, or any request when the images already queued would need more than
``request_timeout``, are answered ``503`` with ``Retry-After`` after their body is drained
(no unbounded queue), and so is a request not scored within ``request_timeout`` (the
service is overloaded, not a gateway: no 504); an image the decoder refuses is reported in
place, and a request none of whose images could be scored is a ``422`` naming the first
image's reason and limit.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clipdetect.serve.batcher import Batcher, Overdue, Scored
from clipdetect.serve.card import model_card
from clipdetect.serve.config import ServeConfig
from clipdetect.serve.metrics import BATCH_BUCKETS, Metrics, process_gauges
from clipdetect.serve.middleware import ObserveMiddleware
from clipdetect.serve.uploads import ApiError, Body, Upload, read_uploads

logger = logging.getLogger(__name__)

#: decoder refusals → the service limit that caused them
IMAGE_LIMITS = {"decompression_bomb": "max_pixels", "extreme_aspect": "max_aspect"}
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/static/app.js": ("app.js", "text/javascript"),
          "/static/style.css": ("style.css", "text/css")}


class Service:
    """What the routes share: the detector, its backbone, the batcher, the limits and the metrics."""

    def __init__(self, detector, backbone, config: ServeConfig, *, name: Optional[str] = None,
                 batcher: Optional[Batcher] = None):
        self.detector, self.backbone, self.config = detector, backbone, config
        self.metrics = Metrics()
        self.batcher = batcher or Batcher(detector, backbone, max_batch=config.max_batch,
                                          max_wait_ms=config.max_wait_ms, max_pixels=config.max_pixels,
                                          max_aspect=config.max_aspect, on_batch=self.on_batch,
                                          inline_pixels=config.inline_decode_pixels)
        self.card = model_card(detector, path=name, limits=config.limits())
        self.inflight = 0
        self.static = {path: resources.files("clipdetect.serve").joinpath("static", f).read_bytes()
                       for path, (f, _) in STATIC.items()}
        process_gauges(self.metrics)
        self.metrics.gauge("clipdetect_inflight_requests", "scoring requests admitted now", lambda: self.inflight)
        self.metrics.gauge("clipdetect_queued_images", "images waiting for a batch", lambda: self.batcher.depth)

    def on_batch(self, size: int, seconds: float) -> None:
        self.metrics.observe("clipdetect_batch_size", size, BATCH_BUCKETS)
        self.metrics.observe("clipdetect_batch_seconds", seconds)

    def admit(self) -> Optional[ApiError]:
        """None when a scoring request may start, else the 503 to answer: ``max_concurrent``
        requests are in, or the images queued already need more than ``request_timeout``."""
        c = self.config
        if self.inflight >= c.max_concurrent:
            return self.overloaded(f"{c.max_concurrent} scoring requests are already being served (max_concurrent)",
                                   "max_concurrent", c.max_concurrent)
        wait = self.batcher.estimated_wait(1)
        if wait is not None and wait > c.request_timeout:
            return self.overloaded(f"the images queued need about {wait:.0f} s, more than request_timeout",
                                   "request_timeout", c.request_timeout, wait - c.request_timeout)
        self.inflight += 1
        self.batcher.announce(1)
        return None

    def release(self, announced: bool = False) -> None:
        """An admitted request is done; ``announced``: it ended before its images were queued, so
        the batcher stops expecting them."""
        self.inflight -= 1
        if announced:
            self.batcher.announce(-1)

    def overloaded(self, why: str, limit: str, value: Any, wait: float = 0.0) -> ApiError:
        retry = max(self.config.retry_after, int(math.ceil(wait)))
        return ApiError(503, "overloaded", f"{why}; retry after {retry} s", limit=limit, limit_value=value,
                        headers={"Retry-After": str(retry)})


def image_result(index: int, upload: Upload, scored: Scored, config: ServeConfig) -> Dict[str, Any]:
    """One image's entry in the answer: its P(fake) and verdict, or its error (naming the limit)."""
    row = scored.row
    out: Dict[str, Any] = {"index": index, "name": upload.name, "bytes": len(upload.data)}
    if row.get("error"):
        code = str(row["error"]).split(":", 1)[0].strip()
        err: Dict[str, Any] = {"code": code, "message": str(row["error"])}
        limit = IMAGE_LIMITS.get(code)
        if limit:
            value = getattr(config, limit)
            err.update(limit=limit, limit_value=value, message=f"{row['error']} ({limit} = {value})")
        out["error"] = err
    else:
        out.update(probability=row["probability"], logit=row["logit"], threshold=row["threshold"], label=row["label"],
                   verdict="fake" if row["label"] == 1 else "real")
    out["timing"] = {"queue_ms": round(scored.queue_ms, 3), "batch_ms": round(scored.batch_ms, 3),
                     "batch_size": scored.batch_size}
    return out


def score_answer(service: Service, uploads: List[Upload], scored: List[Scored], timing: Dict[str, float]):
    """``(status, body)`` of a scored request: 200 when an image was scored, else 422."""
    results = [image_result(i, u, s, service.config) for i, (u, s) in enumerate(zip(uploads, scored))]
    errors = [r["error"] for r in results if "error" in r]
    for r in results:
        service.metrics.inc("clipdetect_images_total", outcome=r["error"]["code"] if "error" in r else "scored")
    body: Dict[str, Any] = {"model": service.card.get("name"), "threshold": service.detector.threshold,
                            "threshold_target": service.card.get("threshold_target"), "n": len(results),
                            "n_scored": len(results) - len(errors), "n_errors": len(errors), "results": results,
                            "timing": {k: round(v, 3) for k, v in timing.items()}}
    if errors and len(errors) == len(results):
        first = dict(errors[0])
        if len(results) > 1:
            first["message"] = f"none of the {len(results)} images could be scored; first: {first['message']}"
        body["error"] = first
        return 422, body
    return 200, body


async def score(request: Request) -> Response:
    service: Service = request.app.state.service
    c = service.config
    body = Body(request, max_bytes=c.max_body_bytes, timeout=c.read_timeout)
    refused = service.admit()
    if refused is not None:
        await body.discard()
        raise refused
    announced = True  # admission told the batcher this request's images are on their way
    try:
        t0 = time.perf_counter()
        try:
            uploads = await read_uploads(request, body, max_images=c.max_images)
        except ApiError as exc:
            if "Connection" not in exc.headers:  # answered before the body was read: drain it first
                await body.discard()
            raise
        t1 = time.perf_counter()
        items = service.batcher.enqueue([u.data for u in uploads], t0 + c.request_timeout)
        service.batcher.announce(-1)
        announced = False
        try:
            scored = await asyncio.wait_for(service.batcher.results(items), max(0.001, c.request_timeout - (t1 - t0)))
        except Overdue as exc:
            raise service.overloaded(f"the images queued ahead would not be scored within request_timeout ({exc})",
                                     "request_timeout", c.request_timeout, exc.wait) from None
        except asyncio.TimeoutError:  # the service is overloaded, not a gateway: 503, retry later
            retry = max(c.retry_after, int(math.ceil(service.batcher.estimated_wait(0) or 0)))
            raise ApiError(503, "request_timeout", f"the images were not scored within {c.request_timeout:g} s "
                           f"(request_timeout); the service is busy: retry after {retry} s", limit="request_timeout",
                           limit_value=c.request_timeout, headers={"Retry-After": str(retry)}) from None
        t2 = time.perf_counter()
        status, payload = score_answer(service, uploads, scored, {"read_ms": (t1 - t0) * 1e3,
                                                                  "score_ms": (t2 - t1) * 1e3,
                                                                  "total_ms": (t2 - t0) * 1e3})
        return JSONResponse(payload, status_code=status)
    finally:
        service.release(announced)


async def model(request: Request) -> Response:
    return JSONResponse(request.app.state.service.card)


async def healthz(request: Request) -> Response:
    """200 when this process scores; 503 ``unavailable`` when its batcher has stopped, and with
    ``serve --workers N`` 503 ``starting`` (``Retry-After: 1``) until all N workers have loaded
    (once: a worker restarted later does not make the service "starting" again)."""
    service: Service = request.app.state.service
    alive = service.batcher.thread is not None and service.batcher.thread.is_alive()
    body = {"status": "ok" if alive else "unavailable", "inflight": service.inflight,
            "queued_images": service.batcher.depth}
    ready = getattr(request.app.state, "workers_ready", None)  # set by a worker of serve --workers
    if ready is not None:
        body["workers_ready"] = n = ready()
        if n >= service.config.workers:  # started: later a worker may be restarted or stopped (SIGTTOU)
            request.app.state.all_workers_started = True
        if alive and not getattr(request.app.state, "all_workers_started", False):
            body["status"] = "starting"
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse(body, status_code=200 if alive else 503)


async def metrics(request: Request) -> Response:
    return Response(request.app.state.service.metrics.render(), media_type="text/plain; version=0.0.4")


async def static(request: Request) -> Response:
    service: Service = request.app.state.service
    return Response(service.static[request.url.path], media_type=STATIC[request.url.path][1])


async def report(request: Request) -> Response:
    path = request.app.state.service.config.report
    if not path:
        raise ApiError(404, "no_report", "this service was started without --report FILE.html "
                       "(write one with: clipdetect report ... --format html)")
    return Response(Path(path).read_bytes(), media_type="text/html; charset=utf-8")


async def api_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return JSONResponse(exc.payload(), status_code=exc.status, headers=exc.headers)
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": f"{request.method} {request.url.path}: "
                                       f"{exc.detail}"}}, status_code=exc.status_code, headers=exc.headers)
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": {"code": "internal_error", "message": "the service failed on this request; "
                                   "the details are in its log"}}, status_code=500)


def create_app(detector, backbone, config: Optional[ServeConfig] = None, *, name: Optional[str] = None,
               batcher: Optional[Batcher] = None) -> Starlette:
    """The ASGI application scoring with ``detector`` on ``backbone`` (an identity-checked
    :class:`~clipdetect.features.backbones.Backbone`), under the limits of ``config``."""
    import contextlib

    config = config or ServeConfig()
    service = Service(detector, backbone, config, name=name, batcher=batcher)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        logger.info("scoring with %s; limits %s", detector, config.limits())
        try:
            yield
        finally:  # uvicorn has drained the in-flight requests by now
            await asyncio.get_running_loop().run_in_executor(None, service.batcher.stop)

    routes = [Route("/v1/score", score, methods=["POST"]), Route("/v1/model", model, methods=["GET"]),
              Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
              Route("/report", report, methods=["GET"])]
    routes += [Route(path, static, methods=["GET"]) for path in STATIC]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: api_error, Exception: api_error})
    app.state.service = service
    app.add_middleware(ObserveMiddleware, metrics=service.metrics, known={r.path for r in routes})
    return app
