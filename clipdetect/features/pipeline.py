"""The streaming engine: reader → decoder → encoder → writer, each a small replaceable stage.

* **reader** — :func:`read_batches` / :func:`plan_tasks`: source samples in order, from a
  position (a resumed run starts where its cache ends), cut into decode tasks, each with the
  captions to encode along with its images (:func:`plan_captions`).
* **decoder** — :class:`Decoder`: worker processes decode and run the PIL stage of the
  preprocessing (:class:`~clipdetect.data.imaging.SplitPreprocess`), returning compact
  uint8 HWC arrays in task order; a bad image becomes an ``("err", reason, detail)`` item.
* **encoder** — :class:`~clipdetect.features.encoder.ImageEncoder`: uint8 batch → device →
  float → normalise → model → L2-normalised embeddings (overlapped on CUDA);
  :func:`encode_captions` embeds each unique caption once.
* **writer** — the caller's: the cache's ``ShardBuilder``/``CacheWriter``
  (:mod:`~clipdetect.features.runner`), a CSV of scores.

:func:`run` chains decoder and encoder over any iterable of ``(payload, refs)`` tasks and
yields ``(payload, decoded, embeddings)`` in task order, so extraction, prediction and the
scoring loops share one loop.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from clipdetect.core.inputs import MAX_IMAGE_BYTES, READ_TIMEOUT
from clipdetect.data.imaging import MAX_ASPECT, MAX_PIXELS, BadImage, SplitPreprocess, decode_image
from clipdetect.data.sources import Sample, Source
from clipdetect.data.views import ORIG, ViewRef, apply_view
from clipdetect.features.workers import ordered_map

#: --fast-decode choices: exact decoding, or PIL's reduced-DCT JPEG decode (changes pixels)
FAST_DECODE = ("none", "draft")


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


def default_batch_size(device: str) -> int:
    """Images per forward pass: enough to fill a GPU, small enough for a CPU's caches."""
    return 256 if str(device).startswith("cuda") else 64


# ---------------------------------------------------------------- reader
def read_batches(source: Source, batch_size: int, *, start: int = 0, limit: Optional[int] = None
                 ) -> Iterator[List[Sample]]:
    """Consecutive lists of ``batch_size`` samples from position ``start`` (up to ``limit`` in all)."""
    for task in plan_tasks(source.iterate(start), start, None if limit is None else start + limit, batch_size,
                           batch_size):
        yield task.samples


@dataclass
class Task:
    shard_start: int
    shard_stop: int
    samples: List[Sample]
    last: bool  # last task of its shard
    captions: List[str] = field(default_factory=list)  # to encode with this task's images

    def without_images(self) -> "Task":
        """The same task with its samples' images dropped (what goes back from a decode worker)."""
        return replace(self, samples=[replace(s, image="") for s in self.samples])


def plan_tasks(samples: Iterator[Sample], start: int, end: Optional[int], shard_size: int,
               batch_size: int) -> Iterator[Task]:
    """Cut the source into shards (fixed source positions) and shards into decode tasks."""
    pos, it = start, iter(samples)
    while end is None or pos < end:
        shard = list(itertools.islice(it, shard_size if end is None else min(shard_size, end - pos)))
        if not shard:
            return
        stop = pos + len(shard)
        chunks = [shard[i:i + batch_size] for i in range(0, len(shard), batch_size)]
        for j, (chunk, captions) in enumerate(zip(chunks, plan_captions(chunks))):
            yield Task(pos, stop, chunk, last=j == len(chunks) - 1, captions=captions)
        pos = stop


def plan_captions(chunks: List[List[Sample]]) -> List[List[str]]:
    """The captions to encode with each task of one shard: every caption of the shard once, with
    the first task that holds it, and "" (what an item without a caption stores) likewise, in a
    shard that has captions at all. Planned from the samples alone, so that every engine encodes
    the same captions in the same batches, wherever the tasks are decoded."""
    if all(s.caption is None for chunk in chunks for s in chunk):
        return [[] for _ in chunks]
    seen: set = set()
    plan = []
    for chunk in chunks:
        plan.append([c for c in dict.fromkeys(s.caption or "" for s in chunk) if c not in seen])
        seen.update(plan[-1])
    return plan


def view_items(samples: List[Sample], views: List[str]) -> List[Tuple[Sample, str]]:
    """(sample, view) for every view of every sample, in that order: one cache row each."""
    return [(s, v) for s in samples for v in views]


def view_refs(samples: List[Sample], views: Sequence[str] = (ORIG,)) -> List[Any]:
    """What the decoder gets for ``samples``: their images, or one :class:`ViewRef` per view."""
    if list(views) == [ORIG]:
        return [s.image for s in samples]
    return [ViewRef(s.image, v, s.key) for s, v in view_items(samples, list(views))]


# ---------------------------------------------------------------- decoder (worker side)
_WORKER: Dict[str, Any] = {}


def init_decode_worker(decoder: "Decoder") -> None:
    _WORKER["decoder"] = decoder


def decode_task(item):
    return _WORKER["decoder"].decode(item[1])


def decode_refs(refs: List[Any], pre: SplitPreprocess, max_pixels: Optional[int] = None,
                max_aspect: Optional[float] = MAX_ASPECT, draft: Optional[int] = None, *,
                max_bytes: int = MAX_IMAGE_BYTES, read_timeout: Optional[float] = READ_TIMEOUT) -> List[Tuple]:
    """Decode and PIL-preprocess a batch: each item → ("ok", uint8 array, info) or ("err", reason, detail).
    A :class:`~clipdetect.data.views.ViewRef` item is decoded, then turned into its view.

    ``draft``: let JPEG decoding reduce the image (DCT scaling) down to no less than
    ``draft`` pixels a side — faster on large photos, slightly different pixels. A file over
    ``max_bytes``, not read within ``read_timeout`` s or not a regular file is an "err" item."""
    max_pixels = max_pixels or MAX_PIXELS
    out = []
    for ref in refs:
        try:
            view = ref if isinstance(ref, ViewRef) else None
            img, info = decode_image(view.image if view else ref, max_pixels=max_pixels, max_aspect=max_aspect,
                                     draft=draft, max_bytes=max_bytes, read_timeout=read_timeout)
            if view is not None:
                img = apply_view(img, view.view, view.key)
            out.append(("ok", pre.worker(img), info))
        except BadImage as exc:
            out.append(("err", exc.reason, exc.detail))
        except Exception as exc:  # a decoder bug must not stop a long run
            out.append(("err", "decode_failed", f"{type(exc).__name__}: {exc}"))
    return out


def input_size(pre: SplitPreprocess) -> Optional[int]:
    """The model's input side, from the PIL stage (Resize / CenterCrop sizes); None if unknown."""
    sizes = []
    for t in pre.pil_stage or []:
        size = getattr(t, "size", None)
        if isinstance(size, int):
            sizes.append(size)
        elif isinstance(size, (tuple, list)) and size and all(isinstance(s, int) for s in size):
            sizes.append(max(size))
    return max(sizes) if sizes else None


class Decoder:
    """Decode stage: ``(payload, refs)`` tasks → ``(payload, decoded)`` in order.

    ``workers`` processes (0: in this process) with at most ``2 * workers + 2`` tasks in
    flight. ``fast_decode="draft"`` decodes large JPEGs at a reduced DCT scale, keeping at
    least twice the model's input side (opt-in: pixels differ from the exact path).
    ``max_bytes`` / ``read_timeout``: the input-file limits (:mod:`clipdetect.core.inputs`)."""

    def __init__(self, pre: SplitPreprocess, *, workers: int = 0, max_pixels: int = MAX_PIXELS,
                 max_aspect: Optional[float] = MAX_ASPECT, fast_decode: str = "none",
                 max_bytes: int = MAX_IMAGE_BYTES, read_timeout: Optional[float] = READ_TIMEOUT):
        if fast_decode not in FAST_DECODE:
            raise ValueError(f"fast_decode must be one of {FAST_DECODE}, got {fast_decode!r}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0 decodes in the main process), got {workers}")
        self.pre, self.workers, self.max_pixels, self.max_aspect = pre, workers, max_pixels, max_aspect
        self.max_bytes, self.read_timeout = max_bytes, read_timeout
        size = input_size(pre) if fast_decode == "draft" else None
        self.draft = 2 * size if size else None

    def decode(self, refs: List[Any]) -> List[Tuple]:
        """One batch, in this process (:func:`decode_refs` with this decoder's settings)."""
        return decode_refs(refs, self.pre, self.max_pixels, self.max_aspect, self.draft, max_bytes=self.max_bytes,
                           read_timeout=self.read_timeout)

    def __call__(self, tasks: Iterable[Tuple[Any, Sequence[Any]]]) -> Iterator[Tuple[Any, List[Tuple]]]:
        results = ordered_map(decode_task, tasks, workers=self.workers, window=2 * self.workers + 2,
                              initializer=init_decode_worker, initargs=(self,))
        with contextlib.closing(results):  # closing this generator stops the decode workers
            for (payload, _), decoded in results:
                yield payload, decoded


# ---------------------------------------------------------------- chaining
def ok_items(payload: Any, decoded: List[Tuple]) -> List[int]:
    """Default selection of what to encode: every image that decoded."""
    return [i for i, d in enumerate(decoded) if d[0] == "ok"]


def run(tasks: Iterable[Tuple[Any, Sequence[Any]]], decoder: Decoder, encoder,
        select: Callable[[Any, List[Tuple]], List[int]] = ok_items,
        texts: Optional[Callable[[Any, List[Tuple]], Sequence[str]]] = None) -> Iterator[Tuple]:
    """Decode then encode ``(payload, refs)`` tasks; yields ``(payload, decoded, embeddings)`` in
    order, where the embeddings are those of ``select(payload, decoded)`` (by default the
    images that decoded), in that order. The encoder runs ahead (see ``ImageEncoder.stream``).

    ``texts``: a function giving the captions to encode with each task's images (e.g. those
    not seen before); then each item is ``(payload, decoded, embeddings, captions)`` with
    ``captions`` a dict caption → embedding, encoded on the device behind the images."""
    decoded_stream = decoder(tasks)

    def pixels():  # no captions (None): the encoder yields (payload, embeddings) items
        for payload, decoded in decoded_stream:
            arrays = [decoded[i][1] for i in select(payload, decoded)]
            wanted = None if texts is None else list(dict.fromkeys(texts(payload, decoded)))
            yield (payload, decoded, wanted), arrays, wanted

    pix = pixels()
    stream = encoder.stream(pix)
    try:
        for (payload, decoded, wanted), emb, *txt in stream:
            captions = () if wanted is None else (dict(zip(wanted, txt[0])),)
            yield (payload, decoded, emb, *captions)
    finally:  # every stage, innermost last: the decode workers stop now, not when garbage is collected
        stream.close()
        pix.close()
        decoded_stream.close()


def encode_captions(backbone, captions: Sequence[Optional[str]], *, batch_size: int = 256) -> np.ndarray:
    """Caption embeddings [N, D] with each unique caption encoded once (None → "")."""
    captions = [c or "" for c in captions]
    unique = list(dict.fromkeys(captions))
    table: Dict[str, np.ndarray] = {}
    for i in range(0, len(unique), batch_size):
        chunk = unique[i:i + batch_size]
        table.update(zip(chunk, backbone.encode_texts(chunk)))
    return np.stack([table[c] for c in captions]) if captions else np.zeros((0, backbone.embed_dim), np.float32)
