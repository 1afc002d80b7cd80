"""The read side of the Ray engine: how work enters the pipeline, and the decode actors.

Two ways in, both cut exactly as the local engine cuts (shards of ``shard_size`` source
positions from the run's position, decode tasks of ``batch_size`` samples):

* **random access** (``source.size()`` known: local parquet, folders, manifests): the
  driver plans shard descriptors (positions only, no data) and each decode actor reads its
  own shards through ``source.iterate(start)`` — reading is spread over the cluster.
* **streaming** (size unknown: a hub dataset with ``--streaming``): one Ray read task walks
  the stream in order (a stream cannot be entered in the middle) and emits one block per
  decode task, holding that task's samples; Ray's streaming executor applies
  back-pressure, so memory stays bounded however long the stream is. Reading is then one
  sequential reader; decoding and encoding are still spread.

Either way a decode actor emits one row per task: the samples' metadata, the decode
outcomes and the preprocessed pixels, for the encode actors of :mod:`.extract_ray`.
"""
from __future__ import annotations

import json
import pickle
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pandas as pd

from clipdetect.core.inputs import MAX_IMAGE_BYTES, READ_TIMEOUT
from clipdetect.features.pipeline import Task, decode_refs, plan_tasks
from clipdetect.data.sources import Sample, Source

SAMPLE_FIELDS = ("key", "label", "caption", "generator", "split", "path", "source", "family", "group")


def plan_shards(start: int, stop: int, shard_size: int) -> List[Dict[str, int]]:
    """Shard descriptors ``{shard, start, stop}`` covering source positions [start, stop)."""
    bounds = list(range(start, stop, shard_size))
    return [{"shard": k, "start": a, "stop": min(a + shard_size, stop)} for k, a in enumerate(bounds)]


def stream_datasource(source: Source, start: int, end: Optional[int], shard_size: int, batch_size: int):
    """A Ray :class:`~ray.data.Datasource` with one read task that walks ``source`` from
    position ``start`` (to ``end``, or its end) and yields one block per decode task:
    ``{shard, task, start, stop, last, payload}`` with the pickled samples in ``payload``."""
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
        yield pd.DataFrame([{"shard": shard, "task": task, "start": t.shard_start, "stop": t.shard_stop,
                             "last": t.last, "payload": pickle.dumps(t.samples, protocol=5)}])
        task += 1


class Decode:
    """CPU actor: decodes and PIL-preprocesses each task of its input rows — a streamed
    task (``payload``) as it is, a shard descriptor after reading it from the source."""

    def __init__(self, source_blob: Optional[bytes], pre_blob: bytes, batch_size: int, max_pixels: int,
                 max_aspect: Optional[float] = None, draft: Optional[int] = None,
                 max_bytes: int = MAX_IMAGE_BYTES, read_timeout: Optional[float] = READ_TIMEOUT):
        import cloudpickle

        self.source = None if source_blob is None else cloudpickle.loads(source_blob)
        self.pre = cloudpickle.loads(pre_blob)
        self.batch_size, self.max_pixels, self.max_aspect, self.draft = batch_size, max_pixels, max_aspect, draft
        self.limits = {"max_bytes": max_bytes, "read_timeout": read_timeout}

    def __call__(self, batch: pd.DataFrame) -> Iterator[pd.DataFrame]:
        for rec in batch.to_dict("records"):
            if "payload" in rec:  # pickled by our own read task, never from outside
                yield self._task(rec, int(rec["task"]), int(rec["stop"]), bool(rec["last"]),
                                 pickle.loads(rec["payload"]))
                continue
            start, stop = int(rec["start"]), int(rec["stop"])
            tasks = list(plan_tasks(self.source.iterate(start), start, stop, stop - start, self.batch_size))
            # a source that ended early still answers for its shard (0 samples), so the driver moves on
            for j, t in enumerate(tasks or [Task(start, start, [], last=True)]):
                yield self._task(rec, j, t.shard_stop, t.last, t.samples)

    def _task(self, rec: Dict[str, Any], task: int, stop: int, last: bool, chunk: List[Sample]
              ) -> pd.DataFrame:
        decoded = decode_refs([s.image for s in chunk], self.pre, self.max_pixels, self.max_aspect, self.draft,
                              **self.limits)
        ok = [d[1] for d in decoded if d[0] == "ok"]
        arr = np.stack(ok) if ok else np.zeros((0,), dtype=np.uint8)
        fields = [{k: getattr(s, k) for k in SAMPLE_FIELDS} for s in chunk]
        return pd.DataFrame([{
            "shard": int(rec["shard"]), "task": task, "start": int(rec["start"]), "stop": stop, "last": last,
            "samples": json.dumps(fields),
            "decoded": json.dumps([list(d[:1]) + [None, d[2]] if d[0] == "ok" else list(d) for d in decoded]),
            "pixels": arr.tobytes(), "shape": json.dumps(arr.shape), "dtype": str(arr.dtype)}])
