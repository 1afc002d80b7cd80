"""Batch samplers of the trainer: class-stratified batches, batches in which every source weighs
the same, batches in which every content cluster holds fakes and reals in the same proportion,
and batches of whole content groups."""
from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["BALANCE_MODES", "BALANCE_POWERS", "CONTENT_CAP", "StratifiedBatchSampler", "WeightedBatchSampler",
           "SourceBalancedBatchSampler", "ContentBalancedBatchSampler", "GroupBatchSampler"]

#: ``balance`` setting → exponent of the per-source weight 1 / n_source ** power
BALANCE_POWERS = {"none": 0.0, "sqrt": 0.5, "source": 1.0}
#: every ``balance`` setting: the source weightings and "content" (:class:`ContentBalancedBatchSampler`)
BALANCE_MODES = (*BALANCE_POWERS, "content")
#: the most a row of a content cluster's minority class is drawn, relative to a uniform draw
CONTENT_CAP = 8.0


class StratifiedBatchSampler:
    """Batches of indices that keep the class ratio and always hold both classes.

    An epoch has ``ceil(n / batch_size)`` batches; each class's shuffled indices are split
    evenly across them. A class with fewer samples than batches is cycled (some of its
    samples appear twice in the epoch) so that every batch still holds at least one of it.
    Indices within a batch are sorted (sequential reads from the memory maps).
    """

    def __init__(self, labels: np.ndarray, batch_size: int, *, seed: int = 0):
        y = np.asarray(labels)
        self.pos, self.neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise ValueError(f"training needs both classes, but the training rows hold {len(self.pos)} fake "
                             f"and {len(self.neg)} real samples; check the labels / split of the data")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.n_batches = max(1, math.ceil(len(y) / self.batch_size))
        if min(len(self.pos), len(self.neg)) < self.n_batches:
            logger.warning("minority class has %d samples for %d batches per epoch: cycling it",
                           min(len(self.pos), len(self.neg)), self.n_batches)

    def __len__(self) -> int:
        return self.n_batches

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        parts = [np.array_split(draw, self.n_batches) for draw in self._draws(rng)]
        for b in rng.permutation(self.n_batches):
            yield np.sort(np.concatenate([parts[0][b], parts[1][b]]))

    def _draws(self, rng: np.random.Generator) -> list:
        """The epoch's fake rows, then its real rows, in the order they are dealt to the batches."""
        draws = []
        for idx in (self.pos, self.neg):
            perm = rng.permutation(idx)
            draws.append(np.resize(perm, self.n_batches) if len(perm) < self.n_batches else perm)
        return draws


class WeightedBatchSampler(StratifiedBatchSampler):
    """Class-stratified batches whose rows are drawn (with replacement) by per-class probabilities
    ``self.p`` = [fake rows' p, real rows' p], set by a subclass; each class is drawn as often per
    epoch as it has rows, so the class ratio, the batch count and the learning-rate schedule are
    those of :class:`StratifiedBatchSampler`."""

    p: list

    def _draws(self, rng: np.random.Generator) -> list:
        return [rng.choice(idx, size=max(len(idx), self.n_batches), p=p)
                for idx, p in zip((self.pos, self.neg), self.p)]


class SourceBalancedBatchSampler(WeightedBatchSampler):
    """Class-stratified batches in which a large source does not drown the small ones.

    Within each class, a row is drawn (with replacement) with probability proportional to
    ``1 / n ** power``, where ``n`` is the number of that class's training rows from the row's
    source: ``power=1`` gives every source the same share of its class, ``0.5`` a share that
    grows with the square root of its size.
    """

    def __init__(self, labels: np.ndarray, sources: np.ndarray, batch_size: int, *, power: float = 1.0,
                 seed: int = 0):
        super().__init__(labels, batch_size, seed=seed)
        sources = np.asarray(sources)
        if len(sources) != len(labels):
            raise ValueError(f"sources has {len(sources)} entries for {len(labels)} labels")
        self.p = []
        for idx in (self.pos, self.neg):
            _, inverse, counts = np.unique(sources[idx], return_inverse=True, return_counts=True)
            w = counts[inverse].astype(np.float64) ** -float(power)
            self.p.append(w / w.sum())
        logger.info("source-balanced batches (power %g): %d fake and %d real sources", power,
                    len(np.unique(sources[self.pos])), len(np.unique(sources[self.neg])))


class ContentBalancedBatchSampler(WeightedBatchSampler):
    """Class-stratified batches in which content does not predict the label.

    ``clusters`` are content-cluster ids of the rows (:func:`~clipdetect.models.content.content_clusters`).
    Within class y, a row of cluster c is drawn (with replacement) with probability proportional to
    ``n_c / n_cy`` (cluster size over its rows of class y), so both classes draw cluster c with the
    same probability, proportional to its size: a face cluster of many fakes and few real photos
    gives its real photos more draws instead of teaching "face means fake". A row's weight is
    capped at ``cap`` times a uniform draw (a lone real photo among hundreds of fakes is not
    repeated hundreds of times); clusters holding one class keep their share in that class.
    """

    def __init__(self, labels: np.ndarray, clusters: np.ndarray, batch_size: int, *, cap: float = CONTENT_CAP,
                 seed: int = 0):
        super().__init__(labels, batch_size, seed=seed)
        clusters = np.asarray(clusters, dtype=np.int64)
        if len(clusters) != len(labels):
            raise ValueError(f"clusters has {len(clusters)} entries for {len(labels)} labels")
        if cap < 1:
            raise ValueError(f"cap must be >= 1 (a row's most draws relative to uniform), got {cap}")
        size = np.bincount(clusters)
        self.p, owns = [], []
        for idx in (self.pos, self.neg):
            own = np.bincount(clusters[idx], minlength=len(size))
            self.p.append(_capped(size[clusters[idx]] / own[clusters[idx]], cap))
            owns.append(own)
        both = int(((owns[0] > 0) & (owns[1] > 0)).sum())
        logger.info("content-balanced batches: %d clusters, %d with both classes (cap %g)", len(size), both, cap)


def _capped(w: np.ndarray, cap: float) -> np.ndarray:
    """Probabilities proportional to ``w``, none above ``cap`` / len(w) (the excess spread over the rest)."""
    w = np.asarray(w, dtype=np.float64)
    for _ in range(200):
        w = w / w.mean()
        if w.max() <= cap * (1 + 1e-6):
            break
        w = np.minimum(w, cap)
    return w / w.sum()


class GroupBatchSampler(StratifiedBatchSampler):
    """Batches of whole content groups (for ``auc_pairs="group"``): each epoch shuffles the
    groups and fills batches of about ``batch_size`` rows with them, so a fake and the reals of
    its prompt are ranked in the same batch. A batch that would hold one class only is carried
    into the next; the last, short batch joins the one before."""

    def __init__(self, labels: np.ndarray, groups: np.ndarray, batch_size: int, *, seed: int = 0):
        super().__init__(labels, batch_size, seed=seed)  # the both-classes check, the batch count
        order = np.argsort(groups, kind="stable")
        cuts = np.flatnonzero(np.diff(np.asarray(groups)[order])) + 1
        self.members, self.y = np.split(order, cuts), np.asarray(labels)

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        batches, current = [], []
        for g in rng.permutation(len(self.members)):
            current.append(self.members[g])
            if sum(len(m) for m in current) >= self.batch_size:
                idx = np.concatenate(current)
                if 0 < self.y[idx].sum() < len(idx):
                    batches.append(idx)
                    current = []
        if current:
            rest = np.concatenate(current)
            if batches:
                batches[-1] = np.concatenate([batches[-1], rest])
            else:
                batches.append(rest)
        for idx in batches:
            yield np.sort(idx)
