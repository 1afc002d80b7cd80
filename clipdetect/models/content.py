"""Content clusters of training rows: spherical k-means on their CLIP embeddings.

A corpus assembled from many collections confounds content with the label: GAN face sets are
all fake, ImageNet samples all real, so a head can score *what* an image shows instead of *how*
it was made, and then calls a new collection of real faces fake. Clustering the training rows
by content (CLIP's embedding is mostly content) lets the trainer draw fakes and reals in the
same proportion from every cluster (``TrainConfig.balance="content"``,
:class:`~clipdetect.models.samplers.ContentBalancedBatchSampler`), so content alone predicts
nothing and the head must use what differs between a real and a generated image of the same kind.
"""
from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CONTENT_CLUSTERS", "content_clusters", "n_content_clusters"]

#: clusters of the largest training sets; fewer for small ones (:func:`n_content_clusters`)
CONTENT_CLUSTERS = 32
#: rows per cluster below which the count is reduced
MIN_ROWS_PER_CLUSTER = 64
#: at most this many rows fit the centroids (all rows are then assigned)
FIT_ROWS = 20_000


def n_content_clusters(n_rows: int) -> int:
    """``CONTENT_CLUSTERS``, or fewer so that a cluster averages ``MIN_ROWS_PER_CLUSTER`` rows (at least 2)."""
    return int(min(CONTENT_CLUSTERS, max(2, n_rows // MIN_ROWS_PER_CLUSTER)))


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _assign(X: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    return np.concatenate([np.argmax(X[i:i + chunk] @ centroids.T, axis=1)
                           for i in range(0, len(X), chunk)]) if len(X) else np.zeros(0, np.int64)


def content_clusters(X: np.ndarray, k: int | None = None, *, seed: int = 0, iters: int = 25) -> np.ndarray:
    """Cluster ids (int64, 0..k-1) of the rows of ``X`` [N, D] by spherical k-means (cosine
    similarity, k-means++ seeding); deterministic for a seed. ``k`` None: :func:`n_content_clusters`."""
    X = _unit(X)
    n = len(X)
    k = n_content_clusters(n) if k is None else int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1 content clusters, got {k}")
    if n <= k:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit = X[np.sort(rng.choice(n, FIT_ROWS, replace=False))] if n > FIT_ROWS else X
    centroids = [fit[rng.integers(len(fit))]]
    dist = 1.0 - fit @ centroids[0]
    for _ in range(1, k):  # k-means++: the next seed far (in cosine distance) from the chosen ones
        p = np.maximum(dist, 0.0) ** 2
        nxt = fit[rng.choice(len(fit), p=p / p.sum())] if p.sum() > 0 else fit[rng.integers(len(fit))]
        centroids.append(nxt)
        dist = np.minimum(dist, 1.0 - fit @ nxt)
    c = np.stack(centroids)
    for _ in range(iters):
        ids = _assign(fit, c)
        new = np.stack([fit[ids == j].sum(0) if (ids == j).any() else c[j] for j in range(k)])
        new = _unit(new)
        if np.allclose(new, c, atol=1e-6):
            break
        c = new
    ids = _assign(X, c).astype(np.int64)
    logger.info("content clusters: %d rows in %d clusters (sizes %d..%d)", n, k,
                int(np.bincount(ids, minlength=k).min()), int(np.bincount(ids, minlength=k).max()))
    return ids
