"""The extraction runner, the one owner of a cache run: reader → mapper → writer → runner.

* **reader** — :func:`~clipdetect.features.pipeline.plan_tasks`: shards of ``shard_size``
  source positions from the run's position, decode tasks of ``batch_size`` samples, each with
  the captions it encodes;
* **mapper** — decode → encode, one :class:`~clipdetect.features.shards.TaskResult` per task:
  an engine's whole job, where the work runs its only decision (:mod:`.extract`: local
  processes; :mod:`.extract_ray`: a Ray cluster);
* **writer** — :class:`~clipdetect.features.shards.ShardBuilder` assembles each shard,
  :class:`~clipdetect.features.cache_writer.CacheWriter` writes it atomically;
* **runner** — :func:`run_extraction`: lock, run id, resume and end positions, shard writes,
  error tally, summary and finish.

Shards, batches and caption batches depend only on the source order and the config, so a run
killed and re-run, with either engine, gives the same cache, bit for bit, as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from clipdetect.core.inputs import MAX_IMAGE_BYTES, READ_TIMEOUT, count_reasons
from clipdetect.core.progress import progress_bar
from clipdetect.data.imaging import MAX_ASPECT, MAX_PIXELS, SplitPreprocess
from clipdetect.data.sources import Source
from clipdetect.data.views import ORIG, parse_views
from clipdetect.features.backbones import Backbone, BackboneError
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.layers import layer_layout
from clipdetect.features.manifest import layers_info
from clipdetect.features.pipeline import FAST_DECODE, Decoder, default_batch_size, default_workers
from clipdetect.features.shards import ShardBuilder, ShardResult, TaskResult

logger = logging.getLogger(__name__)

#: an engine: ``(start, end)`` → the results of the tasks planned from source position ``start``
#: (to ``end``, or the source's end), in task order
Engine = Callable[[int, Optional[int]], Iterator[TaskResult]]


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
    text_batch_size: int = 256  # recorded with the run; captions are encoded with their task's images
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
        if self.fast_decode not in FAST_DECODE:
            raise ValueError(f"fast_decode must be one of {FAST_DECODE}, got {self.fast_decode!r}")

    def decoder(self, pre: SplitPreprocess, workers: int = 0) -> Decoder:
        """The decode stage with this config's limits, on ``workers`` processes (0: in this one)."""
        return Decoder(pre, workers=workers, max_pixels=self.max_pixels, max_aspect=self.max_aspect,
                       fast_decode=self.fast_decode, max_bytes=self.max_bytes, read_timeout=self.read_timeout)


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

    def record(self) -> Dict[str, Any]:
        """What the manifest keeps of a run's summary."""
        return {k: v for k, v in asdict(self).items() if k != "out"}


def run_id_for(source: Source, config: ExtractConfig) -> str:
    ident = {"source": source.describe(), "shard_size": config.shard_size, "text": config.text}
    if config.layers or config.views != [ORIG]:  # the identities of runs before these options stay as they were
        ident.update(layers=config.layers, views=config.views)
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_request(source: Source, config: ExtractConfig) -> None:
    """Refuse a bad config, and a source that holds no items at all (e.g. empty real/ and fake/
    folders), before any backbone is built."""
    config.validate()
    if source.size() == 0:
        raise ValueError(f"source {source.describe()} holds no images; check the path, the folder layout "
                         "(real/ and fake/ subfolders, or a manifest) and the file extensions")


def with_text(config: ExtractConfig, backbone: Backbone) -> bool:
    """Whether captions are encoded (a shard stores them when one of its rows has a caption)."""
    return config.text != "no" and backbone.has_text


def run_extraction(source: Source, config: ExtractConfig, backbone: Backbone, engine: Engine, *,
                   progress: bool = True, on_shard: Optional[Callable[[str], None]] = None,
                   label: str = "") -> ExtractSummary:
    """Extract ``source`` into the cache at ``config.out`` with ``engine``; resumes an interrupted
    run (of either engine). ``backbone``: this process's copy (identity, dimensions, text tower);
    ``on_shard(name)`` runs after each shard is written; ``label`` names the engine in the log."""
    if config.text == "yes" and not backbone.has_text:
        raise BackboneError(f"backbone {config.backbone!r} has no text tower, so captions cannot be embedded; "
                            "use --text no (image embeddings only) or a full CLIP checkpoint")
    layout = layer_layout(backbone) if config.layers else None
    with CacheWriter(config.out, backbone={**backbone.identity, "spec": config.backbone}, dtype=config.dtype,
                     lock_timeout=config.lock_timeout, layers=layers_info(*layout) if layout else None) as writer:
        summary, end = start_run(writer, source, config, backbone)
        if summary.complete:
            return summary
        builder = ShardBuilder(backbone.embed_dim, views=config.views, with_text=with_text(config, backbone),
                               layers=layout)
        t0 = time.perf_counter()
        with progress_bar(total=None if end is None else end - summary.resumed_from, unit="img",
                          desc="extract", enabled=progress, smoothing=0.1, dynamic_ncols=True) as bar, \
                contextlib.closing(engine(summary.resumed_from, end)) as results:
            for result in results:
                builder.add(result)
                summary.seen += len(result.task.samples)
                bar.update(len(result.task.samples))
                if result.task.last:
                    write_shard(writer, builder.build(), summary, on_shard)
                    builder.reset()
        summary.seconds = time.perf_counter() - t0
        finish(writer, summary, config, source.size())
    if summary.seen == 0 and summary.resumed_from == 0:
        logger.warning("source %s yielded no images: the cache %s is empty", source.describe(), config.out)
    logger.info("extracted %d images (%d errors) at %.1f img/s into %s%s", summary.embedded,
                sum(summary.errors.values()), summary.images_per_second, config.out, label)
    return summary


def start_run(writer: CacheWriter, source: Source, config: ExtractConfig, backbone: Backbone
              ) -> Tuple[ExtractSummary, Optional[int]]:
    """The run's summary so far (``complete`` when there is nothing to do) and its end position
    (None: the source's end, its size unknown)."""
    rid = run_id_for(source, config)
    done = repeated_run(writer, rid, source, config, backbone)
    if done is not None:
        return ExtractSummary(out=config.out, run=done, complete=True), None
    run = writer.begin_run(rid, {"source": source.describe(), "config": asdict(config)})
    summary = ExtractSummary(out=config.out, run=rid, resumed_from=run["position"])
    size = source.size()
    end = min((x for x in (size, config.limit) if x is not None), default=None)
    if run["complete"] or (end is not None and run["position"] >= end):
        logger.info("run %s in %s is already complete (%d source positions); nothing to do",
                    rid, config.out, run["position"])
        summary.complete = True
        if not run["complete"] and size is not None and run["position"] >= size:  # killed before its finish
            writer.finish_run(rid, summary.record(), complete=True)
    return summary, end


def repeated_run(writer: CacheWriter, rid: str, source: Source, config: ExtractConfig,
                 backbone: Backbone) -> Optional[str]:
    """The id of a complete earlier run of this source under other options, which makes this run a
    no-op (a partial one, or one without the captions this run wants, is refused: see
    :meth:`CacheWriter.earlier_run`); None when this run is to go ahead."""
    if rid in writer.manifest["runs"]:
        return None

    def wants_text() -> bool:
        first = next(iter(source.iterate(0)), None)
        return config.text == "yes" or (config.text == "auto" and backbone.has_text
                                        and first is not None and first.caption is not None)
    done = writer.earlier_run(rid, source.describe(), wants_text=wants_text)
    if done is not None:
        logger.info("cache %s already holds every image of this source (run %s); nothing to do: other "
                    "--shard-size/--text values need a new --out", config.out, done)
    return done


def write_shard(writer: CacheWriter, shard: ShardResult, summary: ExtractSummary,
                on_shard: Optional[Callable[[str], None]]) -> None:
    if not shard.seen:
        return  # the source ended before its announced size: nothing to record
    name = writer.write_shard(summary.run, start=shard.start, stop=shard.stop, img=shard.img, txt=shard.txt,
                              meta=shard.meta, errors=shard.errors, layers=shard.layers)
    summary.embedded += len(shard.img)
    summary.shards_written += 1
    count_reasons(summary.errors, shard.errors["reason"])
    if on_shard is not None:
        on_shard(name)


def finish(writer: CacheWriter, summary: ExtractSummary, config: ExtractConfig, size: Optional[int]) -> None:
    """Record the run's summary: complete unless it stopped at ``config.limit`` before the source's end."""
    position = writer.manifest["runs"][summary.run]["position"]
    summary.complete = config.limit is None or position < config.limit or (size is not None and position >= size)
    writer.finish_run(summary.run, summary.record(), complete=summary.complete)
