"""Every source, in the order that decides which copy of a duplicate image is kept."""
from __future__ import annotations

from typing import List

from experiments.corpus import (sources_assets, sources_gan, sources_grids, sources_models, sources_paired,
                                sources_photos, sources_real, sources_round3)
from experiments.corpus.schema import Source


def all_sources() -> List[Source]:
    sources = [*sources_paired.SOURCES, *sources_models.SOURCES, *sources_assets.SOURCES, *sources_grids.SOURCES,
               *sources_real.SOURCES, *sources_photos.SOURCES, *sources_gan.SOURCES,
               *sources_round3.SOURCES]
    names = [s.name for s in sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"source names must be unique; repeated: {sorted(dup)}")
    return sources
