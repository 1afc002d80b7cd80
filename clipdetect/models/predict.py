"""End-to-end scoring: images → decode (worker processes) → backbone → detector head → file.

Runs on the extraction engine (:mod:`clipdetect.features.pipeline`: the same decoder and
encoder stages), so images are decoded and preprocessed exactly as they were when the
detector's training cache was built. Output
rows keep the source order; an image that cannot be decoded gets a row with its
``error`` reason and no score, and never stops the run.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from clipdetect.features.backbones import Backbone, BackboneError, create_backbone, identities_match
from clipdetect.features import pipeline
from clipdetect.features.encoder import encoder_for
from clipdetect.features.pipeline import Decoder, default_workers, encode_captions, read_batches
from clipdetect.data.imaging import MAX_PIXELS, SplitPreprocess
from clipdetect.data.registry import open_source
from clipdetect.data.sources import IMAGE_EXTENSIONS, Sample, Source

logger = logging.getLogger(__name__)

COLUMNS = ["key", "path", "score", "probability", "label", "true_label", "error"]


class FileListSource(Source):
    """Unlabelled images: one file, or every image under a folder (sorted, recursive)."""

    kind = "files"

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        if self.root.is_file():
            self.files = [self.root]
            self.base = self.root.parent
        elif self.root.is_dir():
            self.files = sorted(p for p in self.root.rglob("*") if p.is_file()
                                and p.suffix.lower() in IMAGE_EXTENSIONS)
            self.base = self.root
        else:
            raise FileNotFoundError(f"{str(path)!r} is neither an image file nor a folder")

    def size(self) -> int:
        return len(self.files)

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        for p in self.files[start:]:
            yield Sample(key=str(p.relative_to(self.base)), image=str(p), label=-1, path=str(p))

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root.resolve())}


def open_predict_source(spec: str, **options) -> Source:
    """A labelled source when ``spec`` is one (real/fake folders, manifest, HF parquet, hf:),
    otherwise the image file or every image under the folder, unlabelled."""
    p = Path(spec)
    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
        return FileListSource(p)
    try:
        return open_source(spec, **options)
    except ValueError:
        if p.is_dir():
            return FileListSource(p)
        raise


def resolve_backbone(detector, spec: Optional[str] = None, *, force: bool = False, device: str = "cpu",
                     precision: str = "fp32") -> Backbone:
    """The backbone that made the detector's training features (or ``spec``), checked.

    A backbone whose identity (architecture, weights hash, preprocessing ...) differs from
    the detector's is refused unless ``force``: its embeddings mean nothing to the head.
    """
    want = dict(detector.backbone or {})
    spec = spec or want.get("spec")
    if not spec:
        raise BackboneError("the detector records no backbone spec; pass one with --backbone ARCH:WEIGHTS")
    try:
        seed = int(want.get("seed", 0) or 0)
        backbone = create_backbone(spec, device=device, precision=precision, seed=seed)
    except BackboneError as exc:
        raise BackboneError(f"{exc} (the detector was trained on features of {want.get('spec')!r}; "
                            "pass --backbone ARCH:/absolute/path to point at the same weights)") from exc
    if not identities_match(backbone.identity, want):
        diff = {k: (want.get(k), backbone.identity.get(k)) for k in
                ("arch", "weights", "tag", "sha256", "seed", "embed_dim", "preprocess")
                if want.get(k) != backbone.identity.get(k)}
        msg = f"backbone {spec!r} differs from the detector's (detector vs given: {diff})"
        if not force:
            raise BackboneError(msg + "; scores would be meaningless. Use the detector's backbone, "
                                "or --force")
        logger.warning("%s; continuing because of --force", msg)
    return backbone


@dataclass
class PredictSummary:
    out: str
    n: int = 0
    scored: int = 0
    predicted_fake: int = 0
    errors: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    accuracy: Optional[float] = None  # when the source carries labels

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "images_per_second": round(self.images_per_second, 2)}


class _Writer:
    """Streams prediction rows to CSV or JSONL (chosen by suffix), via a temporary file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".csv", ".jsonl"):
            raise ValueError(f"--out {str(path)!r} must end in .csv or .jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.f = open(self.tmp, "w", newline="")
        self.csv = csv.DictWriter(self.f, fieldnames=COLUMNS) if self.path.suffix.lower() == ".csv" else None
        if self.csv:
            self.csv.writeheader()

    def write(self, row: Dict[str, Any]) -> None:
        if self.csv:
            self.csv.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
        else:
            self.f.write(json.dumps({k: row.get(k) for k in COLUMNS}) + "\n")

    def close(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)


def predict_source(detector, source: Source, out: str | os.PathLike, *, backbone: Optional[Backbone] = None,
                   batch_size: int = 64, workers: Optional[int] = None, limit: Optional[int] = None,
                   max_pixels: int = MAX_PIXELS, progress: bool = True) -> PredictSummary:
    """Score every image of ``source`` and write one row each to ``out`` (.csv or .jsonl).

    Columns: ``key, path, score`` (logit), ``probability`` (P(fake), temperature-scaled),
    ``label`` (1 = fake at the detector's threshold, 0 = real), ``true_label`` (when the
    source has labels) and ``error`` (the reason an image could not be scored).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if Path(out).suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"--out {str(out)!r} must end in .csv or .jsonl")
    workers = default_workers() if workers is None else workers
    backbone = backbone or resolve_backbone(detector)
    fs = detector.feature_set
    if fs != "image" and not backbone.has_text:
        raise BackboneError(f"the detector uses {fs!r} features but backbone {backbone.spec!r} "
                            "has no text tower")
    pre = SplitPreprocess(backbone.preprocess)
    summary = PredictSummary(out=str(out))
    writer, t0 = _Writer(Path(out)), time.perf_counter()
    hits = labelled = 0
    tasks = ((batch, [s.image for s in batch]) for batch in read_batches(source, batch_size, limit=limit))
    decoder, encoder = Decoder(pre, workers=workers, max_pixels=max_pixels), encoder_for(backbone, pre)

    def select(batch, decoded):  # text features need a caption
        return [i for i, d in enumerate(decoded) if d[0] == "ok" and (fs == "image" or batch[i].caption)]
    total = source.size() if limit is None else min(limit, source.size() or limit)
    try:
        with tqdm(total=total, unit="img", desc="predict", disable=not progress, dynamic_ncols=True) as bar:
            for batch, decoded, x in pipeline.run(tasks, decoder, encoder, select):
                rows = [{"key": s.key, "path": s.path or (s.image if isinstance(s.image, str) else ""),
                         "true_label": s.label if s.label in (0, 1) else None} for s in batch]
                ok = select(batch, decoded)
                ok_set = set(ok)
                for i, d in enumerate(decoded):
                    if d[0] != "ok":
                        rows[i]["error"] = f"{d[1]}: {d[2]}" if d[2] else d[1]
                    elif i not in ok_set:
                        rows[i]["error"] = "no_caption: the detector needs a caption for text features"
                if ok:
                    if fs != "image":
                        t = encode_captions(backbone, [batch[i].caption for i in ok])
                        x = t if fs == "text" else np.concatenate([x, t], axis=1)
                    logits = np.asarray(detector.decision_function(x), dtype=np.float64).ravel()
                    probs = np.asarray(detector.fake_probability(x), dtype=np.float64).ravel()
                    for j, i in enumerate(ok):
                        label = int(probs[j] > detector.threshold)
                        rows[i].update(score=float(logits[j]), probability=float(probs[j]), label=label)
                        summary.scored += 1
                        summary.predicted_fake += label
                        if rows[i]["true_label"] is not None:
                            labelled += 1
                            hits += int(label == rows[i]["true_label"])
                for row in rows:
                    if row.get("error"):
                        reason = row["error"].split(":", 1)[0]
                        summary.errors[reason] = summary.errors.get(reason, 0) + 1
                    writer.write(row)
                summary.n += len(batch)
                bar.update(len(batch))
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - t0
    summary.accuracy = hits / labelled if labelled else None
    logger.info("scored %d of %d images (%d errors) at %.1f img/s -> %s", summary.scored, summary.n,
                sum(summary.errors.values()), summary.images_per_second, out)
    if summary.accuracy is not None and not math.isnan(summary.accuracy):
        logger.info("accuracy against the source labels: %.4f (%d labelled)", summary.accuracy, labelled)
    return summary
