"""The read side of the Ray engine: how planned tasks enter the pipeline, and the decode actors.

* **random access** (``source.size()`` known: parquet, folders, manifests): the driver plans
  shard descriptors (positions only) and each decode actor reads and plans its own shards
  with the shared reader (:func:`~clipdetect.features.pipeline.plan_tasks`).
* **streaming** (size unknown: a hub dataset with ``--streaming``): one Ray read task walks
  the stream in order with the same reader and emits one block per decode task; Ray's
  back-pressure keeps memory bounded. Decoding and encoding are still spread.

A decode actor emits one row per task, ``{shard, task, payload}``: the task (its samples
without their images) and its decode outcomes with the pixels, pickled by this engine's own
actors (never read from outside), for the encode actors of :mod:`.extract_ray`.
"""
from __future__ import annotations

import pickle
from typing import Any, Dict, Iterator, List, Optional

import pandas as pd

from clipdetect.data.sources import Source
from clipdetect.features.pipeline import Task, plan_tasks, view_refs


def plan_shards(start: int, stop: int, shard_size: int) -> List[Dict[str, int]]:
    """Shard descriptors ``{shard, start, stop}`` covering source positions [start, stop)."""
    return [{"shard": k, "start": a, "stop": min(a + shard_size, stop)}
            for k, a in enumerate(range(start, stop, shard_size))]


def stream_datasource(source: Source, start: int, end: Optional[int], shard_size: int, batch_size: int):
    """A Ray :class:`~ray.data.Datasource` with one read task that walks ``source`` from
    position ``start`` (to ``end``, or its end) and yields one block per decode task:
    ``{shard, task, payload}`` with the pickled :class:`~clipdetect.features.pipeline.Task`."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class StreamRead(Datasource):
        def estimate_inmemory_data_size(self) -> Optional[int]:
            return None  # unknown until the stream has been read

        def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                           data_context: Any = None) -> List[ReadTask]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [ReadTask(lambda: stream_blocks(source, start, end, shard_size, batch_size), meta)]

    return StreamRead()


def stream_blocks(source: Source, start: int, end: Optional[int], shard_size: int, batch_size: int
                  ) -> Iterator[pd.DataFrame]:
    """The read task's body (see :func:`stream_datasource`); shards are numbered from 0."""
    shard, task, current = -1, 0, None
    for t in plan_tasks(source.iterate(start), start, end, shard_size, batch_size):
        if t.shard_start != current:
            shard, task, current = shard + 1, 0, t.shard_start
        yield pd.DataFrame([{"shard": shard, "task": task, "payload": pickle.dumps(t, protocol=5)}])
        task += 1


class Decode:
    """CPU actor: decodes and PIL-preprocesses each task of its input rows — a streamed task
    (``payload``) as it is, a shard descriptor after reading and planning it from the source —
    with ``decoder`` (a pickled :class:`~clipdetect.features.pipeline.Decoder`)."""

    def __init__(self, source_blob: Optional[bytes], decoder_blob: bytes, batch_size: int, views: List[str]):
        import cloudpickle

        self.source = None if source_blob is None else cloudpickle.loads(source_blob)
        self.decoder = cloudpickle.loads(decoder_blob)
        self.batch_size, self.views = batch_size, views

    def __call__(self, batch: pd.DataFrame) -> Iterator[pd.DataFrame]:
        for rec in batch.to_dict("records"):
            if "payload" in rec:
                yield self.decode(int(rec["shard"]), int(rec["task"]), pickle.loads(rec["payload"]))
                continue
            start, stop = int(rec["start"]), int(rec["stop"])
            tasks = list(plan_tasks(self.source.iterate(start), start, stop, stop - start, self.batch_size))
            # a source that ended early still answers for its shard (0 samples), so the driver moves on
            for j, t in enumerate(tasks or [Task(start, start, [], last=True)]):
                yield self.decode(int(rec["shard"]), j, t)

    def decode(self, shard: int, index: int, task: Task) -> pd.DataFrame:
        decoded = self.decoder.decode(view_refs(task.samples, self.views))
        payload = pickle.dumps((task.without_images(), decoded), protocol=5)
        return pd.DataFrame([{"shard": shard, "task": index, "payload": payload}])
