"""Extraction on this machine: source → decode (worker processes) → encode (batched) → cache shards.

:func:`extract` runs the local engine (:func:`local_results`: the streaming pipeline of
:mod:`clipdetect.features.pipeline`) under the extraction runner
(:mod:`clipdetect.features.runner`), which owns the cache run. Bad images are dropped from
their batch and written to the shard's error ledger.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Iterator, Optional

from clipdetect.data.imaging import SplitPreprocess
from clipdetect.data.sources import Source
from clipdetect.features import pipeline
from clipdetect.features.backbones import Backbone, create_backbone
from clipdetect.features.encoder import encoder_for
from clipdetect.features.pipeline import plan_tasks, view_refs
from clipdetect.features.runner import (ExtractConfig, ExtractSummary, check_request, run_extraction,
                                        with_text)
from clipdetect.features.shards import TaskResult

__all__ = ["extract", "local_results"]

logger = logging.getLogger(__name__)


def extract(source: Source, config: ExtractConfig, *, backbone: Optional[Backbone] = None,
            progress: bool = True) -> ExtractSummary:
    """Extract ``source`` into the cache at ``config.out``; resumes an interrupted run."""
    check_request(source, config)
    backbone = backbone or create_backbone(config.backbone, device=config.device, precision=config.precision,
                                           seed=config.seed, runtime=config.runtime)
    return run_extraction(source, config, backbone, functools.partial(local_results, source, config, backbone),
                          progress=progress)


def local_results(source: Source, config: ExtractConfig, backbone: Backbone, start: int,
                  end: Optional[int]) -> Iterator[TaskResult]:
    """The local engine: the tasks planned from position ``start`` (to ``end``) decoded by
    ``config.workers`` processes and encoded here, each task's captions behind its images."""
    pre = SplitPreprocess(backbone.preprocess)
    encoder = encoder_for(backbone, pre, layers=config.layers)
    tasks = plan_tasks(source.iterate(start), start, end, config.shard_size, config.batch_size)
    texts = (lambda task, decoded: task.captions) if with_text(config, backbone) else None
    stream = pipeline.run(((t, view_refs(t.samples, config.views)) for t in tasks),
                          config.decoder(pre, config.workers), encoder, texts=texts)
    with contextlib.closing(stream):  # closing stops the decode workers now, not when garbage is collected
        for task, decoded, rows, *captions in stream:
            yield TaskResult.of(task, decoded, rows, captions[0] if captions else None, encoder)
