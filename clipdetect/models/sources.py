"""Where a head's training rows come from: in-memory arrays or rows of a memory-mapped feature cache.

A source has ``y`` (0/1 labels), ``dim``, ``tokens`` (per-block features, or None), ``len()``
and ``batch(idx)`` (float32 features of rows ``idx``); a cache source also has content
``groups`` and ``sources``. Memory does not grow with the cache: only row ids and labels are held, and one
batch of features at a time is read (``cache.features``); :func:`prefetched` reads the next
batch in a thread while the current one trains.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import numpy as np
import torch

from clipdetect.features.manifest import feature_parts

__all__ = ["ArraySource", "CacheSource", "feature_spread", "labels01", "predict_logits", "prefetched"]


class ArraySource:
    """Features held in memory (``X`` [N, D], labels ``y`` [N])."""

    def __init__(self, X: np.ndarray, y: np.ndarray):
        self.X = np.asarray(X)
        self.y = labels01(y)
        self.tokens: Optional[int] = None  # in-memory arrays are flat features
        if self.X.ndim != 2 or len(self.X) != len(self.y):
            raise ValueError(f"X must be [N, D] with N = len(y); got X {self.X.shape}, y {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    def batch(self, idx: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.X[idx], dtype=np.float32)

    @functools.cached_property
    def content(self) -> np.ndarray:
        """Content-cluster ids of the rows (k-means on ``X``; computed on first use)."""
        from clipdetect.models.content import content_clusters

        return content_clusters(self.X)


class CacheSource:
    """Rows ``rows`` of a :class:`~clipdetect.features.cache.FeatureCache`, read batch by batch from its memory maps."""

    def __init__(self, cache, rows: np.ndarray, feature_set: str = "image"):
        feature_parts(feature_set)  # a clear error for an unknown one
        self.cache, self.feature_set = cache, feature_set
        self.rows = np.sort(np.asarray(rows, dtype=np.int64))
        self.y = labels01(cache.labels(self.rows))
        self.dim = cache.feature_dim(feature_set)
        self.tokens = int(cache.layers["tokens"]) if feature_set == "layers" else None

    @functools.cached_property
    def groups(self) -> np.ndarray:
        """Integer content-group ids of the rows (read on first use)."""
        names = self.cache.columns("group")["group"].to_numpy()[self.rows]
        return np.unique(names.astype(str), return_inverse=True)[1].astype(np.int64)

    @functools.cached_property
    def sources(self) -> np.ndarray:
        """The rows' source names (the cache's ``source`` column; "" where it has none)."""
        return self.cache.columns("source")["source"].to_numpy()[self.rows].astype(str)

    @functools.cached_property
    def content(self) -> np.ndarray:
        """Content-cluster ids of the rows: k-means on their final image embeddings, whatever
        the feature set trained on (computed on first use)."""
        from clipdetect.models.content import content_clusters

        return content_clusters(self.cache.features("image", self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: np.ndarray) -> np.ndarray:
        return self.cache.features(self.feature_set, self.rows[idx])


def feature_spread(source, *, n: int = 16_384, seed: int = 0) -> np.ndarray:
    """The per-feature standard deviation [D] of ``source``'s rows (of at most ``n`` drawn with
    ``seed``; a D3-sized cache is not read whole for it)."""
    idx = np.arange(len(source))
    if len(idx) > n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))
    return np.asarray(source.batch(idx), dtype=np.float64).std(0).astype(np.float32)


def labels01(y) -> np.ndarray:
    """Labels as int64 0 (real) / 1 (fake); anything else is refused."""
    y = np.asarray(y).reshape(-1)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake); found {np.unique(y)[:5].tolist()}")
    return y.astype(np.int64)


@torch.no_grad()
def predict_logits(head: torch.nn.Module, source, *, batch_size: int = 8192, device: str = "cpu") -> np.ndarray:
    """Eval-mode logits for every row of ``source``, batched."""
    was_training = head.training
    head.eval()
    out = np.empty(len(source), dtype=np.float32)
    for i in range(0, len(source), batch_size):
        idx = np.arange(i, min(i + batch_size, len(source)))
        out[idx] = head(torch.from_numpy(source.batch(idx)).to(device)).float().cpu().numpy()
    head.train(was_training)
    return out


def prefetched(source, batches: Iterator[np.ndarray]) -> Iterator[tuple]:
    """(indices, features) pairs; the next batch is gathered in a thread while the current one trains."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipdetect-batch") as pool:
        nxt = next(batches, None)
        pending = pool.submit(source.batch, nxt) if nxt is not None else None
        while pending is not None:
            idx, x = nxt, pending.result()
            nxt = next(batches, None)
            pending = pool.submit(source.batch, nxt) if nxt is not None else None
            yield idx, x
