"""Argument types, option groups and loaders shared by the commands that use trained detectors."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from clipdetect.cli.main import COMMANDS, CLIError
from clipdetect.core.device import DEVICE_HELP


def add_command(sub, name: str, help: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """The parser of command ``name``: its one-line ``help`` (default: from ``cli.main.COMMANDS``),
    the epilog as written."""
    return sub.add_parser(name, help=help or COMMANDS[name][1],
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def csv_list(text: str) -> list:
    return [t for t in (text or "").split(",") if t]


def figure_formats(text: str) -> list:
    fmts = csv_list(text)
    if not fmts or any(f not in ("png", "pdf", "svg") for f in fmts):
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


def add_device_arg(g, default: str = "cpu") -> None:
    """``--device`` (checked by ``core.device.check_device`` when the command runs)."""
    g.add_argument("--device", default=default, help=f"{DEVICE_HELP} (default {default})")


def add_workers_arg(g) -> None:
    from clipdetect.features.pipeline import default_workers

    g.add_argument("--workers", type=int, default=default_workers(),
                   help="decode processes; 0 decodes in the main process (default: CPU count, max 8)")


def add_threads_arg(g) -> None:
    """``--threads``, applied by :func:`set_threads`."""
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def set_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def config_of(cls, args, **overrides):
    """Dataclass ``cls`` from the same-named options in ``args`` (``overrides`` win); fields that
    have no option keep their defaults."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def add_split_args(p) -> None:
    g = p.add_argument_group("splits (default: the fractions and seed the detector was trained with)")
    g.add_argument("--val-fraction", type=float, help="validation fraction when the cache has no val rows")
    g.add_argument("--test-fraction", type=float, help="test fraction when the cache has no test rows")
    g.add_argument("--split-seed", type=int, help="seed of the key-hash split")


def open_cache(path: str):
    """The cache after the cheap integrity checks (a damaged one is refused before any work)."""
    from clipdetect.features.verify import open_verified

    return open_verified(path)


def add_force_arg(p, what: str = "--out") -> None:
    p.add_argument("--force", action="store_true",
                   help=f"replace what is already at {what} (default: refuse to overwrite)")


def check_new_output(path, force: bool, *, flag: str = "--out") -> None:
    """Refuse an existing file, or a non-empty folder, at ``path`` unless ``force``."""
    p = Path(path)
    taken = p.is_file() or p.is_symlink() or (p.is_dir() and any(p.iterdir()))
    if taken and not force:
        raise CLIError(f"{flag} {str(path)!r} already exists; pass --force to replace it, or choose another {flag}")


#: metrics shown in a one-line summary, with their labels
SUMMARY = (("auc", "AUC"), ("ap", "AP"), ("acc@thr", "accuracy at threshold"), ("eer", "EER"),
           ("tpr@fpr=1%", "TPR at 1% FPR"), ("tpr@fpr=0.1%", "TPR at 0.1% FPR"))


def metrics_text(m: dict) -> str:
    """``n_real`` / ``n_fake`` and the :data:`SUMMARY` metrics of one selection, each guarded
    (:func:`clipdetect.core.guards.guard`) and with its CI when ``<metric>_lo/_hi`` exist."""
    from clipdetect.core.guards import ci_note, few, guard

    parts = []
    for key, label in SUMMARY:
        if key not in m:
            continue
        why, v = guard(key, m), m.get(key)
        if why or v is None or v != v:
            parts.append(f"{label} n/a ({why or 'undefined'})")
            continue
        text = f"{label} {v:.3f}"
        if m.get(f"{key}_lo") is not None and m.get(f"{key}_hi") is not None:
            text += f" [{m[f'{key}_lo']:.3f}, {m[f'{key}_hi']:.3f}]{ci_note(m[f'{key}_lo'], m[f'{key}_hi'])}"
        parts.append(text)
    handful = few(m)
    return (f"{m.get('n_real', '?')} real, {m.get('n_fake', '?')} fake: " + ", ".join(parts)
            + (f" (only {handful}: anecdotes, not estimates)" if handful else ""))
