"""The scoring service: ``clipdetect serve DETECTOR`` (HTTP JSON API and a web page).

* :mod:`~clipdetect.serve.config` — :class:`ServeConfig`, every limit in one place;
* :mod:`~clipdetect.serve.batcher` — dynamic batching of concurrent requests into one
  :meth:`~clipdetect.models.detector.Detector.score_images` call (the package's decode →
  encode → head path, unchanged);
* :mod:`~clipdetect.serve.uploads` — reading request bodies under the size, time and count limits;
* :mod:`~clipdetect.serve.card` — the model card of ``GET /v1/model``;
* :mod:`~clipdetect.serve.metrics` — Prometheus text metrics; :mod:`~clipdetect.serve.middleware`
  counts and times every request and adds the security headers;
* :mod:`~clipdetect.serve.app` — the Starlette application; :mod:`~clipdetect.serve.server` runs it
  under uvicorn.

Starlette, uvicorn and python-multipart come with the ``serve`` extra
(``pip install 'clipdetect[serve]'``); :func:`require_extra` says so when they are missing.
"""
from __future__ import annotations

import importlib.util

#: the modules of the ``serve`` extra (import name → distribution name)
EXTRA_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn", "multipart": "python-multipart"}


class MissingExtra(ImportError):
    """The ``serve`` extra is not installed."""


def require_extra() -> None:
    """Raise :class:`MissingExtra` naming the extra and the missing packages."""
    missing = [dist for mod, dist in EXTRA_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise MissingExtra(f"clipdetect serve needs the 'serve' extra (missing: {', '.join(missing)}); "
                           "install it with: pip install 'clipdetect[serve]'")
