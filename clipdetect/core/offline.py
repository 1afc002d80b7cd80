"""Offline as a first-class state: is the model hub reachable? Decided once per process, fast.

Downloads (open_clip pretrained tags, Hugging Face datasets by name) go through the hub
libraries, which retry an unreachable host for about a minute before failing. Before any
download, :func:`offline_reason` answers from the hub libraries' own switches
(``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``, ``TRANSFORMERS_OFFLINE``, and ``CLIPDETECT_OFFLINE``)
or, when none is set, from one TCP connection to the hub (or to the configured HTTPS proxy)
with a :data:`PROBE_TIMEOUT`-second timeout. When offline, :func:`hub_offline` turns those
switches on around the call, so files already in the local cache load at once and missing
ones fail at once, and the caller says what to do instead, once.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
from typing import Iterator, Optional, Tuple
from urllib.parse import urlparse

#: environment switches that mean "do not use the network" (any of them set to 1/true/yes/on)
OFFLINE_ENV = ("CLIPDETECT_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
#: seconds the reachability probe waits for a connection
PROBE_TIMEOUT = 3.0
_TRUE = ("1", "true", "yes", "on")


def _target() -> Tuple[str, int]:
    """The (host, port) a hub download connects to first: the HTTPS proxy if one is set, else the hub."""
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), None)
    url = urlparse(proxy if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    if not url.hostname:
        url = urlparse("//" + (proxy or ""))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme in ("https", "") else 80)


@functools.lru_cache(maxsize=1)
def offline_reason() -> Optional[str]:
    """Why the hub cannot be used (an environment switch, or the host did not answer), or None."""
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"${name} is set"
    host, port = _target()
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or type(exc).__name__})"
    return None


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """The hub libraries' offline switches on for the block (environment, and the constants
    ``huggingface_hub`` read when it was imported); restored afterwards."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    constants = []
    for module, name in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("datasets.config", "HF_DATASETS_OFFLINE")):
        try:
            mod = __import__(module, fromlist=[name])
        except ImportError:
            continue
        if hasattr(mod, name):
            constants.append((mod, name, getattr(mod, name)))
            setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in constants:
            setattr(mod, name, value)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
