"""Argument types, option groups and loaders shared by the commands that use trained detectors."""
from __future__ import annotations

import argparse


def csv_list(text: str) -> list:
    return [t for t in (text or "").split(",") if t]


def figure_formats(text: str) -> list:
    fmts = csv_list(text)
    bad = [f for f in fmts if f not in ("png", "pdf", "svg")]
    if bad or not fmts:
        raise argparse.ArgumentTypeError(f"--formats wants png,pdf,svg; got {text!r}")
    return fmts


def add_split_args(p) -> None:
    g = p.add_argument_group("splits (default: the fractions and seed the detector was trained with)")
    g.add_argument("--val-fraction", type=float, help="validation fraction when the cache has no val rows")
    g.add_argument("--test-fraction", type=float, help="test fraction when the cache has no test rows")
    g.add_argument("--split-seed", type=int, help="seed of the key-hash split")


def load_detector(path: str):
    from clipdetect.models.detector import Detector

    return Detector.load(path)


def open_cache(path: str):
    """The cache after the cheap integrity checks (a damaged one is refused before any work)."""
    from clipdetect.features.verify import open_verified

    return open_verified(path)
