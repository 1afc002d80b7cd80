"""Choosing which items of a source to extract: a warning when ``--limit``'s prefix is one class
(a folder walk lists every real, then every fake), and a seeded random (optionally stratified)
sample that still resumes by position."""
from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, Iterator, Optional

import numpy as np

from clipdetect.data.sources import Sample, Source

logger = logging.getLogger(__name__)

__all__ = ["check_limit_prefix", "SampledSource"]


def check_limit_prefix(source: Source, limit: Optional[int], *, min_share: float = 0.05) -> Optional[str]:
    """A warning (also logged) when the first ``limit`` items of ``source`` are (nearly) one class.

    ``--limit`` takes a prefix; on a source ordered by label (a folder walk: every real, then
    every fake) that prefix is one class. Returns the message, or None when the prefix holds
    at least ``min_share`` of each label.
    """
    if limit is None or limit <= 0:
        return None
    labels = np.array([s.label for s in itertools.islice(source.iterate(0), limit)], dtype=np.int64)
    if labels.size == 0:
        return None
    n_fake = int(labels.sum())
    share = min(n_fake, labels.size - n_fake) / labels.size
    if share >= min_share:
        return None
    msg = (f"the first {labels.size} source items (--limit {limit}) hold {labels.size - n_fake} real and {n_fake} "
           "fake images: the source looks ordered by label, so this prefix is not a sample of it; use "
           "--shuffle-seed S for a random sample and --stratify for equal reals and fakes")
    logger.warning(msg)
    return msg


class SampledSource(Source):
    """``n`` items of ``source`` drawn at random (seeded), or ``n // 2`` of each label with ``stratify``.

    One pass over the source reads the labels (images are not decoded); the chosen items are
    then yielded in source order, so resuming at a position works as for any source.
    """

    kind = "sampled"

    def __init__(self, source: Source, n: Optional[int], *, seed: int = 0, stratify: bool = False):
        self.source, self.n, self.seed, self.stratify = source, n, int(seed), bool(stratify)
        labels = np.array([s.label for s in source.iterate(0)], dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        n = labels.size if n is None else min(int(n), labels.size)
        if stratify:
            per = {c: np.flatnonzero(labels == c) for c in (0, 1)}
            if any(idx.size < n // 2 for idx in per.values()):
                raise ValueError(f"--stratify needs {n // 2} items of each label, but the source holds "
                                 f"{(labels == 0).sum()} real and {(labels == 1).sum()} fake; lower --limit")
            chosen = np.concatenate([rng.choice(per[c], n // 2, replace=False) for c in (0, 1)])
        else:
            chosen = rng.choice(labels.size, n, replace=False)
        self.positions = np.sort(chosen)
        logger.info("sampled %d of %d source items (%d fake), seed %d%s", self.positions.size, labels.size,
                    int(labels[self.positions].sum()), self.seed, ", stratified" if stratify else "")

    def size(self) -> int:
        return int(self.positions.size)

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        wanted = set(self.positions[start:].tolist())
        for pos, sample in enumerate(self.source.iterate(0)):
            if pos in wanted:
                yield sample

    def describe(self) -> Dict[str, Any]:
        return {**self.source.describe(), "sample": {"n": self.n, "seed": self.seed, "stratify": self.stratify}}
