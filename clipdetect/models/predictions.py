"""What ``predict`` writes: its columns, the run summary, and the writer that streams rows as
CSV (formula-safe) or JSONL into a file created exclusively, or onto a stream."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from clipdetect.core.escape import csv_row
from clipdetect.core.io import AtomicFile

__all__ = ["COLUMNS", "SCORE_COLUMNS", "PredictSummary", "PredictionWriter", "output_format"]

#: the columns of a predictions file, in order; ``logit`` is the head's raw output, ``probability``
#: the calibrated P(fake), ``threshold`` the detector's threshold on that same probability, and
#: ``label`` = 1 (fake) exactly when ``probability > threshold``; ``true_label`` comes from a
#: labelled source, ``error`` names why an image has no score
COLUMNS = ["key", "path", "logit", "probability", "threshold", "label", "true_label", "error"]
#: the columns of :func:`score_images` (in-memory scoring), same meaning
SCORE_COLUMNS = ["logit", "probability", "threshold", "label", "error"]


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


def output_format(out, fmt: Optional[str] = None) -> str:
    """"csv" or "jsonl": ``fmt``, else the suffix of the path ``out`` (a stream: csv)."""
    if fmt is not None:
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"format {fmt!r} is not csv or jsonl")
        return fmt
    if not isinstance(out, (str, os.PathLike)):
        return "csv"
    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"--out {str(out)!r} must end in .csv or .jsonl (or pass --format)")
    return suffix[1:]


class PredictionWriter:
    """Streams prediction rows as CSV or JSONL to a file, via a temporary file created
    exclusively (:class:`~clipdetect.core.io.AtomicFile`), or to an open text stream (stdout)
    as they come; CSV cells are formula-safe."""

    def __init__(self, out, fmt: str):
        self.stream = None if isinstance(out, (str, os.PathLike)) else out
        self.file = None
        if self.stream is None:
            self.path = Path(out)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = AtomicFile(self.path, "w", newline="")
        try:
            self.f = self.stream or self.file.stream
            self.csv = csv.DictWriter(self.f, fieldnames=COLUMNS) if fmt == "csv" else None
            if self.csv:
                self.csv.writeheader()
        except BaseException:  # Ctrl-C or a full disk while starting: leave nothing behind
            if self.file is not None:
                self.file.discard()
            raise

    def write(self, row: Dict[str, Any]) -> None:
        if self.csv:
            self.csv.writerow(csv_row({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS}))
        else:
            self.f.write(json.dumps({k: row.get(k) for k in COLUMNS}) + "\n")
        if self.stream is not None:
            self.f.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.commit()

    def abort(self) -> None:
        """A failed or interrupted run leaves no partial predictions file."""
        if self.file is not None:
            self.file.discard()
