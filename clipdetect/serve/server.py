"""Run the service under uvicorn.

uvicorn owns the sockets and the signals: on SIGTERM or SIGINT it stops accepting
connections, lets the requests in flight finish (at most ``request_timeout`` + ``read_timeout``
seconds), then runs the application's shutdown, which stops the batcher. Beyond
``connection_limit`` open connections uvicorn itself answers 503.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

from clipdetect.serve.app import create_app
from clipdetect.serve.config import ServeConfig

logger = logging.getLogger(__name__)


def uvicorn_config(app, config: ServeConfig, *, log_level: str = "warning"):
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                          limit_concurrency=config.connection_limit, access_log=False,
                          timeout_keep_alive=5, lifespan="on",
                          timeout_graceful_shutdown=int(math.ceil(config.request_timeout + config.read_timeout)),
                          server_header=False)


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
