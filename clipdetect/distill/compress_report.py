"""``clipdetect compress``: compress a detector head or a student (encoder + head) and report
parameters, file size, throughput and AUC before and after (JSON + Markdown).

A detector bundle is evaluated on ``eval_cache`` (its test split, or every row when the
cache has no test split). A student directory is evaluated end to end on ``eval_source``
images: the held-out test keys of the student's own split (hash of the key, the same
fractions and seed as its distillation), at most ``eval_limit`` of them.
"""
from __future__ import annotations

import copy
import logging
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from clipdetect.distill.student import (load_student, read_student_doc, save_student,
                                        student_identity)
from clipdetect.models.compress import PRUNE_SCOPES, magnitude_prune, svd_factorize
from clipdetect.models.detector import load_detector
from clipdetect.models.heads import count_parameters
from clipdetect.core.escape import md_code
from clipdetect.core.io import write_json, write_text
from clipdetect.core.metrics import binary_metrics
from clipdetect.features.backbones import create_backbone
from clipdetect.features.splits import SplitSpec

logger = logging.getLogger(__name__)


@dataclass
class CompressConfig:
    target: str
    out: str
    svd_rank: Optional[int] = None
    svd_energy: Optional[float] = None
    prune: float = 0.0
    prune_scope: str = "global"
    include_conv: bool = True
    eval_cache: Optional[str] = None
    eval_source: Optional[str] = None
    eval_limit: int = 500
    batch_size: int = 64
    timing_seconds: float = 0.2  # length of each of the 5 throughput timings
    source_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.svd_rank is not None and self.svd_energy is not None:
            raise ValueError("give --svd-rank or --svd-energy, not both")
        if self.svd_rank is not None and self.svd_rank < 1:
            raise ValueError(f"--svd-rank must be >= 1, got {self.svd_rank}")
        if self.svd_energy is not None and not 0.0 < self.svd_energy <= 1.0:
            raise ValueError(f"--svd-energy must be in (0, 1], got {self.svd_energy}")
        if not 0.0 <= self.prune < 1.0:
            raise ValueError(f"--prune must be a fraction in [0, 1), got {self.prune}")
        if self.prune_scope not in PRUNE_SCOPES:
            raise ValueError(f"--prune-scope must be one of {PRUNE_SCOPES}, got {self.prune_scope!r}")
        if self.svd_rank is None and self.svd_energy is None and self.prune == 0:
            raise ValueError("nothing to do: give --svd-rank R, --svd-energy E and/or --prune FRACTION")


# ------------------------------------------------------------------ measuring
def file_sizes(paths: List[Path]) -> Dict[str, int]:
    """Raw bytes and zlib-deflated bytes (level 6) of the weight files together."""
    blobs = [Path(p).read_bytes() for p in paths]
    return {"file_bytes": sum(map(len, blobs)),
            "deflated_bytes": sum(len(zlib.compress(b, 6)) for b in blobs)}


def count_params(*modules: torch.nn.Module) -> Dict[str, int]:
    return {"parameters": count_parameters(*modules),
            "nonzero_parameters": count_parameters(*modules, nonzero=True)}


@torch.inference_mode()
def throughput(fn: Callable[[], Any], items: int, *, repeats: int = 5, min_seconds: float = 0.2) -> float:
    """items/s of ``fn``: the best of ``repeats`` timings (each at least ``min_seconds`` long) after
    a warm-up call; the best run is the least disturbed by other processes on a shared CPU."""
    fn()
    best = 0.0
    for _ in range(repeats):
        runs, t0 = 0, time.perf_counter()
        while runs == 0 or time.perf_counter() - t0 < min_seconds:
            fn()
            runs += 1
        best = max(best, items * runs / (time.perf_counter() - t0))
    return best


def test_split_refs(source_spec: str, *, val: float, test: float, seed: int, limit: int,
                    options: Optional[Dict[str, Any]] = None) -> Tuple[List[Any], np.ndarray, List[str]]:
    """(image refs, labels, keys) of up to ``limit`` samples of ``source_spec`` whose key falls in
    the hashed test split (:func:`splits.assign_splits` with the same fractions and seed)."""
    from clipdetect.data.registry import open_source

    spec = SplitSpec(val, test, seed)
    refs, labels, keys = [], [], []
    for s in open_source(source_spec, **(options or {})).iterate(0):
        if spec.assign([s.key])[0] == "test":
            refs.append(s.image)
            labels.append(int(s.label))
            keys.append(s.key)
            if len(refs) >= limit:
                break
    if not refs:
        raise ValueError(f"no test-split images found in {source_spec!r}")
    return refs, np.asarray(labels, dtype=np.int64), keys


def score_refs(backbone, detector, refs: List[Any], *, batch_size: int = 64) -> np.ndarray:
    """P(fake) for encoded images end to end (:func:`~clipdetect.models.predict.score_images`,
    in this process); an image that cannot be scored is an error, not a skipped row."""
    from clipdetect.data.imaging import BadImage
    from clipdetect.models.predict import score_images

    scores = score_images(detector, refs, backbone=backbone, batch_size=batch_size)
    bad = np.flatnonzero(scores["error"].notna().to_numpy())
    if bad.size:
        reason, _, detail = scores["error"][bad[0]].partition(": ")
        raise BadImage(reason, f"{detail} (image {bad[0]} of the evaluation set)")
    return scores["probability"].to_numpy(dtype=np.float64)


def _auc(y: np.ndarray, p: np.ndarray) -> Optional[float]:
    return float(binary_metrics(y, p)["auc"]) if len(np.unique(y)) == 2 else None


# ------------------------------------------------------------------ compressing
def _compress_module(module: torch.nn.Module, config: CompressConfig,
                     prior: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    svd: Dict[str, int] = {}
    if config.svd_rank is not None or config.svd_energy is not None:
        svd = svd_factorize(module, rank=config.svd_rank, energy=config.svd_energy,
                            include_conv=config.include_conv)
    prune = magnitude_prune(module, config.prune, scope=config.prune_scope) if config.prune > 0 else None
    structure = {"svd": {**(prior or {}).get("svd", {}), **svd}}
    if prune is not None:
        structure["prune"] = {k: v for k, v in prune.items() if k != "per_layer"}
    return structure


def compress(config: CompressConfig) -> Dict[str, Any]:
    """Compress ``config.target`` into ``config.out``; write and return the report."""
    target = Path(config.target)
    if (target / "student.json").is_file():
        report = _compress_student(config, target)
    elif (target / "detector.json").is_file():
        report = _compress_detector(config, target)
    else:
        raise ValueError(f"{config.target!r} is neither a detector bundle (detector.json) nor a student "
                         "directory (student.json)")
    report["config"] = asdict(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compress_report.json", report)
    write_text(out / "compress_report.md", report_markdown(report))
    return report


def _compress_detector(config: CompressConfig, target: Path) -> Dict[str, Any]:
    from clipdetect.features.cache import FeatureCache

    det = load_detector(target)
    x_eval = y_eval = None
    if config.eval_cache:
        cache = FeatureCache(config.eval_cache)
        rows = SplitSpec.of(det).rows(cache, "test")
        rows = rows if len(rows) else np.arange(len(cache))
        x_eval, y_eval = det.features(cache, rows), cache.labels(rows)
    probe = torch.randn(4096, det.in_dim)

    def measure(d, files):
        rate = throughput(lambda: d.head.eval()(probe), len(probe), min_seconds=config.timing_seconds)
        m = {**count_params(d.head), **file_sizes(files), "rows_per_second": rate}
        if x_eval is not None:
            m["auc"] = _auc(y_eval, d.probability(x_eval))
            m["eval_rows"] = int(len(y_eval))
        return m

    before = measure(det, [target / "model.safetensors"])
    new = copy.deepcopy(det)
    structure = _compress_module(new.head, config, (det.extra or {}).get("compression"))
    new.extra = {**(det.extra or {}), "compression": {**structure, "from": str(target.resolve())}}
    new.save(config.out)
    new = load_detector(config.out)  # what users will load
    after = measure(new, [Path(config.out) / "model.safetensors"])
    return {"kind": "detector", "target": str(target), "out": config.out, "before": before, "after": after,
            "structure": structure}


def _compress_student(config: CompressConfig, target: Path) -> Dict[str, Any]:
    model, scfg, doc = load_student(target)
    det = load_detector(target / "detector")
    out = Path(config.out)
    refs = labels = None
    if config.eval_source:
        s = SplitSpec.of(doc.get("distill", {}))
        refs, labels, _ = test_split_refs(config.eval_source, val=s.val, test=s.test, seed=s.seed,
                                          limit=config.eval_limit, options=config.source_options)
    elif config.eval_cache:
        logger.warning("a student's encoder changes under compression: evaluate it on images "
                       "(--eval-source); --eval-cache is ignored")
    probe = torch.randn(config.batch_size, 3, scfg.image_size, scfg.image_size)

    def measure(student_dir: Path, d):
        bb = create_backbone(f"student:{student_dir}")
        m = {**count_params(bb.model, d.head),
             **file_sizes([student_dir / "encoder.safetensors",
                           student_dir / "detector" / "model.safetensors"]),
             "images_per_second": throughput(lambda: d.head.eval()(torch.nn.functional.normalize(
                 bb.model(probe), dim=-1)), len(probe), min_seconds=config.timing_seconds)}
        if refs is not None:
            m["auc"] = _auc(labels, score_refs(bb, d, refs, batch_size=config.batch_size))
            m["eval_images"] = len(refs)
        return m

    before = measure(target, det)
    enc_structure = _compress_module(model, config, scfg.compression)
    scfg = replace(scfg, compression={"svd": enc_structure["svd"]})
    save_student(out, model, scfg, teacher=doc.get("teacher"), distill=doc.get("distill"),
                 extra={"compressed_from": str(target.resolve()), "compression_report": enc_structure})
    head = copy.deepcopy(det)
    head_structure = _compress_module(head.head, config, (det.extra or {}).get("compression"))
    head.backbone = {**student_identity(out, scfg, read_student_doc(out)), "spec": f"student:{out.resolve()}"}
    head.extra = {**(det.extra or {}), "student_dir": str(out.resolve()),
                  "compression": {**head_structure, "from": str((target / "detector").resolve())}}
    head.save(out / "detector")
    after = measure(out, load_detector(out / "detector"))
    return {"kind": "student", "target": str(target), "out": str(out), "before": before, "after": after,
            "structure": {"encoder": enc_structure, "head": head_structure}}


def report_markdown(report: Dict[str, Any]) -> str:
    b, a = report["before"], report["after"]
    rate = "rows_per_second" if report["kind"] == "detector" else "images_per_second"
    keys = ["parameters", "nonzero_parameters", "file_bytes", "deflated_bytes", rate, "auc"]
    lines = [f"# Compression report ({report['kind']})", "", f"- target: {md_code(report['target'])}",
             f"- output: {md_code(report['out'])}", f"- settings: svd_rank={report['config']['svd_rank']}, "
             f"svd_energy={report['config']['svd_energy']}, prune={report['config']['prune']} "
             f"({report['config']['prune_scope']})",
             "- pruned weights are stored dense with zeros: the raw file size does not shrink, the deflated "
             "size shows what a compressing container would gain", "",
             "| metric | before | after | after / before |", "|---|---|---|---|"]
    for k in keys:
        if k not in b and k not in a:
            continue
        vb, va = b.get(k), a.get(k)
        numeric = isinstance(vb, (int, float)) and isinstance(va, (int, float)) and vb
        ratio = f"{va / vb:.3f}" if numeric else ""
        fmt = (lambda v: "n/a" if v is None else f"{v:.4f}" if k == "auc" else
               f"{v:,.1f}" if isinstance(v, float) else f"{v:,}")
        lines.append(f"| {k} | {fmt(vb)} | {fmt(va)} | {ratio} |")
    return "\n".join(lines) + "\n"
