"""The dynamic batcher: shared batches, and no encoding for images that would miss their deadline."""
from __future__ import annotations

import asyncio
import time

import pandas as pd
import pytest

from clipdetect.serve.batcher import Batcher, Overdue
from clipdetect.serve.config import ServeConfig


def fake_scores(per_image: float, seen: list):
    """A score function taking ``per_image`` seconds per image and recording what it was given."""
    def score(images):
        seen.append(list(images))
        time.sleep(per_image * len(images))
        return pd.DataFrame({"logit": [float(len(b)) for b in images], "probability": 0.5, "label": 0,
                             "error": None})
    return score


def test_concurrent_images_share_a_batch_in_order():
    seen: list = []
    batcher = Batcher(None, None, max_batch=8, max_wait_ms=200, score_fn=fake_scores(0.0, seen)).start()

    async def main():
        return await asyncio.gather(*(batcher.score([b"x" * n]) for n in (1, 2, 3)), batcher.score([b"ab", b"abcd"]))
    try:
        out = asyncio.run(main())
    finally:
        batcher.stop()
    assert [[s.row["logit"] for s in r] for r in out] == [[1.0], [2.0], [3.0], [2.0, 4.0]]
    assert len(seen) == 1 and out[0][0].batch_size == 5  # one encoder call for all four requests


def test_a_batch_waits_only_for_requests_announced_as_on_their_way():
    seen: list = []
    batcher = Batcher(None, None, max_batch=8, max_wait_ms=3000, score_fn=fake_scores(0.0, seen)).start()

    async def request(data: bytes, delay: float):
        await asyncio.sleep(delay)
        items = batcher.enqueue([data])
        batcher.announce(-1)  # queued: no longer on its way
        return await batcher.results(items)

    async def main():
        batcher.announce(2)  # two admitted requests, the second one slower to arrive
        t0 = time.perf_counter()
        both = await asyncio.gather(request(b"a", 0.0), request(b"bb", 0.3))
        t1 = time.perf_counter()
        batcher.announce(1)
        alone = await request(b"ccc", 0.0)
        return both, alone, t1 - t0, time.perf_counter() - t1
    try:
        both, alone, s_both, s_alone = asyncio.run(main())
    finally:
        batcher.stop()
    assert [len(b) for b in seen] == [2, 1] and both[0][0].batch_size == 2  # the batch waited for the second
    assert alone[0].row["logit"] == 3.0
    assert s_both < 2.0 and s_alone < 2.0  # neither waited out max_wait (3 s): nobody else was on the way


def test_images_that_would_miss_their_deadline_are_not_encoded():
    seen: list = []
    batcher = Batcher(None, None, max_batch=16, max_wait_ms=100, score_fn=fake_scores(0.3, seen)).start()

    async def main():
        await batcher.score([b"prime"])  # one batch teaches the batcher ~0.3 s per image
        deadline = time.perf_counter() + 1.0
        return await asyncio.gather(*(batcher.score([b"img%d" % i], deadline) for i in range(6)),
                                    return_exceptions=True)
    try:
        out = asyncio.run(main())
        wait = batcher.estimated_wait(1)
    finally:
        batcher.stop()
    done = [r for r in out if not isinstance(r, Exception)]
    overdue = [r for r in out if isinstance(r, Overdue)]
    assert len(done) + len(overdue) == 6 and 1 <= len(done) <= 3 and overdue
    encoded = sum(len(batch) for batch in seen[1:])
    assert encoded == len(done)  # nothing was computed for an answer nobody would read
    assert wait == pytest.approx(0.3 * 1.25, rel=0.5)


def test_admission_refuses_when_the_queue_needs_more_than_the_timeout(tiny_backbone):
    from helpers.training import tiny_detector
    from clipdetect.serve.app import Service

    service = Service(tiny_detector(tiny_backbone), tiny_backbone, ServeConfig(request_timeout=5, retry_after=1))
    assert service.admit() is None and service.inflight == 1 and service.batcher.announced == 1
    service.release(announced=True)
    assert service.inflight == 0 and service.batcher.announced == 0
    service.batcher.sec_per_image = 2.0  # learnt from earlier batches
    service.batcher.running = 4  # 4 images being scored: 10 s for one more
    refused = service.admit()
    assert refused.status == 503 and refused.limit == "request_timeout" and service.inflight == 0
    assert int(refused.headers["Retry-After"]) == 8  # 5 images x 2 s x 1.25 margin - 5 s


def test_thumbnails_are_decoded_on_the_request_thread_and_score_as_pooled_images(tiny_backbone):
    """An image of at most ``inline_pixels`` pixels (by its header) is decoded as it is queued,
    a larger or unreadable one on the pool; either way the scores are the pooled path's."""
    import concurrent.futures
    import io

    from PIL import Image

    from helpers.training import tiny_detector

    def jpeg(side: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (side % 256, 90, 200)).save(buf, "JPEG")
        return buf.getvalue()

    det = tiny_detector(tiny_backbone)
    images = [jpeg(32), jpeg(300), b"not an image"]

    def run(inline_pixels: int):
        batcher = Batcher(det, tiny_backbone, max_batch=8, max_wait_ms=50, inline_pixels=inline_pixels).start()

        async def main():
            items = batcher.enqueue(images)
            kinds = [isinstance(i.data, concurrent.futures.Future) for i in items]
            return kinds, await batcher.results(items)
        try:
            return asyncio.run(main())
        finally:
            batcher.stop()

    pooled_kinds, pooled = run(0)
    inline_kinds, inline = run(64 * 64)
    assert pooled_kinds == [True, True, True] and inline_kinds == [False, True, True]
    assert [s.row for s in inline] == [s.row for s in pooled]
    assert inline[0].row["probability"] is not None and inline[2].row["error"]
