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


RUNTIME_HELP = ("where the image tower runs: torch (default), or on the CPU onnx (ONNX Runtime; "
                "pip install 'clipdetect[onnx]') or openvino (pip install 'clipdetect[openvino]'). The tower is "
                "exported once per backbone and precision into $CLIPDETECT_RUNTIME_CACHE "
                "(default ~/.cache/clipdetect/runtimes) and loaded from there afterwards")
PRECISION_HELP = ("fp32 (default, exact); fp16 (torch on a GPU); bf16 (torch, or openvino; fast only on CPUs "
                  "with native bf16); int8 (openvino: int8 weights, fp32 activations; "
                  "cosine ~0.999 to fp32 embeddings)")


def add_runtime_args(g) -> None:
    """``--runtime`` and ``--precision`` (checked together by ``features.runtime.check_runtime``)."""
    g.add_argument("--runtime", default="torch", choices=["torch", "onnx", "openvino"], help=RUNTIME_HELP)
    g.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"], help=PRECISION_HELP)


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
