"""Dynamic batching: images of concurrent requests share one encoder batch.

Requests put their images on one queue; each image is decoded and preprocessed as it arrives,
on a pool of ``decode_workers`` threads, while a single worker thread takes the first waiting
image, gathers more for at most ``max_wait_ms`` (or until ``max_batch``, or at once when no
admitted request's images are still on their way: :meth:`Batcher.announce`), and encodes and scores
the lot on the service's one backbone (:class:`~clipdetect.models.predict.ImageScorer`: the
package's decode → preprocess → encode → head path, with the decoder's ``max_pixels`` /
``max_aspect`` limits) — so a served score equals ``clipdetect predict``'s. While a batch runs,
new images are decoded and queue up to form the next batch, so under load the batches fill
without waiting and decoding overlaps encoding. An image whose header names at most
``inline_pixels`` pixels (a thumbnail: decoded in well under a millisecond) is decoded at once
on the calling thread instead: for such images the hand-over to the pool and back costs more
CPU than the decode itself. The queue holds at most what the admitted
requests carry (``max_concurrent`` × ``max_images``): admission control bounds it, and
:meth:`Batcher.estimated_wait` (recent seconds per image × images ahead) lets it refuse a
request that could not be scored in time. An image whose request's deadline would pass
before its batch ends is not encoded (its request hears :class:`Overdue`): under overload the
encoder spends no time on answers nobody will read.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from clipdetect.data.imaging import header_pixels
from clipdetect.models.predictions import SCORE_COLUMNS
from clipdetect.serve.config import INLINE_DECODE_PIXELS

logger = logging.getLogger(__name__)

#: estimates of the time to come are stretched by this factor (batch times vary on a busy machine)
MARGIN = 1.25


@dataclass
class Scored:
    """One image's outcome: the score row (``score``, ``probability``, ``label``, ``error``) and timing."""

    row: Dict[str, Any]
    queue_ms: float
    batch_ms: float
    batch_size: int


class Overdue(Exception):
    """The image cannot be scored before its request's deadline (estimated from recent batches)."""

    def __init__(self, wait: float):
        super().__init__(f"the images ahead of it need about {wait:.1f} s")
        self.wait = wait


class _Item:
    __slots__ = ("data", "future", "loop", "enqueued", "deadline", "abandoned")

    def __init__(self, data: bytes, future: asyncio.Future, loop: asyncio.AbstractEventLoop,
                 deadline: Optional[float]):
        self.data, self.future, self.loop, self.deadline = data, future, loop, deadline
        self.enqueued = time.perf_counter()
        self.abandoned = False  # its request timed out or went away: not worth encoding


def _settle(future: asyncio.Future, value: Any) -> None:
    if future.done():  # cancelled by a timeout meanwhile
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def _settle_all(pairs: List[Tuple[asyncio.Future, Any]]) -> None:
    for future, value in pairs:
        _settle(future, value)


def _prepared(data: Any) -> Any:
    """What the score function gets for a queued image: its decoding's result when it was
    decoded on the pool (an "err" item if that was cancelled meanwhile), else the image."""
    if not isinstance(data, concurrent.futures.Future):
        return data
    try:
        return data.result()
    except concurrent.futures.CancelledError:
        return ("err", "cancelled", "its request went away")


def clean_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A score row with NaN / pandas NA turned into None and numbers into plain Python."""
    out = {}
    for key, value in row.items():
        if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "<NA>":
            out[key] = None
        elif key == "label":
            out[key] = int(value)
        elif key in ("logit", "probability", "threshold"):
            out[key] = float(value)
        else:
            out[key] = value
    return out


class Batcher:
    """Scores images from many coroutines in shared batches on one worker thread.

    By default each image (encoded bytes only: never a path) is decoded on arrival on
    ``decode_workers`` threads (default: the CPU count; images of at most ``inline_pixels``
    pixels, by their header, on the calling thread, 0: none) by an
    :class:`~clipdetect.models.predict.ImageScorer` with the decoder limits ``max_pixels`` /
    ``max_aspect``, and the worker encodes and scores the decoded batch. ``score_fn(images)``,
    when given, replaces both: it gets a batch of the images as queued and returns their score
    rows (a list of dicts or a DataFrame). ``on_batch(size, seconds)`` is told about every batch
    (metrics).
    """

    def __init__(self, detector, backbone, *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_pixels: Optional[int] = None, max_aspect: Optional[float] = None,
                 on_batch: Optional[Callable[[int, float], None]] = None,
                 score_fn: Optional[Callable[[List[Any]], Any]] = None, decode_workers: Optional[int] = None,
                 inline_pixels: int = INLINE_DECODE_PIXELS):
        self.max_batch, self.max_wait = int(max_batch), max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.prepare: Optional[Callable[[bytes], Any]] = None
        if score_fn is None:
            from clipdetect.models.predict import ImageScorer

            limits = {k: v for k, v in (("max_pixels", max_pixels), ("max_aspect", max_aspect)) if v is not None}
            scorer = ImageScorer(detector, backbone, **limits)
            self.prepare, score_fn = scorer.decode, scorer.score
        self.score_fn = score_fn
        self.decode_workers = max(1, decode_workers or os.cpu_count() or 1)
        self.inline_pixels = int(inline_pixels)
        self.pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self.queue: "queue.SimpleQueue[Optional[_Item]]" = queue.SimpleQueue()  # C: a cheap put per image
        self.carry: "collections.deque[_Item]" = collections.deque()  # deferred to the next batch
        self.thread: Optional[threading.Thread] = None
        self.sec_per_image: Optional[float] = None  # moving average over recent batches
        self.running = 0  # images in the batch being scored
        self.announced: Optional[int] = None  # admitted requests not queued yet (None: not told)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "Batcher":
        if self.thread is None:
            if self.prepare is not None:
                self.pool = concurrent.futures.ThreadPoolExecutor(self.decode_workers,
                                                                  thread_name_prefix="clipdetect-decode")
            self.thread = threading.Thread(target=self._run, name="clipdetect-batcher", daemon=True)
            self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Score what is queued, then end the worker thread."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join(timeout)
            self.thread = None
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    @property
    def depth(self) -> int:
        """Images waiting for a batch."""
        return self.queue.qsize() + len(self.carry)

    def estimated_wait(self, n_new: int = 1) -> Optional[float]:
        """Seconds until ``n_new`` more images would be scored (None before the first batch)."""
        if self.sec_per_image is None:
            return None
        return (self.depth + self.running + n_new) * self.sec_per_image * MARGIN

    # ---------------------------------------------------------------- request side
    def announce(self, n: int = 1) -> None:
        """``n`` more admitted requests will queue images soon (-``n``: they queued theirs, or never
        will). Once told, a batch starts without waiting ``max_wait`` when the queue is empty and
        no announced request is still on its way."""
        self.announced = max(0, (self.announced or 0) + n)

    async def score(self, images: List[bytes], deadline: Optional[float] = None) -> List[Scored]:
        """Scores of ``images`` (encoded bytes) in order; cancelling abandons those not yet batched.

        ``deadline`` (a ``time.perf_counter()`` time): an image that recent batches say cannot
        be scored by then is not encoded at all, and :class:`Overdue` is raised."""
        return await self.results(self.enqueue(images, deadline))

    def enqueue(self, images: List[bytes], deadline: Optional[float] = None) -> List[_Item]:
        """Queue ``images`` now (their decoding starts on the pool); :meth:`results` awaits them."""
        if self.thread is None:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        if self.pool is not None:  # decoding starts now (on the pool, while earlier batches encode)
            images = [self._decode(bytes(data)) for data in images]
        items = [_Item(data, loop.create_future(), loop, deadline) for data in images]
        for item in items:
            self.queue.put(item)
        return items

    def _decode(self, data: bytes) -> Any:
        """A thumbnail decoded now, or the pool's future of a larger (or unreadable) image."""
        if self.inline_pixels:
            pixels = header_pixels(data)
            if pixels is not None and pixels <= self.inline_pixels:
                return self.prepare(data)
        return self.pool.submit(self.prepare, data)

    @staticmethod
    async def results(items: List[_Item]) -> List[Scored]:
        """The scores of queued ``items`` in order; cancelling abandons those not yet batched."""
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:
                item.abandoned = True
                item.future.cancel()
                if isinstance(item.data, concurrent.futures.Future):
                    item.data.cancel()  # not decoded yet: never will be
            raise

    # ---------------------------------------------------------------- worker side
    def _collect(self) -> Optional[List[_Item]]:
        """The next batch: deferred images first, then the queue, for at most ``max_wait``."""
        batch = [self.carry.popleft() for _ in range(min(len(self.carry), self.max_batch))]
        if not batch:
            first = self.queue.get()
            if first is None:
                return None
            batch = [first]
        until = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get_nowait() if self.announced == 0 else \
                    self.queue.get(timeout=max(0.0, until - time.perf_counter()))
            except queue.Empty:  # nothing queued, and no admitted request is on its way
                break
            if item is None:  # stop after this batch
                self.queue.put(None)
                break
            batch.append(item)
        return batch

    def _triage(self, batch: List[_Item]) -> List[_Item]:
        """Drop abandoned images, fail those that cannot meet their deadline even alone, and defer
        those that would make the batch finish after an earlier image's deadline."""
        now, kept, deferred = time.perf_counter(), [], []
        spi = None if self.sec_per_image is None else self.sec_per_image * MARGIN
        for item in batch:
            if item.abandoned:
                continue
            if spi is None or item.deadline is None:
                kept.append(item)
            elif now + spi > item.deadline:
                item.loop.call_soon_threadsafe(_settle, item.future, Overdue(spi * (len(kept) + self.depth)))
            elif kept and now + spi * (len(kept) + 1) > min(i.deadline or math.inf for i in kept + [item]):
                deferred.append(item)
            else:
                kept.append(item)
        self.carry.extendleft(reversed(deferred))
        return kept

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            batch = self._triage(batch)
            if batch:
                self.running = len(batch)
                self._score_batch(batch)
                self.running = 0

    def _score_batch(self, batch: List[_Item]) -> None:
        start = time.perf_counter()
        try:
            inputs = [_prepared(item.data) for item in batch]
            out = self.score_fn(inputs)
            records = out.to_dict("records") if hasattr(out, "to_dict") else out
            results: List[Any] = [clean_row({c: r.get(c) for c in SCORE_COLUMNS}) for r in records]
        except Exception as exc:  # a bug, not a bad image (those come back as rows): every waiter hears of it
            logger.exception("scoring a batch of %d images failed", len(batch))
            results = [exc] * len(batch)
        seconds = time.perf_counter() - start
        spi = seconds / len(batch)
        self.sec_per_image = spi if self.sec_per_image is None else 0.7 * self.sec_per_image + 0.3 * spi
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
        by_loop: Dict[asyncio.AbstractEventLoop, List[Tuple[asyncio.Future, Any]]] = {}
        for item, res in zip(batch, results):
            value = res if isinstance(res, BaseException) else Scored(
                row=res, queue_ms=(start - item.enqueued) * 1000.0, batch_ms=seconds * 1000.0,
                batch_size=len(batch))
            by_loop.setdefault(item.loop, []).append((item.future, value))
        for loop, pairs in by_loop.items():  # one wake-up of each event loop per batch, not per image
            loop.call_soon_threadsafe(_settle_all, pairs)
