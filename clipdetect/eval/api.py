"""The path-taking entry points of the top-level API: :func:`extract` and :func:`evaluate`.

Thin wrappers over :func:`clipdetect.features.extract.extract` and
:func:`clipdetect.eval.evaluate.evaluate_detector` that do what the CLI commands of the same
names do and accept paths as readily as objects. They live in ``eval``, the last library
stage, because they reach into every stage before it; ``import clipdetect`` exposes them.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

__all__ = ["extract", "evaluate"]


def extract(source, out: str | os.PathLike, backbone: str, *, source_options: Optional[Dict[str, Any]] = None,
            progress: bool = False, **config):
    """Embed the images of ``source`` into the feature cache ``out``; returns the cache.

    ``source`` is a :class:`~clipdetect.data.sources.Source` or a spec for
    :func:`~clipdetect.data.registry.open_source` (a folder with ``real/`` and ``fake/``, a
    CSV/parquet manifest, ``hf:NAME``, ``d3:...``), opened with ``source_options``.
    ``backbone`` is ``ARCH:TAG``, ``ARCH:/path/to/checkpoint`` or ``ARCH:random``.
    ``config`` sets other :class:`~clipdetect.features.runner.ExtractConfig` fields
    (``batch_size``, ``workers``, ``limit``, ``dtype``, ``device`` ...). Like
    ``clipdetect extract``, an interrupted run resumes where it stopped.

    >>> cache = clipdetect.extract("photos/", "features/mine", "ViT-B-16:openai")  # doctest: +SKIP
    """
    from clipdetect.core.config import check_fields
    from clipdetect.data.registry import open_source
    from clipdetect.data.sources import Source
    from clipdetect.features.cache import FeatureCache
    from clipdetect.features.runner import ExtractConfig
    from clipdetect.features.extract import extract as run_extract

    check_fields(ExtractConfig, config, what="extract option")
    if {"backbone", "out"} & set(config):
        raise ValueError("pass backbone and out as extract()'s arguments, not as options")
    if not isinstance(source, Source):
        source = open_source(os.fspath(source), **(source_options or {}))
    elif source_options:
        raise ValueError("source_options apply only when source is a spec string, not a Source object")
    run_extract(source, ExtractConfig(backbone=backbone, out=os.fspath(out), **config), progress=progress)
    return FeatureCache(out)


def evaluate(detector, cache, *, split: str = "test", by: Sequence[str] = ("generator",), n_boot: int = 1000,
             seed: int = 0, **options):
    """Evaluate ``detector`` on ``split`` of ``cache``: an :class:`~clipdetect.eval.evaluate.EvalReport`.

    ``detector`` is a :class:`~clipdetect.models.detector.Detector`, a fitted
    :class:`~clipdetect.models.estimator.DetectorClassifier` or a bundle directory;
    ``cache`` a :class:`~clipdetect.features.cache.FeatureCache` or its directory. The split
    is resolved as ``clipdetect evaluate --split`` resolves it: a cache extracted as all
    "train" rows gets its val/test rows by key hash with the fractions and seed the
    detector was trained with (override with ``val=``, ``test=``, ``split_seed=``).
    ``report.table`` holds the metrics (overall first, then per ``by`` value);
    ``report.save(dir)`` writes them as JSON, CSV and Markdown.
    """
    from clipdetect.eval.evaluate import evaluate_detector
    from clipdetect.features.cache import FeatureCache
    from clipdetect.models.detector import Detector

    if isinstance(detector, (str, os.PathLike)):
        detector = Detector.load(detector)
    elif not isinstance(detector, Detector) and hasattr(detector, "detector_"):
        detector = detector.detector_
    if not isinstance(detector, Detector):
        raise TypeError(f"detector must be a Detector, a fitted DetectorClassifier or a bundle path, "
                        f"not {type(detector).__name__}" + (" that is not fitted yet; call fit(X, y) first"
                                                            if hasattr(detector, "fit") else ""))
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    return evaluate_detector(detector, cache, split=split, by=by, n_boot=n_boot, seed=seed, **options)
