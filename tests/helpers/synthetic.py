"""Synthetic feature caches for fast tests (written with CacheWriter; no backbone runs)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from clipdetect.features.cache import FeatureCache
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.manifest import ERROR_COLUMNS


def synthetic_identity(dim: int = 16, *, arch: str = "synthetic", seed: int = 0) -> dict:
    """A backbone identity dict shaped like the ones real backbones record."""
    return {"arch": arch, "spec": f"{arch}:random", "weights": "random", "seed": seed, "embed_dim": dim,
            "has_text": True, "preprocess": {"size": [8, 8]}, "open_clip_version": "test"}


def separable_features(n: int, dim: int, *, shift: float = 1.5, fake_fraction: float = 0.5,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features whose class means differ by ``shift`` along the first axis, L2-normalised."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fake_fraction).astype(np.int64)
    y[:2] = [0, 1]  # both classes always present
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += shift * (2 * y - 1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def write_synthetic_cache(root: str | Path, *, n: int = 200, dim: int = 16, shards: int = 2,
                          shift: float = 1.5, fake_fraction: float = 0.5, seed: int = 0,
                          splits: Optional[Sequence[str]] = None, text: bool = True,
                          identity: Optional[dict] = None) -> FeatureCache:
    """Write an ``n``-row cache (image + optional text embeddings) and open it.

    ``splits``: per-row split names (default all "train"). Text embeddings carry the same
    class signal on their second axis so that "text" and "image+text" also train.
    """
    x, y = separable_features(n, dim, shift=shift, fake_fraction=fake_fraction, seed=seed)
    t, _ = separable_features(n, dim, shift=0.0, seed=seed + 1)
    t[:, 1] += shift * (2 * y - 1)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    split = np.asarray(splits if splits is not None else ["train"] * n, dtype=object)
    writer = CacheWriter(root, backbone=identity or synthetic_identity(dim))
    writer.begin_run("synthetic", {"source": "synthetic"})
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        meta = pd.DataFrame({"key": [f"k{i:06d}" for i in range(a, b)], "label": y[a:b],
                             "generator": np.where(y[a:b] == 1, "gen", "real"), "split": split[a:b],
                             "path": "", "caption": "", "width": 8, "height": 8, "format": "PNG",
                             "mode": "RGB"})
        writer.write_shard("synthetic", start=int(a), stop=int(b), img=x[a:b], txt=t[a:b] if text else None,
                           meta=meta, errors=pd.DataFrame(columns=ERROR_COLUMNS))
    writer.finish_run("synthetic", {"rows": n}, complete=True)
    return FeatureCache(root)


def write_multi_generator_cache(root: str | Path, *, n: int = 360, dim: int = 12, generators=("a", "b", "c"),
                                format_columns: bool = True, seed: int = 3) -> FeatureCache:
    """Reals and the fakes of several generators; the last generator's fakes differ from the
    reals on other axes than the rest, and are JPEGs of another size (a container leak) where
    every other image is an 8×8 PNG. ``format_columns=False`` leaves width/height/format/mode out."""
    x, y = separable_features(n, dim, shift=1.2, seed=seed)
    gen = np.where(y == 0, "real", np.asarray(generators)[np.arange(n) % len(generators)])
    odd = gen == generators[-1]
    x[odd, 0] -= 1.2
    x[odd, 1] += 1.5
    meta = pd.DataFrame({"key": [f"k{i}" for i in range(n)], "label": y, "generator": gen, "split": "train",
                         "path": "", "caption": ""})
    if format_columns:
        meta = meta.assign(width=np.where(odd, 16, 8), height=np.where(odd, 12, 8),
                           format=np.where(odd, "JPEG", "PNG"), mode="RGB")
    writer = CacheWriter(root, backbone=synthetic_identity(dim))
    writer.begin_run("r", {"source": "synthetic"})
    writer.write_shard("r", start=0, stop=n, img=x, txt=None, meta=meta, errors=pd.DataFrame(columns=ERROR_COLUMNS))
    writer.finish_run("r", {}, complete=True)
    return FeatureCache(root)


def write_layered_cache(root: str | Path, *, n: int = 160, tokens: int = 4, width: int = 8,
                        views: Sequence[str] = ("orig",), group_size: int = 1, seed: int = 0,
                        signal_token: int = 1, sources: int = 3, families: int = 1,
                        fakes_only_source: bool = False) -> FeatureCache:
    """A version-2 cache with per-block tokens, ``views`` rows per image and content groups.

    Images come in groups of ``group_size`` (the first real, the rest fake); the class signal
    sits in token ``signal_token`` only (the final embedding carries none), so a head must read
    the per-block features to separate the classes."""
    from clipdetect.features.manifest import layers_info

    rng = np.random.default_rng(seed)
    y = np.array([int(i % group_size != 0) if group_size > 1 else int(rng.random() < 0.5) for i in range(n)])
    y[:2] = [0, 1]
    lay = rng.normal(size=(n, tokens, width)).astype(np.float32)
    lay[:, signal_token, : max(1, width // 2)] += 1.5 * (2 * y - 1)[:, None]
    img = rng.normal(size=(n, width)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    names = [f"block{i + 1}" for i in range(tokens - 1)] + ["pre_proj"]
    writer = CacheWriter(root, backbone=synthetic_identity(width), layers=layers_info(names, width))
    writer.begin_run("synthetic", {"source": "synthetic"})
    rows = [(i, v) for i in range(n) for v in views]
    idx = np.array([i for i, _ in rows])
    meta = pd.DataFrame({"key": [f"k{i:05d}" for i in idx], "label": y[idx],
                         "generator": np.where(y[idx] == 1, "gen", "real"), "split": "train", "path": "",
                         "caption": "", "width": 8, "height": 8, "format": "PNG", "mode": "RGB",
                         "source": [f"s{0 if fakes_only_source and i % sources == sources - 1 and not y[i] else i % sources}"
                                    for i in idx],
                         "family": [f"fam{i % families}" if y[i] else "real" for i in idx],
                         "group": [f"g{i // group_size}" for i in idx], "view": [v for _, v in rows]})
    noise = rng.normal(scale=0.05, size=(len(rows), tokens, width)).astype(np.float32)
    writer.write_shard("synthetic", start=0, stop=n, img=img[idx], txt=None, meta=meta,
                       errors=pd.DataFrame(columns=ERROR_COLUMNS), layers=lay[idx] + noise)
    writer.finish_run("synthetic", {"rows": len(rows)}, complete=True)
    return FeatureCache(root)
