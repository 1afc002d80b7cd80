"""What ``elsaEU/ELSA_D3`` looks like on the hub: its generator columns and its split files.

``model_gen0..3`` hold, in this order, DeepFloyd IF (``DeepFloyd/IF-II-L-v1.0``, 256 px),
SD 1.4, SD 2.1 (``-base``) and SD XL. The hub's ``train`` split is the files ``data/train-*``
and ``data/val-*`` (2,300,000 + 6,629 rows); ``validation`` is ``data/validation-*`` (4,800
rows). :func:`split_files` applies the same rule to a local folder or glob.
"""
from __future__ import annotations

import glob
import logging
import os
from typing import List, Optional

from clipdetect.data.hf import parquet_files

logger = logging.getLogger(__name__)

N_GEN = 4
#: the ``model_gen0..3`` values of ``elsaEU/ELSA_D3``, in column order
MODELS = ("DeepFloyd/IF-II-L-v1.0", "CompVis/stable-diffusion-v1-4", "stabilityai/stable-diffusion-2-1-base",
          "stabilityai/stable-diffusion-xl-base-1.0")
#: alias → full model name
ALIASES = {"if": MODELS[0], "sd14": MODELS[1], "sd21": MODELS[2], "sdxl": MODELS[3]}
#: split → file-name prefixes of its parquet files in the hub's ``data/`` folder
SPLIT_PREFIXES = {"train": ("train-", "val-"), "validation": ("validation-",)}


def _file_split(path: str) -> Optional[str]:
    base = os.path.basename(path)
    return next((split for split, prefixes in SPLIT_PREFIXES.items() if base.startswith(prefixes)), None)


def split_files(spec: str, split: str) -> Optional[List[str]]:
    """The local parquet files of ``split`` that ``spec`` (a file, glob or folder) names; None for a hub name.

    Files named like the hub's (``train-*`` and ``val-*`` → ``train``, ``validation-*`` →
    ``validation``) are kept only when they belong to ``split``, so a folder never mixes the
    splits. Files named otherwise (a parquet written elsewhere) are all read, as given.
    """
    files = parquet_files(spec)
    if files is None:
        return None
    named = {f: _file_split(f) for f in files}
    if not any(named.values()):
        return files
    others = [f for f, s in named.items() if s is None]
    if others:
        raise ValueError(f"{spec!r} mixes D3 split files (train-*, val-*, validation-*) with other parquet files "
                         f"({others[:3]}); pass the D3 data/ folder or a glob of its files only")
    if split not in SPLIT_PREFIXES:
        raise ValueError(f"split {split!r} is not a D3 split; use one of {sorted(SPLIT_PREFIXES)}")
    keep = [f for f, s in named.items() if s == split]
    if not keep:
        have = sorted({s for s in named.values() if s})
        raise ValueError(f"{spec!r} has no {split!r} files ({', '.join(p + '*' for p in SPLIT_PREFIXES[split])}); "
                         f"it has {have} files: pass --split {have[0]} or another folder")
    siblings = {g for d in {os.path.dirname(f) for f in keep} for g in glob.glob(os.path.join(d, "*.parquet"))}
    missed = sorted(g for g in siblings - set(keep) if _file_split(g) == split)
    if missed:
        logger.warning("%s leaves out %d %r file(s) next to the ones it names (%s ...); D3's %r split is %s: "
                       "pass the folder instead", spec, len(missed), split, os.path.basename(missed[0]), split,
                       " + ".join(p + "*" for p in SPLIT_PREFIXES[split]))
    return keep
