"""Shard assembly: the results of one shard's decode tasks → the arrays and tables of a cache shard.

The mapper (decode → encode, :mod:`clipdetect.features.pipeline`) turns each planned task into
a :class:`TaskResult` — the decode outcomes, the image embeddings (and per-block tokens), the
embeddings of the captions planned with the task — in whichever process or actor it ran.
:class:`ShardBuilder` adds a shard's results in task order and builds its :class:`ShardResult`,
what :meth:`~clipdetect.features.cache_writer.CacheWriter.write_shard` stores. The runner
(:mod:`clipdetect.features.runner`) is its only user: engines make TaskResults and nothing
else, so a shard has the same bytes whichever engine made its results.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from clipdetect.data.sources import Sample
from clipdetect.data.views import ORIG
from clipdetect.features.manifest import ERROR_COLUMNS, IMAGE_COLUMNS, META_COLUMNS
from clipdetect.features.pipeline import Task, view_items

#: the metadata columns a row takes from its source sample
SAMPLE_COLUMNS = [c for c in META_COLUMNS if c not in IMAGE_COLUMNS]


@dataclass
class TaskResult:
    """One decode task through the mapper: its ``decoded`` outcomes per (sample, view) item,
    ``("ok", None, info)`` or ``("err", reason, detail)``; the embeddings [n_ok, D] and per-block
    tokens [n_ok, T, W] (or None) of the items that decoded; caption → embedding for the
    captions planned with the task (``task.captions``)."""

    task: Task
    decoded: List[Tuple]
    emb: np.ndarray
    layers: Optional[np.ndarray] = None
    captions: Dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, task: Task, decoded: List[Tuple], rows: np.ndarray, captions: Optional[Dict[str, np.ndarray]],
           encoder) -> "TaskResult":
        """From the mapper's output: the pixels dropped, the encoder's rows cut into embeddings and tokens."""
        emb, layers = encoder.split(rows)
        outcomes = [("ok", None, d[2]) if d[0] == "ok" else tuple(d) for d in decoded]
        return cls(task, outcomes, emb, layers, dict(captions or {}))


@dataclass
class ShardResult:
    """One shard as the cache stores it, covering source positions [start, stop) (``seen`` items)."""

    start: int
    stop: int
    seen: int
    img: np.ndarray
    txt: Optional[np.ndarray]
    meta: pd.DataFrame
    errors: pd.DataFrame
    layers: Optional[np.ndarray] = None


def meta_row(sample: Sample, info: Dict[str, Any], view: str) -> Dict[str, Any]:
    """The metadata row of one decoded (sample, view) item."""
    return {**{c: getattr(sample, c) for c in SAMPLE_COLUMNS}, "label": int(sample.label), **info, "view": view}


class ShardBuilder:
    """Collects one shard's task results, in task order, and builds the shard.

    ``dim``: the embedding width; ``with_text``: whether captions are embedded (a shard gets
    caption embeddings when one of its rows has a caption); ``layers``: the (token names, width)
    of per-block features, or None."""

    def __init__(self, dim: int, *, views: Optional[Sequence[str]] = None, with_text: bool = False,
                 layers: Optional[Tuple[List[str], int]] = None):
        self.dim, self.views, self.with_text, self.layout = dim, list(views or [ORIG]), with_text, layers
        self.reset()

    def reset(self) -> None:
        self.emb: List[np.ndarray] = []
        self.layers: List[np.ndarray] = []
        self.meta: List[Dict[str, Any]] = []
        self.errors: List[Dict[str, Any]] = []
        self.text_table: Dict[str, np.ndarray] = {}
        self.start = self.stop = self.seen = 0

    def add(self, result: TaskResult) -> None:
        """Add one task's result; an image that cannot be decoded fails in every view: one ledger entry."""
        task, failed = result.task, set()
        self.start, self.stop, self.seen = task.shard_start, task.shard_stop, self.seen + len(task.samples)
        for (s, view), d in zip(view_items(task.samples, self.views), result.decoded):
            if d[0] == "ok":
                self.meta.append(meta_row(s, d[2], view))
            elif id(s) not in failed:
                failed.add(id(s))
                detail = d[2] if view == ORIG else f"view {view}: {d[2]}"
                self.errors.append(dict(zip(ERROR_COLUMNS, (s.key, s.path, d[1], detail))))
        if len(result.emb):
            self.emb.append(result.emb)
            if result.layers is not None:
                self.layers.append(result.layers)
        self.text_table.update(result.captions)

    def captions(self) -> Optional[np.ndarray]:
        """One caption embedding per row (no caption: that of ""), or None when no row has a caption."""
        if not self.with_text or all(r["caption"] is None for r in self.meta):
            return None
        return np.stack([self.text_table[r["caption"] or ""] for r in self.meta]).astype(np.float32, copy=False)

    def build(self) -> ShardResult:
        img = np.concatenate(self.emb) if self.emb else np.zeros((0, self.dim), dtype=np.float32)
        layers = None
        if self.layout is not None:
            names, width = self.layout
            layers = np.concatenate(self.layers) if self.layers else np.zeros((0, len(names), width), np.float32)
        return ShardResult(self.start, self.stop, self.seen, img, self.captions(),
                           pd.DataFrame(self.meta, columns=META_COLUMNS),
                           pd.DataFrame(self.errors, columns=ERROR_COLUMNS), layers)
