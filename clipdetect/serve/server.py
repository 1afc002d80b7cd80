"""Run the service under uvicorn.

uvicorn owns the sockets and the signals: on SIGTERM or SIGINT it stops accepting
connections, lets the requests in flight finish (at most ``request_timeout`` + ``read_timeout``
seconds), then runs the application's shutdown, which stops the batcher. Beyond
``connection_limit`` open connections uvicorn itself answers 503.

With ``workers`` > 1, uvicorn's process supervisor binds the port once and starts that many
worker processes on it; each loads the detector and its backbone (:func:`load_served`, from the
spec in ``$CLIPDETECT_SERVE_WORKER``) and runs its own batcher, limits and metrics. SIGTERM to
the supervisor is passed on to the workers, which drain as one process does; a worker that
dies is restarted. The workers keep their keep-alive connections evenly split
(:mod:`clipdetect.serve.balance`).
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Optional

from clipdetect.serve.app import create_app
from clipdetect.serve.config import ServeConfig

logger = logging.getLogger(__name__)

#: the environment variable handing a worker process its spec (``serve --workers``)
WORKER_ENV = "CLIPDETECT_SERVE_WORKER"


def uvicorn_config(app, config: ServeConfig, *, log_level: str = "warning", **extra):
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                          limit_concurrency=config.connection_limit, access_log=False,
                          timeout_keep_alive=5, lifespan="on",
                          timeout_graceful_shutdown=int(math.ceil(config.request_timeout + config.read_timeout)),
                          server_header=False, proxy_headers=False, ws="none", **extra)


def servable(detector: str):
    """The detector bundle at ``detector``, refused unless it scores images without captions."""
    from clipdetect.models.detector import load_detector

    det = load_detector(detector)
    if det.feature_set != "image":
        raise ValueError(f"the service scores images without captions, but {detector!r} uses "
                         f"{det.feature_set!r} features; serve an image-feature detector")
    return det


def load_served(detector: str, *, backbone: Optional[str] = None, weights: Optional[str] = None,
                device: str = "cpu", precision: str = "fp32", threads: Optional[int] = None,
                runtime: str = "torch"):
    """``(detector, backbone)`` for serving the bundle at ``detector``: an image-feature detector
    and its identity-checked backbone, its image tower on ``runtime`` (torch, onnx, openvino) at
    ``precision``; ``threads`` sets torch's CPU threads."""
    from clipdetect.models.predict import check_text_tower, resolve_backbone

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    det = servable(detector)
    bb = resolve_backbone(det, backbone, device=device, precision=precision, weights=weights, runtime=runtime)
    check_text_tower(det, bb)
    return det, bb


def worker_app():
    """The application of one worker process of ``serve --workers N`` (uvicorn's factory): once the
    detector has loaded, the worker joins the connection balance (:mod:`clipdetect.serve.balance`)."""
    from clipdetect.serve.balance import ShedExcess, start_share

    spec = json.loads(os.environ[WORKER_ENV])
    det, backbone = load_served(**spec["load"])
    app = create_app(det, backbone, ServeConfig(**spec["config"]), name=spec["name"])
    share = start_share()
    if share is None:
        return app
    app.state.workers_ready = lambda: len(share.counts())  # /healthz says "starting" until all have loaded
    return ShedExcess(app, share)


def worker_threads(config: ServeConfig, threads: Optional[int]) -> Optional[int]:
    """torch threads of each worker: ``threads`` when given, else the CPUs shared among the workers."""
    if threads or config.workers == 1:
        return threads
    return max(1, (os.cpu_count() or 1) // config.workers)


def serve_workers(load: Dict[str, Any], config: ServeConfig, *, name: Optional[str] = None,
                  log_level: str = "warning") -> None:
    """Serve with ``config.workers`` processes on one port until SIGTERM / SIGINT; each worker
    calls :func:`load_served` with ``load``."""
    import shutil
    import tempfile

    from uvicorn.supervisors import Multiprocess

    from clipdetect.serve.balance import SHARE_ENV, CountingProtocol

    share = tempfile.mkdtemp(prefix="clipdetect-serve-")  # the workers' connection counts
    os.environ[WORKER_ENV] = json.dumps({"load": load, "config": config.to_dict(), "name": name})
    os.environ[SHARE_ENV] = share
    try:
        ucfg = uvicorn_config("clipdetect.serve.server:worker_app", config, log_level=log_level, factory=True,
                              workers=config.workers, http=CountingProtocol)
        logger.info("serving %s with %d worker processes on http://%s:%d", name or "the detector",
                    config.workers, config.host, config.port)
        Multiprocess(ucfg, sockets=[ucfg.bind_socket()]).run()
    finally:
        shutil.rmtree(share, ignore_errors=True)


def build_server(detector, backbone, config: ServeConfig, *, name: Optional[str] = None,
                 log_level: str = "warning", batcher=None):
    """A ``uvicorn.Server`` for the service (``.run()`` blocks; tests start it in a thread)."""
    import uvicorn

    app = create_app(detector, backbone, config, name=name, batcher=batcher)
    return uvicorn.Server(uvicorn_config(app, config, log_level=log_level))


def serve(detector, backbone, config: ServeConfig, *, name: Optional[str] = None, log_level: str = "warning") -> None:
    """Serve until SIGTERM / SIGINT (in-flight requests are drained first)."""
    server = build_server(detector, backbone, config, name=name, log_level=log_level)
    logger.info("serving %s on http://%s:%d (the page at /, the API at /v1/score)", name or "the detector",
                config.host, config.port)
    server.run()
