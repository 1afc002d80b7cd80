"""Unlabelled images given as a file or a folder, and the source ``predict`` reads: a labelled
source when the argument names one (real/fake folders, a manifest, a parquet, ``hf:``), else the
image file or every image under the folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator

from clipdetect.data.registry import open_source
from clipdetect.data.sources import IMAGE_EXTENSIONS, Sample, Source

__all__ = ["FileListSource", "open_predict_source"]


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
