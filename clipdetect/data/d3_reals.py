"""Where D3's real images come from, and what stands in for an image that is not there.

A D3 row names its real image by URL only. :class:`D3RealImages` (a part of
:class:`~clipdetect.data.d3.D3Source`) finds it in ``reals_dir`` (files named by row id), in a
:class:`~clipdetect.data.fetch.FetchStore`, or fetches it, a window of rows ahead of the one
being read; an image that is unavailable is a :class:`MissingImage`, which the decoder
reports in the error ledger.
"""
from __future__ import annotations

import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional, Tuple

from clipdetect.data.imaging import BadImage
from clipdetect.data.sources import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)


class MissingImage:
    """Stands where an image is not available; decoding it raises ``BadImage(reason)``.

    ``decode_image`` reads paths through ``os.fspath``, which calls ``__fspath__`` — so the
    reason reaches the error ledger without a special case in the decoder. Picklable.
    """

    def __init__(self, reason: str = "real_missing", detail: str = ""):
        self.reason, self.detail = reason, detail

    def __fspath__(self) -> str:
        raise BadImage(self.reason, self.detail)

    def __repr__(self) -> str:
        return f"MissingImage({self.reason!r}, {self.detail!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, MissingImage) and (self.reason, self.detail) == (other.reason, other.detail)


class D3RealImages:
    """The real-image side of :class:`~clipdetect.data.d3.D3Source`: it reads the attributes
    ``reals_dir``, ``store``, ``fetch_reals``, ``fetch_opts``, ``fetch_window``, ``include_real``,
    ``ds`` and ``_offsets`` that ``D3Source.__init__`` sets, and keeps ``_reals_index``."""

    def _real_image(self, rid: str, url: str):
        if self.reals_dir is not None and (path := self._reals().get(rid)):
            return path
        if self.store is not None and url:
            if path := self.store.get(url):
                return path
            if failure := self.store.failure(url):
                return MissingImage("real_missing", f"fetch failed: {failure['reason']} "
                                                    f"(status {failure.get('status')})")
            if self.fetch_reals:
                return MissingImage("real_missing", "not fetched")
        return MissingImage("real_missing", "no local file" if self.reals_dir else
                            "no reals_dir, store or fetch_reals" if not url else "real image not available")

    def _reals(self) -> Dict[str, str]:
        if self._reals_index is None:
            index: Dict[str, str] = {}
            for dirpath, dirnames, filenames in os.walk(self.reals_dir):
                dirnames.sort()
                for name in sorted(filenames):
                    stem, ext = os.path.splitext(name)
                    if ext.lower() in IMAGE_EXTENSIONS:
                        index.setdefault(stem, os.path.join(dirpath, name))
            self._reals_index = index
            logger.info("found %d real images in %s", len(index), self.reals_dir)
        return self._reals_index

    def _needs_fetch(self, rid: str, url: Optional[str]) -> bool:
        return bool(url) and not (self.reals_dir is not None and rid in self._reals())

    def _fetch(self, urls: List[str]) -> None:
        from clipdetect.data.fetch import fetch_many

        if urls:
            fetch_many(urls, store=self.store, **self.fetch_opts)

    def _prefetched(self, rows: Iterator[Tuple[int, Dict[str, Any]]], first: int
                    ) -> Iterator[Tuple[int, Dict[str, Any]]]:
        """Pass rows through; with ``fetch_reals``, fetch the reals of the next window of rows
        in the background while the current window is consumed."""
        if not (self.fetch_reals and self.include_real):
            yield from rows
            return
        w = self.fetch_window
        with ThreadPoolExecutor(1, thread_name_prefix="d3-prefetch") as pool:
            if self._offsets is not None:  # random access: read only the id/url columns ahead
                ids, urls = self.ds.data.column("id"), self.ds.data.column("url")

                def window_urls(lo):  # (a slice past the end is cut short)
                    pairs = zip(ids.slice(lo, w).to_pylist(), urls.slice(lo, w).to_pylist())
                    return [u for i, u in pairs if self._needs_fetch(str(i), u)]

                fut, lo = pool.submit(lambda: self._fetch(window_urls(first))), first
                for r, rec in rows:
                    if r == lo:
                        fut.result()
                        lo += w
                        fut = pool.submit(lambda lo=lo: self._fetch(window_urls(lo)))
                    yield r, rec
                return

            # streaming: hold two windows of rows, fetching the second while the first is consumed
            def submit(window):
                return pool.submit(self._fetch, [rec["url"] for _, rec in window
                                                 if self._needs_fetch(str(rec["id"]), rec["url"])])

            chunks = iter(lambda: list(itertools.islice(rows, w)), [])
            nxt = next(chunks, [])
            fut = submit(nxt)
            while nxt:
                cur, cur_fut = nxt, fut
                nxt = next(chunks, [])
                fut = submit(nxt)
                cur_fut.result()
                yield from cur
            fut.result()
