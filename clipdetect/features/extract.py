"""Extraction: source → decode (worker processes) → encode (batched) → cache shards.

Work is cut into shards of ``shard_size`` consecutive source positions, and each shard
into decode tasks of ``batch_size`` samples. Bad images are dropped from their batch and
written to the shard's error ledger. Shard boundaries, batch composition and caption
batches depend only on the source order and the config, so a run that is killed and
re-run produces the same cache, bit for bit, as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd

from clipdetect.features.backbones import Backbone, BackboneError, create_backbone
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.manifest import ERROR_COLUMNS, META_COLUMNS, layers_info
from clipdetect.features.encoder import ImageEncoder, encoder_for
from clipdetect.features.pipeline import (Decoder, Task, default_batch_size,
                                          default_workers, encode_captions, plan_tasks)
from clipdetect.features import pipeline
from clipdetect.core.inputs import MAX_IMAGE_BYTES, READ_TIMEOUT
from clipdetect.data.imaging import MAX_ASPECT, MAX_PIXELS, SplitPreprocess
from clipdetect.data.sources import Sample, Source
from clipdetect.data.views import ORIG, ViewRef, parse_views

__all__ = ["ExtractConfig", "ExtractSummary", "extract",
           "ShardBuilder", "CaptionPlanner", "run_id_for", "check_not_empty"]

logger = logging.getLogger(__name__)


@dataclass
class ExtractConfig:
    backbone: str
    out: str
    batch_size: Optional[int] = None  # None: default_batch_size(device), 256 on CUDA, 64 on CPU
    workers: int = field(default_factory=default_workers)
    device: str = "cpu"
    precision: str = "fp32"
    runtime: str = "torch"  # torch, onnx or openvino (the image tower's; see features.runtime)
    limit: Optional[int] = None
    shard_size: int = 4096
    dtype: str = "float16"
    text: str = "auto"  # auto: encode captions when present and the backbone has a text tower
    text_batch_size: int = 256
    max_pixels: int = MAX_PIXELS
    max_aspect: Optional[float] = MAX_ASPECT  # None: thin images are centre-cropped, not refused
    max_bytes: int = MAX_IMAGE_BYTES  # an image file larger than this is refused (too_large)
    read_timeout: Optional[float] = READ_TIMEOUT  # seconds to read one image file (read_timeout)
    seed: int = 0
    lock_timeout: float = 0.0  # seconds to wait for another writer of the same cache
    fast_decode: str = "none"  # "draft": reduced-DCT JPEG decoding of large images (changes pixels)
    layers: bool = False  # also store the per-block CLS tokens of the image tower (features/layers.py)
    views: Optional[List[str]] = None  # None: ["orig"]; else one row per image and view (data/views.py)

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = default_batch_size(self.device)
        self.views = parse_views(self.views)

    def validate(self) -> None:
        for name in ("batch_size", "shard_size", "text_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 decodes in the main process), got {self.workers}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.text not in ("auto", "yes", "no"):
            raise ValueError(f"text must be 'auto', 'yes' or 'no', got {self.text!r}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")
        if self.max_pixels < 1 or (self.max_aspect is not None and self.max_aspect < 1):
            raise ValueError(f"max_pixels must be >= 1 and max_aspect >= 1 (or unset), got "
                             f"{self.max_pixels} and {self.max_aspect}")
        from clipdetect.features.runtime import check_runtime

        check_runtime(self.runtime, self.precision, self.device)
        if self.max_bytes < 1 or (self.read_timeout is not None and not self.read_timeout > 0):
            raise ValueError(f"max_bytes must be >= 1 and read_timeout > 0 (or unset), got {self.max_bytes} and "
                             f"{self.read_timeout}")
        if self.fast_decode not in pipeline.FAST_DECODE:
            raise ValueError(f"fast_decode must be one of {pipeline.FAST_DECODE}, got {self.fast_decode!r}")


@dataclass
class ExtractSummary:
    out: str
    run: str
    resumed_from: int = 0
    seen: int = 0
    embedded: int = 0
    errors: Dict[str, int] = field(default_factory=dict)
    shards_written: int = 0
    seconds: float = 0.0
    complete: bool = False

    @property
    def images_per_second(self) -> float:
        return self.seen / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------- shards (main side)
class ShardBuilder:
    """Collects one shard's embeddings, metadata and errors; encodes its captions once each."""

    def __init__(self, backbone: Backbone, pre: SplitPreprocess, *, text: str, text_batch_size: int,
                 encoder: Optional[ImageEncoder] = None, views: Optional[List[str]] = None, layers: bool = False):
        self.backbone, self.pre, self.text, self.text_batch_size = backbone, pre, text, text_batch_size
        self.encoder = encoder or (encoder_for(backbone, pre, layers=True) if layers else None)
        self.views = views or [ORIG]
        self.reset()

    def reset(self) -> None:
        self.emb: List[np.ndarray] = []
        self.layers: List[np.ndarray] = []
        self.meta: List[Dict[str, Any]] = []
        self.errors: List[Dict[str, Any]] = []
        self.text_table: Dict[str, np.ndarray] = {}

    def add(self, samples: List[Sample], decoded: List[Tuple], emb: Optional[np.ndarray] = None,
            captions: Optional[Dict[str, np.ndarray]] = None) -> None:
        """Add one decode task; ``emb``: its decoded images' embeddings when the pipeline made
        them; ``captions``: caption → embedding for captions the pipeline encoded with them."""
        self.text_table.update(captions or {})
        arrays, rows, failed = [], [], set()
        for (s, view), d in zip(view_items(samples, self.views), decoded):
            if d[0] == "ok":
                arrays.append(d[1])
                rows.append({"key": s.key, "label": int(s.label), "generator": s.generator, "split": s.split,
                             "path": s.path, "caption": s.caption, **d[2], "source": s.source,
                             "family": s.family, "group": s.group, "view": view})
            elif id(s) not in failed:  # an image that cannot be decoded fails in every view: one ledger entry
                failed.add(id(s))
                detail = d[2] if view == ORIG else f"view {view}: {d[2]}"
                self.errors.append({"key": s.key, "path": s.path, "reason": d[1], "detail": detail})
        if arrays:
            if emb is None:
                self.encoder = self.encoder or encoder_for(self.backbone, self.pre)
                emb = self.encoder.encode(arrays)
            emb, layers = self.encoder.split(emb) if self.encoder is not None else (emb, None)
            self.emb.append(emb)
            if layers is not None:
                self.layers.append(layers)
            self.meta.extend(rows)

    def captions_wanted(self) -> bool:
        has = any(r["caption"] is not None for r in self.meta)
        if self.text == "no" or not has:
            return False
        if not self.backbone.has_text:
            if self.text == "yes":
                raise BackboneError(f"backbone {self.backbone.spec!r} has no text tower; cannot embed captions")
            return False
        return True

    def encode_captions(self) -> np.ndarray:
        """One caption embedding per row (None → ""): those the pipeline made, the rest encoded now."""
        caps = [r["caption"] or "" for r in self.meta]
        missing = [c for c in dict.fromkeys(caps) if c not in self.text_table]
        if missing:
            self.text_table.update(zip(missing, encode_captions(self.backbone, missing,
                                                                batch_size=self.text_batch_size)))
        if not caps:
            return np.zeros((0, self.backbone.embed_dim), np.float32)
        return np.stack([self.text_table[c] for c in caps]).astype(np.float32, copy=False)

    def build(self) -> Tuple[np.ndarray, Optional[np.ndarray], pd.DataFrame, pd.DataFrame, Optional[np.ndarray]]:
        """(image embeddings, caption embeddings or None, metadata, errors, per-block tokens or None)."""
        d = self.backbone.embed_dim
        img = np.concatenate(self.emb) if self.emb else np.zeros((0, d), dtype=np.float32)
        txt = self.encode_captions() if self.captions_wanted() else None
        meta = pd.DataFrame(self.meta, columns=META_COLUMNS)
        errors = pd.DataFrame(self.errors, columns=ERROR_COLUMNS)
        layers = None
        if self.encoder is not None and self.encoder.layer_layout is not None:
            names, width = self.encoder.layer_layout
            layers = np.concatenate(self.layers) if self.layers else np.zeros((0, len(names), width), np.float32)
        return img, txt, meta, errors, layers


class CaptionPlanner:
    """The captions to encode with each task's images: each unique caption of a shard once,
    with the first task that holds it (the pipeline encodes them behind that task's images).

    Called in task order, before the results come back, so its memory is its own: one shard's
    captions, forgotten when the next shard's first task arrives."""

    def __init__(self, views: Optional[List[str]] = None) -> None:
        self.shard: Optional[int] = None
        self.seen: set = set()
        self.views = views or [ORIG]

    def __call__(self, task: Task, decoded: List[Tuple]) -> List[str]:
        if task.shard_start != self.shard:
            self.shard, self.seen = task.shard_start, set()
        new = []
        for (sample, _), d in zip(view_items(task.samples, self.views), decoded):
            if d[0] == "ok" and sample.caption is not None and sample.caption not in self.seen:
                self.seen.add(sample.caption)
                new.append(sample.caption)
        return new


def view_items(samples: List[Sample], views: List[str]) -> List[Tuple[Sample, str]]:
    """(sample, view) for every view of every sample, in that order: one cache row each."""
    return [(s, v) for s in samples for v in views]


def view_refs(samples: List[Sample], views: List[str]) -> List[Any]:
    """What the decode workers get for ``samples``: their images, or one :class:`ViewRef` per view."""
    if views == [ORIG]:
        return [s.image for s in samples]
    return [ViewRef(s.image, v, s.key) for s, v in view_items(samples, views)]


def run_id_for(source: Source, config: ExtractConfig) -> str:
    ident = {"source": source.describe(), "shard_size": config.shard_size, "text": config.text}
    if config.layers or config.views != [ORIG]:  # the identities of runs before these options stay as they were
        ident.update(layers=config.layers, views=config.views)
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def progress_bar(total: Optional[int], enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="extract", disable=None if enabled else True, smoothing=0.1, dynamic_ncols=True)


def check_not_empty(source: Source, start: int = 0) -> None:
    """Refuse a source that holds no items at all (e.g. empty real/ and fake/ folders)."""
    if start == 0 and source.size() == 0:
        raise ValueError(f"source {source.describe()} holds no images; check the path, the folder layout "
                         "(real/ and fake/ subfolders, or a manifest) and the file extensions")


def extract(source: Source, config: ExtractConfig, *, backbone: Optional[Backbone] = None,
            progress: bool = True) -> ExtractSummary:
    """Extract ``source`` into the cache at ``config.out``; resumes an interrupted run."""
    config.validate()
    check_not_empty(source)
    backbone = backbone or create_backbone(config.backbone, device=config.device, precision=config.precision,
                                           seed=config.seed, runtime=config.runtime)
    if config.text == "yes" and not backbone.has_text:
        raise BackboneError(f"backbone {config.backbone!r} has no text tower, so captions cannot be embedded; "
                            "use --text no (image embeddings only) or a full CLIP checkpoint")
    layers = None
    if config.layers:
        from clipdetect.features.layers import layer_names, layer_width

        layers = layers_info(layer_names(backbone), layer_width(backbone))
    with CacheWriter(config.out, backbone={**backbone.identity, "spec": config.backbone}, dtype=config.dtype,
                     lock_timeout=config.lock_timeout, layers=layers) as writer:
        return _extract_locked(source, config, backbone, writer, progress)


def _extract_locked(source: Source, config: ExtractConfig, backbone: Backbone, writer: CacheWriter,
                    progress: bool) -> ExtractSummary:
    rid = run_id_for(source, config)
    if rid not in writer.manifest["runs"]:
        def wants_text() -> bool:
            first = next(iter(source.iterate(0)), None)
            return config.text == "yes" or (config.text == "auto" and backbone.has_text
                                            and first is not None and first.caption is not None)
        done = writer.earlier_run(rid, source.describe(), wants_text=wants_text)
        if done is not None:
            logger.info("cache %s already holds every image of this source (run %s); nothing to do: other "
                        "--shard-size/--text values need a new --out", config.out, done)
            return ExtractSummary(out=config.out, run=done, complete=True)
    run = writer.begin_run(rid, {"source": source.describe(), "config": asdict(config)})
    summary = ExtractSummary(out=config.out, run=rid, resumed_from=run["position"])
    end = config.limit
    if run["complete"] or (end is not None and run["position"] >= end):
        logger.info("run %s in %s is already complete (%d source positions); nothing to do",
                    rid, config.out, run["position"])
        summary.complete = True
        return summary
    size = source.size()
    total = None if size is None and end is None else min(x for x in (size, end) if x is not None) - run["position"]
    pre = SplitPreprocess(backbone.preprocess)
    encoder = encoder_for(backbone, pre, layers=config.layers)
    builder = ShardBuilder(backbone, pre, text=config.text, text_batch_size=config.text_batch_size, encoder=encoder,
                           views=config.views)
    tasks = plan_tasks(source.iterate(run["position"]), run["position"], end, config.shard_size, config.batch_size)
    decoder = Decoder(pre, workers=config.workers, max_pixels=config.max_pixels, max_aspect=config.max_aspect,
                      fast_decode=config.fast_decode, max_bytes=config.max_bytes, read_timeout=config.read_timeout)
    planner = CaptionPlanner(config.views) if config.text != "no" and backbone.has_text else None
    t0 = time.perf_counter()
    with progress_bar(total, progress) as bar, contextlib.closing(
            pipeline.run(((t, view_refs(t.samples, config.views)) for t in tasks), decoder, encoder,
                         texts=planner)) as stream:
        for task, decoded, emb, *captions in stream:
            builder.add(task.samples, decoded, emb, *captions)
            summary.seen += len(task.samples)
            bar.update(len(task.samples))
            if task.last:
                _flush(writer, rid, builder, task, summary)
    summary.seconds = time.perf_counter() - t0
    position = writer.manifest["runs"][rid]["position"]
    summary.complete = end is None or position < end or (size is not None and position >= size)
    writer.finish_run(rid, {k: v for k, v in asdict(summary).items() if k != "out"}, complete=summary.complete)
    if summary.seen == 0 and run["position"] == 0:
        logger.warning("source %s yielded no images: the cache %s is empty", source.describe(), config.out)
    logger.info("extracted %d images (%d errors) at %.1f img/s into %s", summary.embedded,
                sum(summary.errors.values()), summary.images_per_second, config.out)
    return summary


def _flush(writer: CacheWriter, rid: str, builder: ShardBuilder, task: Task, summary: ExtractSummary) -> None:
    img, txt, meta, errors, layers = builder.build()
    writer.write_shard(rid, start=task.shard_start, stop=task.shard_stop, img=img, txt=txt, meta=meta,
                       errors=errors, layers=layers)
    summary.embedded += len(img)
    summary.shards_written += 1
    for reason in errors["reason"]:
        summary.errors[reason] = summary.errors.get(reason, 0) + 1
    builder.reset()


def check_limit_prefix(source: Source, limit: Optional[int], *, min_share: float = 0.05) -> Optional[str]:
    """A warning (also logged) when the first ``limit`` items of ``source`` are (nearly) one class.

    ``--limit`` takes a prefix; on a source ordered by label (a folder walk: every real, then
    every fake) that prefix is one class. Returns the message, or None when the prefix holds
    at least ``min_share`` of each label.
    """
    if limit is None or limit <= 0:
        return None
    labels = np.array([s.label for s in itertools.islice(source.iterate(0), limit)], dtype=np.int64)
    if labels.size == 0:
        return None
    n_fake = int(labels.sum())
    share = min(n_fake, labels.size - n_fake) / labels.size
    if share >= min_share:
        return None
    msg = (f"the first {labels.size} source items (--limit {limit}) hold {labels.size - n_fake} real and {n_fake} "
           "fake images: the source looks ordered by label, so this prefix is not a sample of it; use "
           "--shuffle-seed S for a random sample and --stratify for equal reals and fakes")
    logger.warning(msg)
    return msg


class SampledSource(Source):
    """``n`` items of ``source`` drawn at random (seeded), or ``n // 2`` of each label with ``stratify``.

    One pass over the source reads the labels (images are not decoded); the chosen items are
    then yielded in source order, so resuming at a position works as for any source.
    """

    kind = "sampled"

    def __init__(self, source: Source, n: Optional[int], *, seed: int = 0, stratify: bool = False):
        self.source, self.n, self.seed, self.stratify = source, n, int(seed), bool(stratify)
        labels = np.array([s.label for s in source.iterate(0)], dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        n = labels.size if n is None else min(int(n), labels.size)
        if stratify:
            per = {c: np.flatnonzero(labels == c) for c in (0, 1)}
            short = {c: idx.size for c, idx in per.items() if idx.size < n // 2}
            if short:
                raise ValueError(f"--stratify needs {n // 2} items of each label, but the source holds "
                                 f"{(labels == 0).sum()} real and {(labels == 1).sum()} fake; lower --limit")
            chosen = np.concatenate([rng.choice(per[c], n // 2, replace=False) for c in (0, 1)])
        else:
            chosen = rng.choice(labels.size, n, replace=False)
        self.positions = np.sort(chosen)
        logger.info("sampled %d of %d source items (%d fake), seed %d%s", self.positions.size, labels.size,
                    int(labels[self.positions].sum()), self.seed, ", stratified" if stratify else "")

    def size(self) -> int:
        return int(self.positions.size)

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        wanted = set(self.positions[start:].tolist())
        for pos, sample in enumerate(self.source.iterate(0)):
            if pos in wanted:
                yield sample

    def describe(self) -> Dict[str, Any]:
        return {**self.source.describe(), "sample": {"n": self.n, "seed": self.seed, "stratify": self.stratify}}
