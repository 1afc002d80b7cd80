"""The Ray Data extraction engine: the same cache as :func:`clipdetect.features.extract.extract`,
with decoding and encoding spread over a Ray cluster.

Pipeline (one Ray Data dataset; rows are shards, then decode tasks)::

    from_items(shard descriptors)                       driver: positions only, no data
      or one streaming read task (sources of unknown size, see :mod:`.ray_read`)
      → map_batches(Decode, CPU actor pool)             read the shard from the source,
                                                        decode + PIL-preprocess each task
      → map_batches(_Encode, GPU or CPU actor pool)     image embeddings of each task and
                                                        its captions (each unique once)
      → driver: shards assembled in order → CacheWriter.write_shard

Shards cover the same source positions as the local engine (``shard_size`` from the
run's position), tasks hold the same ``batch_size`` samples, the run id is
:func:`~clipdetect.features.extract.run_id_for`, and the driver writes through the same
:class:`~clipdetect.features.cache_writer.CacheWriter`: a run killed at any moment resumes with either
engine, and the cache has the same keys in the same order as a local run. Image
embeddings are computed on the same batches as locally; captions are deduplicated per
decode task instead of per shard (D3 rows are consecutive, so one caption still serves
the 5 images of a row except when a row straddles two tasks).

A random-access source (``size()`` known) is read by the decode actors themselves, each
its own shards through ``source.iterate(start)``; a streamed one by a single sequential
read task. A source object is pickled to the actors; a D3 source reopens its dataset
there instead (so on a multi-node cluster its parquet files and ``HF_DATASETS_CACHE``
must be on storage every node sees).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from clipdetect.features.backbones import Backbone, BackboneError, create_backbone
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.manifest import ERROR_COLUMNS, META_COLUMNS
from clipdetect.features.extract import (ExtractConfig, ExtractSummary, ShardBuilder, progress_bar, check_not_empty,
                                         run_id_for)
from clipdetect.data.imaging import SplitPreprocess
from clipdetect.features.encoder import encoder_for
from clipdetect.features.pipeline import Decoder
from clipdetect.features.ray_read import Decode, plan_shards, stream_datasource
from clipdetect.data.sources import Sample, Source

logger = logging.getLogger(__name__)


class _Encode:
    """GPU (or CPU) actor holding the backbone: a :class:`ShardBuilder` per task, so the
    embeddings, metadata rows and error rows are made by the local engine's code."""

    def __init__(self, spec: str, device: str, precision: str, seed: int, text: str, text_batch_size: int,
                 threads: int, runtime: str = "torch"):
        import torch

        torch.set_num_threads(threads)  # the CPUs this actor reserved
        self.backbone = create_backbone(spec, device=device, precision=precision, seed=seed, runtime=runtime)
        self.pre = SplitPreprocess(self.backbone.preprocess)
        self.text, self.text_batch_size = text, text_batch_size
        self.with_text = text != "no" and self.backbone.has_text
        self.encoder = encoder_for(self.backbone, self.pre)  # one per actor, not one per task

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = []
        for row in batch.to_dict("records"):
            samples = [Sample(image="", **f) for f in json.loads(row["samples"])]
            arr = np.frombuffer(row["pixels"], dtype=row["dtype"]).reshape(json.loads(row["shape"]))
            arrays = iter(arr)
            decoded = [("ok", next(arrays), d[2]) if d[0] == "ok" else tuple(d)
                       for d in json.loads(row["decoded"])]
            builder = ShardBuilder(self.backbone, self.pre, text=self.text,
                                   text_batch_size=self.text_batch_size, encoder=self.encoder)
            builder.add(samples, decoded)
            img, _, meta, errors, _ = builder.build()
            txt = builder.encode_captions() if self.with_text else None  # also when no caption: "" rows
            out.append({**{k: row[k] for k in ("shard", "task", "start", "stop", "last")},
                        "n": len(samples), "img": np.asarray(img, np.float32).tobytes(),
                        "txt": b"" if txt is None else np.asarray(txt, np.float32).tobytes(),
                        "has_txt": txt is not None, "meta": meta.to_json(orient="records"),
                        "errors": errors.to_json(orient="records")})
        return pd.DataFrame(out)


class _Shard:
    """Driver side: one shard's task results, concatenated as ShardBuilder.build() would."""

    def __init__(self, dim: int, text: str):
        self.dim, self.text = dim, text
        self.emb: List[np.ndarray] = []
        self.txt: List[np.ndarray] = []
        self.meta: List[Dict[str, Any]] = []
        self.errors: List[Dict[str, Any]] = []
        self.has_txt = True

    def add(self, row: Dict[str, Any]) -> int:
        self.meta.extend(json.loads(row["meta"]))
        self.errors.extend(json.loads(row["errors"]))
        self.emb.append(np.frombuffer(row["img"], dtype=np.float32).reshape(-1, self.dim))
        self.has_txt &= bool(row["has_txt"])
        if row["has_txt"]:
            self.txt.append(np.frombuffer(row["txt"], dtype=np.float32).reshape(-1, self.dim))
        return int(row["n"])

    def build(self):
        empty = np.zeros((0, self.dim), np.float32)
        img = np.concatenate(self.emb) if self.emb else empty
        wanted = self.text != "no" and self.has_txt and any(r["caption"] is not None for r in self.meta)
        txt = (np.concatenate(self.txt) if self.txt else empty) if wanted else None
        meta = pd.DataFrame(self.meta, columns=META_COLUMNS)
        return img, txt, meta, pd.DataFrame(self.errors, columns=ERROR_COLUMNS)


def _ray_init(address: Optional[str]) -> bool:
    """Connect to (or start) Ray; returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    return True


def _record(summary: ExtractSummary) -> Dict[str, Any]:
    return {k: v for k, v in asdict(summary).items() if k != "out"}


def extract_ray(source: Source, config: ExtractConfig, *, address: Optional[str] = None,
                progress: bool = True, num_cpus: Optional[int] = None, actor_pool_size: Optional[int] = None,
                encoder_cpus: int = 1, backbone: Optional[Backbone] = None,
                on_shard: Optional[Callable[[str], None]] = None) -> ExtractSummary:
    """Extract ``source`` into ``config.out`` on a Ray cluster (``address``; default: the
    running one, or a new local one). ``num_cpus``: decode actors, 1 CPU each (default: the
    cluster's CPUs the encoders leave, less one for a streaming reader); ``actor_pool_size``:
    encode actors (default: one per GPU when ``config.device`` is cuda, else 1), each
    reserving ``encoder_cpus`` CPUs and running torch on that many threads (on CPU
    encoders, the thread count sets the speed). ``backbone``: the driver's copy (identity,
    preprocessing; built on CPU when omitted). ``on_shard(name)`` runs after each shard is
    written. Resumes an interrupted run of either engine."""
    config.validate()
    if config.layers or config.views != ["orig"]:
        raise ValueError("the ray engine does not store per-block features (--layers) or views (--views) yet; "
                         "use the local engine (--engine local) for those")
    check_not_empty(source)
    size = source.size()  # None: a stream, read in order by one Ray read task
    backbone = backbone or create_backbone(config.backbone, device="cpu", precision="fp32", seed=config.seed)
    if config.text == "yes" and not backbone.has_text:
        raise BackboneError(f"backbone {config.backbone!r} has no text tower, so captions cannot be "
                            "embedded; use --text no (image embeddings only) or a full CLIP checkpoint")
    identity = {**backbone.identity, "spec": config.backbone}
    with CacheWriter(config.out, backbone=identity, dtype=config.dtype,
                     lock_timeout=config.lock_timeout) as writer:
        return _extract_locked(source, config, backbone, writer, size, address, progress, num_cpus,
                               actor_pool_size, encoder_cpus, on_shard)


def _extract_locked(source, config, backbone, writer, size, address, progress, num_cpus, actor_pool_size,
                    encoder_cpus, on_shard) -> ExtractSummary:
    import ray

    rid = run_id_for(source, config)
    run = writer.begin_run(rid, {"source": source.describe(), "config": asdict(config)})
    summary = ExtractSummary(out=config.out, run=rid, resumed_from=run["position"])
    ends = [x for x in (size, config.limit) if x is not None]
    end = min(ends) if ends else None
    if run["complete"] or (end is not None and run["position"] >= end):
        logger.info("run %s in %s is already complete (%d source positions); nothing to do",
                    rid, config.out, run["position"])
        summary.complete = True
        if not run["complete"] and size is not None and run["position"] >= size:  # killed before finish
            writer.finish_run(rid, _record(summary), complete=True)
        return summary
    started = _ray_init(address)
    try:
        ds = _build_dataset(source, config, backbone, run["position"], end, streamed=size is None,
                            decoders=num_cpus, encoders=actor_pool_size, encoder_cpus=encoder_cpus)
        t0 = time.perf_counter()
        _consume(ds, writer, rid, summary, backbone.embed_dim, config.text,
                 None if end is None else end - run["position"], progress, on_shard)
        summary.seconds = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    position = writer.manifest["runs"][rid]["position"]
    summary.complete = (config.limit is None or position < config.limit
                        or (size is not None and position >= size))
    writer.finish_run(rid, _record(summary), complete=summary.complete)
    logger.info("extracted %d images (%d errors) at %.1f img/s into %s (ray)", summary.embedded,
                sum(summary.errors.values()), summary.images_per_second, config.out)
    return summary


def _pool_sizes(config: ExtractConfig, resources: Dict[str, float], streamed: bool, decoders: Optional[int],
                encoders: Optional[int], encoder_cpus: int) -> Tuple[int, int]:
    """(decode actors, encode actors); refuses a request the cluster cannot schedule (it would hang)."""
    gpu = config.device.startswith("cuda")
    if gpu and not resources.get("GPU"):
        raise ValueError(f"device {config.device!r} asks for GPUs but the Ray cluster has none "
                         f"(resources: {resources}); start the workers with GPUs or use --device cpu")
    if encoder_cpus < 1:
        raise ValueError(f"encoder_cpus must be >= 1, got {encoder_cpus}")
    cpus = int(resources.get("CPU", 1))
    encoders = encoders or (max(1, int(resources.get("GPU", 0))) if gpu else 1)
    decoders = decoders or max(1, cpus - encoders * encoder_cpus - int(streamed))
    if decoders + encoders * encoder_cpus > cpus:
        raise ValueError(f"{decoders} decode actors (1 CPU each) and {encoders} encode actors ({encoder_cpus} "
                         f"CPU each) need {decoders + encoders * encoder_cpus} CPUs but the Ray cluster has "
                         f"{cpus}; lower --ray-decoders / --ray-encoders / --ray-encoder-cpus or add nodes")
    return decoders, encoders


def _build_dataset(source: Source, config: ExtractConfig, backbone: Backbone, start: int, end: Optional[int], *,
                   streamed: bool, decoders: Optional[int], encoders: Optional[int], encoder_cpus: int):
    import cloudpickle
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards arrive in order: bounded buffering on the driver
    ctx.enable_progress_bars = False  # the driver shows one bar in images
    gpu = config.device.startswith("cuda")
    decoders, encoders = _pool_sizes(config, ray.cluster_resources(), streamed, decoders, encoders, encoder_cpus)
    logger.info("ray: %s, %d decode actors (1 CPU each), %d encode actors (%d CPU%s each)",
                "one streaming reader" if streamed else "decoders read their shards", decoders, encoders,
                encoder_cpus, " + 1 GPU" if gpu else "")
    pre = SplitPreprocess(backbone.preprocess)
    decode_args = {"source_blob": None if streamed else cloudpickle.dumps(source), "pre_blob": cloudpickle.dumps(pre),
                   "batch_size": config.batch_size, "max_pixels": config.max_pixels,
                   "max_aspect": config.max_aspect, "draft": Decoder(pre, fast_decode=config.fast_decode).draft,
                   "max_bytes": config.max_bytes, "read_timeout": config.read_timeout}
    encode_args = {"spec": config.backbone, "device": config.device, "precision": config.precision,
                   "runtime": config.runtime,
                   "seed": config.seed, "text": config.text, "text_batch_size": config.text_batch_size,
                   "threads": encoder_cpus}
    if streamed:  # the reader is mostly waiting on I/O; the decoder count above leaves it a core
        reader = stream_datasource(source, start, end, config.shard_size, config.batch_size)
        ds = ray.data.read_datasource(reader, ray_remote_args={"num_cpus": 0})
    else:
        shards = plan_shards(start, end, config.shard_size)
        ds = ray.data.from_items(shards, override_num_blocks=len(shards))
    ds = ds.map_batches(Decode, batch_size=1, batch_format="pandas", num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(size=decoders), fn_constructor_kwargs=decode_args)
    return ds.map_batches(_Encode, batch_size=1, batch_format="pandas", num_cpus=encoder_cpus,
                          num_gpus=1 if gpu else 0, compute=ray.data.ActorPoolStrategy(size=encoders),
                          fn_constructor_kwargs=encode_args)


def _consume(ds, writer: CacheWriter, rid: str, summary: ExtractSummary, dim: int, text: str,
             total: Optional[int], progress: bool, on_shard: Optional[Callable[[str], None]]) -> None:
    """Write shards in order as their tasks arrive (buffered by (shard, task) if out of order)."""
    pending: Dict[int, Dict[int, Dict[str, Any]]] = {}
    n_tasks: Dict[int, int] = {}
    nxt = 0
    it = iter(ds.iter_rows())
    try:
        with progress_bar(total, progress) as bar:
            for row in it:
                k = int(row["shard"])
                pending.setdefault(k, {})[int(row["task"])] = row
                if row["last"]:
                    n_tasks[k] = int(row["task"]) + 1
                while nxt in n_tasks and len(pending.get(nxt, {})) == n_tasks[nxt]:
                    tasks = pending.pop(nxt)
                    nxt += 1
                    shard = _Shard(dim, text)
                    seen = sum(shard.add(tasks[t]) for t in range(len(tasks)))
                    summary.seen += seen
                    bar.update(seen)
                    if seen == 0:
                        continue  # the source ended before its announced size
                    img, txt, meta, errors = shard.build()
                    name = writer.write_shard(rid, start=int(tasks[0]["start"]), stop=int(tasks[0]["stop"]),
                                              img=img, txt=txt, meta=meta, errors=errors)
                    summary.embedded += len(img)
                    summary.shards_written += 1
                    for reason in errors["reason"]:
                        summary.errors[reason] = summary.errors.get(reason, 0) + 1
                    if on_shard is not None:
                        on_shard(name)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # stops the streaming executor when the driver fails
