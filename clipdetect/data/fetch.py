"""Robust image downloading into a content store, with a ledger of failures.

``fetch_many(urls, store=...)`` downloads URLs with a bounded thread pool over
``requests``: connect/read timeouts and a total deadline per attempt, retries with
exponential backoff and jitter for transient failures (5xx, 408, 429, timeouts,
connection resets) but never for permanent ones (404, other 4xx, HTML instead of an
image, too large), a byte limit, and a content check (``Content-Type`` is not text, and
the bytes decode with :func:`clipdetect.data.imaging.decode_image`).

The :class:`FetchStore` keeps the bytes under ``objects/ab/cd/<sha1(url)>`` (written
atomically, so a killed run never leaves a half file) and appends every failure to
``failures.jsonl`` (url, reason, status, attempts, time, detail). A URL already stored is
never fetched again, and a URL in the ledger is skipped unless ``retry_failed`` — so
dead links are tried once, not on every run. Reasons: ``not_found`` (404/410),
``http_error`` (other statuses, after retries for 5xx), ``timeout``, ``connection``,
``too_large``, ``not_an_image``, ``bad_url``, or a decode reason (``corrupt``, ``empty``…).

Run ``clipdetect fetch --help`` to fetch a URL list or the real images of D3.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

from clipdetect.core.io import open_fd, write_bytes
from clipdetect.core.progress import progress_bar
from clipdetect.data.imaging import BadImage, decode_image

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}
Timeout = Union[float, Tuple[float, float]]


def url_key(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def default_store_root() -> str:
    return os.environ.get("CLIPDETECT_FETCH_STORE") or os.path.join(
        os.path.expanduser("~"), ".cache", "clipdetect", "fetch")


class FetchStore:
    """Fetched bytes keyed by sha1(url), in sharded subfolders, plus the failure ledger.

    Safe to share between threads of one process; several processes may share one store
    (writes are atomic renames; ledger lines are appended with one ``write`` each).
    """

    def __init__(self, root: Union[str, os.PathLike], *, ledger: str = "failures.jsonl"):
        if not (ledger.startswith("failures") and ledger.endswith(".jsonl")):
            raise ValueError(f"ledger name {ledger!r} must look like failures*.jsonl")
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self.ledger_path = self.root / ledger
        self._lock = threading.Lock()
        self._failures: Optional[Dict[str, dict]] = None

    def path_for(self, url: str) -> Path:
        h = url_key(url)
        return self.root / "objects" / h[:2] / h[2:4] / h

    def get(self, url: str) -> Optional[str]:
        """Path of the stored bytes of ``url``, or None when not fetched (yet)."""
        p = self.path_for(url)
        return str(p) if p.is_file() else None

    def put(self, url: str, data: bytes) -> str:
        p = self.path_for(url)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(p, data)
        return str(p)

    # ------------------------------------------------------------ failure ledger
    def failures(self) -> Dict[str, dict]:
        """url → the latest ledger entry for it, from every ``failures*.jsonl`` of the store
        (one per fetching process; read once, then kept up to date)."""
        with self._lock:
            if self._failures is None:
                self._failures = {}
                for path in sorted(self.root.glob("failures*.jsonl")):
                    if not path.is_file():  # a FIFO or a device would block or never end
                        logger.warning("skipping %s: not a regular file", path)
                        continue
                    with open(path, encoding="utf-8") as f:
                        for line in f:
                            try:
                                rec = json.loads(line)
                                self._failures[rec["url"]] = rec
                            except (ValueError, KeyError):
                                continue  # a torn last line of a killed run
            return self._failures

    def failure(self, url: str) -> Optional[dict]:
        return self.failures().get(url)

    def record_failure(self, rec: dict) -> None:
        self.failures()
        line = (json.dumps(rec, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            fd = open_fd(self.ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self._failures[rec["url"]] = rec


@dataclass
class FetchResult:
    url: str
    ok: bool
    data: Optional[bytes] = None
    reason: str = ""
    status: Optional[int] = None
    attempts: int = 0
    detail: str = ""


@dataclass
class FetchStats:
    requested: int = 0
    unique: int = 0
    cached: int = 0
    skipped_failed: int = 0
    fetched: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    reasons: Dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


_LOCAL = threading.local()


def _session(pool: int):
    import requests

    s = getattr(_LOCAL, "session", None)
    if s is None:
        from clipdetect import __version__

        s = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(4, pool), max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        s.headers["User-Agent"] = f"clipdetect-fetch/{__version__}"
        _LOCAL.session = s
    return s


def _attempt(url: str, *, timeout: Timeout, max_bytes: int, deadline: float, pool: int
             ) -> Tuple[Optional[bytes], str, Optional[int], str]:
    """One GET → (bytes, "", status, "") or (None, reason, status, detail)."""
    import requests

    try:
        with _session(pool).get(url, timeout=timeout, stream=True, allow_redirects=True) as r:
            status = r.status_code
            if status in (404, 410):
                return None, "not_found", status, ""
            if status >= 400:
                return None, "http_error", status, r.reason or ""
            ctype = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype.startswith("text/") or any(w in ctype for w in ("html", "json", "javascript")):
                return None, "not_an_image", status, f"Content-Type {ctype}"
            length = r.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                return None, "too_large", status, f"Content-Length {length} > {max_bytes}"
            buf, size, t_end = [], 0, time.monotonic() + deadline
            for chunk in r.iter_content(64 * 1024):
                buf.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    return None, "too_large", status, f"more than {max_bytes} bytes"
                if time.monotonic() > t_end:
                    return None, "timeout", status, f"body not read within {deadline:.1f} s"
            return b"".join(buf), "", status, ""
    except requests.exceptions.Timeout as exc:
        return None, "timeout", None, type(exc).__name__
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema) as exc:
        return None, "bad_url", None, str(exc)[:200]
    except requests.exceptions.RequestException as exc:  # connection failures, broken bodies, ...
        return None, "connection", None, f"{type(exc).__name__}: {str(exc)[:200]}"


def fetch_one(url: str, *, timeout: Timeout = (5.0, 20.0), retries: int = 2, backoff: float = 1.0,
              max_bytes: int = DEFAULT_MAX_BYTES, deadline: Optional[float] = None, check_image: bool = True,
              pool: int = 16) -> FetchResult:
    """Download ``url`` with retries for transient failures; check that it is an image."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return FetchResult(url=str(url), ok=False, reason="bad_url", detail="not an http(s) URL")
    read_t = timeout[1] if isinstance(timeout, tuple) else timeout
    deadline = deadline if deadline is not None else 3 * read_t
    for attempts in itertools.count(1):
        data, reason, status, detail = _attempt(url, timeout=timeout, max_bytes=max_bytes, deadline=deadline,
                                                pool=pool)
        transient = reason in ("timeout", "connection") or (
            reason == "http_error" and status in TRANSIENT_STATUS)
        if data is not None or not transient or attempts > retries:
            break
        time.sleep(min(30.0, backoff * 2 ** (attempts - 1)) * (0.5 + random.random()))
    if data is None:
        return FetchResult(url, False, None, reason, status, attempts, detail)
    if check_image:
        try:
            decode_image(data)
        except BadImage as exc:
            return FetchResult(url, False, None, exc.reason, status, attempts, exc.detail[:200])
    return FetchResult(url, True, data, "", status, attempts)


def fetch_many(urls: Iterable[str], *, store: Union[FetchStore, str, os.PathLike], workers: int = 16,
               timeout: Timeout = (5.0, 20.0), retries: int = 2, backoff: float = 1.0,
               max_bytes: int = DEFAULT_MAX_BYTES, retry_failed: bool = False, progress: bool = True,
               check_image: bool = True, total: Optional[int] = None) -> FetchStats:
    """Fetch every URL not yet in ``store`` (nor in its failure ledger, unless ``retry_failed``).

    At most ``workers`` downloads run at once and at most ``4 * workers`` are queued, so an
    endless iterator of URLs is fine. Returns counts by outcome and failure reason.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    store = store if isinstance(store, FetchStore) else FetchStore(store)
    stats, seen, t0 = FetchStats(), set(), time.perf_counter()
    ledger = store.failures()
    kw = dict(timeout=timeout, retries=retries, backoff=backoff, max_bytes=max_bytes, check_image=check_image,
              pool=workers)

    def todo():
        for url in urls:
            stats.requested += 1
            if url not in seen:
                seen.add(url)
                stats.unique += 1
                if store.get(url):
                    stats.cached += 1
                elif url in ledger and not retry_failed:
                    stats.skipped_failed += 1
                else:
                    yield url
                    continue
            bar.update(1)  # nothing to fetch

    def done(res: FetchResult) -> None:
        if res.ok:
            store.put(res.url, res.data)
            stats.fetched += 1
            stats.bytes += len(res.data)
        else:
            stats.failed += 1
            stats.reasons[res.reason] = stats.reasons.get(res.reason, 0) + 1
            store.record_failure({"url": res.url, "reason": res.reason, "status": res.status,
                                  "attempts": res.attempts, "detail": res.detail,
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        bar.update(1)
        bar.set_postfix(ok=stats.fetched, failed=stats.failed, refresh=False)

    with progress_bar(total=total, unit="url", desc="fetch", enabled=progress, dynamic_ncols=True) as bar, \
            ThreadPoolExecutor(workers, thread_name_prefix="fetch") as pool:
        pending = set()
        for url in todo():
            pending.add(pool.submit(fetch_one, url, **kw))
            if len(pending) >= 4 * workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    done(f.result())
        for f in pending:
            done(f.result())
    stats.seconds = time.perf_counter() - t0
    logger.info("fetch: %d fetched, %d failed %s, %d already stored, %d known failures skipped (%.1f s)",
                stats.fetched, stats.failed, stats.reasons, stats.cached, stats.skipped_failed, stats.seconds)
    return stats
