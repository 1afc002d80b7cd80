"""The Ray Data extraction engine: the local engine's cache, with decoding and encoding spread
over a Ray cluster.

Pipeline (one Ray Data dataset; rows are shards, then decode tasks)::

    from_items(shard descriptors)                  driver: positions only, no data
      or one streaming read task                   sources of unknown size (:mod:`.ray_read`)
      → map_batches(Decode, CPU actor pool)        read and plan a shard, decode each task
      → map_batches(Encode, GPU or CPU actors)     each task's images and planned captions
      → driver: TaskResults in order               → :func:`~.runner.run_extraction`

The engine only turns planned tasks into :class:`~clipdetect.features.shards.TaskResult`
objects and decides where the work runs; the run (lock, run id, resume, shard writes, summary)
is the runner's, as for the local engine. The same reader, :class:`Decoder` and
:class:`~clipdetect.features.encoder.ImageEncoder` calls make the same batches, so a shard has
the local engine's bytes (on the same device) and a killed run resumes with either engine.

A source object is pickled to the actors; a D3 source reopens its dataset there instead (so
on a multi-node cluster its parquet files and ``HF_DATASETS_CACHE`` must be on storage every
node sees).
"""
from __future__ import annotations

import functools
import logging
import pickle
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

from clipdetect.data.imaging import SplitPreprocess
from clipdetect.data.sources import Source
from clipdetect.features.backbones import Backbone, create_backbone
from clipdetect.features.encoder import encoder_for
from clipdetect.features.ray_read import Decode, plan_shards, stream_datasource
from clipdetect.features.runner import (ExtractConfig, ExtractSummary, check_request, run_extraction,
                                        with_text)
from clipdetect.features.shards import TaskResult

logger = logging.getLogger(__name__)


class Encode:
    """GPU (or CPU) actor holding the backbone: each decoded task → its pickled TaskResult."""

    def __init__(self, config: ExtractConfig, threads: int):
        import torch

        torch.set_num_threads(threads)  # the CPUs this actor reserved
        backbone = create_backbone(config.backbone, device=config.device, precision=config.precision,
                                   seed=config.seed, runtime=config.runtime)
        self.text = with_text(config, backbone)
        self.encoder = encoder_for(backbone, SplitPreprocess(backbone.preprocess), layers=config.layers)

    def __call__(self, batch):
        import pandas as pd

        out = []
        for row in batch.to_dict("records"):
            task, decoded = pickle.loads(row["payload"])  # pickled by this engine's decode actors
            texts = task.captions if self.text else None
            rows, txt = self.encoder.submit(None, [d[1] for d in decoded if d[0] == "ok"], texts).result()
            result = TaskResult.of(task, decoded, rows, None if txt is None else dict(zip(texts, txt)), self.encoder)
            out.append({"shard": row["shard"], "task": row["task"], "result": pickle.dumps(result, protocol=5)})
        return pd.DataFrame(out)


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
    check_request(source, config)
    backbone = backbone or create_backbone(config.backbone, device="cpu", precision="fp32", seed=config.seed)
    engine = functools.partial(ray_results, source, config, backbone, address, (num_cpus, actor_pool_size,
                                                                                encoder_cpus))
    return run_extraction(source, config, backbone, engine, progress=progress, on_shard=on_shard, label=" (ray)")


def ray_results(source: Source, config: ExtractConfig, backbone: Backbone, address: Optional[str],
                pools: Tuple[Optional[int], Optional[int], int], start: int, end: Optional[int]
                ) -> Iterator[TaskResult]:
    """The Ray engine: the results of the tasks planned from ``start`` (to ``end``), in order.
    Connects to (or starts, and then stops) Ray only when there is work."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    try:
        rows = iter(build_dataset(source, config, backbone, start, end, *pools).iter_rows())
        try:
            yield from in_order(rows)
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # stops the streaming executor when the driver fails
    finally:
        if started:
            ray.shutdown()


def in_order(rows: Iterable[Dict[str, Any]]) -> Iterator[TaskResult]:
    """Task results in (shard, task) order, buffering the rows that arrive early."""
    pending: Dict[Tuple[int, int], TaskResult] = {}
    nxt = (0, 0)
    for row in rows:
        pending[(int(row["shard"]), int(row["task"]))] = pickle.loads(row["result"])  # from our encode actors
        while nxt in pending:
            result = pending.pop(nxt)
            yield result
            nxt = (nxt[0] + 1, 0) if result.task.last else (nxt[0], nxt[1] + 1)


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


def build_dataset(source: Source, config: ExtractConfig, backbone: Backbone, start: int, end: Optional[int],
                  decoders: Optional[int], encoders: Optional[int], encoder_cpus: int):
    import cloudpickle
    import ray

    streamed = source.size() is None  # no random access: one read task walks the stream
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards arrive in order: bounded buffering on the driver
    ctx.enable_progress_bars = False  # the driver shows one bar in images
    gpu = config.device.startswith("cuda")
    decoders, encoders = _pool_sizes(config, ray.cluster_resources(), streamed, decoders, encoders, encoder_cpus)
    logger.info("ray: %s, %d decode actors (1 CPU each), %d encode actors (%d CPU%s each)",
                "one streaming reader" if streamed else "decoders read their shards", decoders, encoders,
                encoder_cpus, " + 1 GPU" if gpu else "")
    decoder = config.decoder(SplitPreprocess(backbone.preprocess))
    decode_args = {"source_blob": None if streamed else cloudpickle.dumps(source),
                   "decoder_blob": cloudpickle.dumps(decoder), "batch_size": config.batch_size,
                   "views": config.views}
    if streamed:  # the reader is mostly waiting on I/O; the decoder count above leaves it a core
        reader = stream_datasource(source, start, end, config.shard_size, config.batch_size)
        ds = ray.data.read_datasource(reader, ray_remote_args={"num_cpus": 0})
    else:
        shards = plan_shards(start, end, config.shard_size)
        ds = ray.data.from_items(shards, override_num_blocks=len(shards))
    ds = ds.map_batches(Decode, batch_size=1, batch_format="pandas", num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(size=decoders), fn_constructor_kwargs=decode_args)
    return ds.map_batches(Encode, batch_size=1, batch_format="pandas", num_cpus=encoder_cpus,
                          num_gpus=1 if gpu else 0, compute=ray.data.ActorPoolStrategy(size=encoders),
                          fn_constructor_kwargs={"config": config, "threads": encoder_cpus})
