"""Hugging Face datasets as a source: by hub name, or local parquet files; streaming or not.

The image column is read undecoded (``datasets.Image(decode=False)``), so the encoded
bytes travel to the decode workers and a corrupt image becomes an error-ledger entry
instead of an exception inside ``datasets``.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
from typing import Any, Dict, Iterator, List, Optional

from clipdetect.data.sources import CaptionTemplate, Sample, Source, optional_str, parse_label

logger = logging.getLogger(__name__)


def parquet_files(spec: str) -> Optional[List[str]]:
    """Local parquet files named by ``spec`` (a file, glob or folder), or None for a hub name."""
    if os.path.isdir(spec):
        return sorted(glob.glob(os.path.join(spec, "**", "*.parquet"), recursive=True))
    if any(c in spec for c in "*?[") or spec.endswith(".parquet"):
        files = sorted(glob.glob(spec))
        if not files:
            raise FileNotFoundError(f"no parquet files match {spec!r}")
        return files
    return None


def load_hf_dataset(name_or_path: str, *, split: str, streaming: bool, config_name: Optional[str] = None,
                    offline_hint: str, files: Optional[List[str]] = None):
    """``datasets.load_dataset`` for local parquet or a hub name; a load failure names ``offline_hint``.
    ``files``: the local parquet files to read (default: all that ``name_or_path`` names)."""
    import datasets

    from clipdetect.core.offline import hub_offline, offline_reason

    files = parquet_files(name_or_path) if files is None else files
    if files is not None:
        return datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
    offline = offline_reason()  # a hub name: do not let the hub library retry an unreachable host
    try:
        with hub_offline() if offline else contextlib.nullcontext():
            return datasets.load_dataset(name_or_path, config_name, split=split, streaming=streaming)
    except Exception as exc:
        if offline:
            raise ValueError(f"cannot load {name_or_path!r}: the hub is not reachable ({offline}) and it is not in "
                               f"the local cache. {offline_hint}") from None
        if isinstance(exc, (ConnectionError, OSError)):
            raise ValueError(f"could not load {name_or_path!r} ({exc}). Offline? {offline_hint}") from exc
        raise


class HFSource(Source):
    """Rows of a Hugging Face dataset → samples.

    ``name_or_path``: a hub name (``"user/dataset"``), or a parquet file / glob / folder.
    ``label_column`` may hold 0/1, 'real'/'fake', or a ClassLabel whose names say which.
    Keys come from ``key_column`` when present, else ``"{split}/{row index}"``.
    """

    kind = "hf"
    OPTIONS = ("split", "image_column", "label_column", "caption_column", "caption_template",
               "generator_column", "key_column", "streaming", "config_name", "fixed_label", "generator")

    def __init__(self, name_or_path: str, *, split: str = "train", image_column: str = "image",
                 label_column: str = "label", caption_column: Optional[str] = None,
                 caption_template: Optional[str] = None, generator_column: Optional[str] = None,
                 key_column: str = "key", streaming: bool = False, config_name: Optional[str] = None,
                 fixed_label: Optional[int] = None, generator: str = ""):
        self.name_or_path, self.split, self.streaming = name_or_path, split, streaming
        self.image_column, self.label_column = image_column, label_column
        self.caption_column, self.caption = caption_column, CaptionTemplate(caption_template)
        self.generator_column, self.generator, self.key_column = generator_column, generator, key_column
        self.config_name, self.fixed_label = config_name, fixed_label
        self.ds = self._load()
        self._check_columns()
        feat = self.ds.features.get(self.label_column) if self.ds.features else None
        self.label_names = list(getattr(feat, "names", []) or []) or None

    def _load(self):
        import datasets

        ds = load_hf_dataset(self.name_or_path, split=self.split, streaming=self.streaming,
                             config_name=self.config_name,
                             offline_hint="download its parquet files elsewhere and pass the local path or glob")
        if self.image_column in (ds.features or {}):
            ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        return ds

    def _check_columns(self):
        cols = set(self.ds.features or {})
        if not cols:
            return
        need = {self.image_column} | ({self.label_column} if self.fixed_label is None else set())
        need |= {c for c in (self.caption_column, self.generator_column) if c}
        missing = need - cols
        if missing:
            raise ValueError(f"dataset {self.name_or_path!r} lacks column(s) {sorted(missing)}; it has {sorted(cols)}"
                             " (set --image-column/--label-column/--caption-column)")

    def size(self) -> Optional[int]:
        return None if self.streaming else len(self.ds)

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        if self.streaming:
            rows = self.ds.skip(start) if start else self.ds
        else:
            rows = self.ds.select(range(start, len(self.ds))) if start else self.ds
        for i, rec in enumerate(rows, start):
            yield self._sample(i, rec)

    def _sample(self, i: int, rec: Dict[str, Any]) -> Sample:
        img = rec[self.image_column]
        data = img.get("bytes") if isinstance(img, dict) else img
        path = (img.get("path") if isinstance(img, dict) else None) or ""
        if data is None:
            data = path  # an Image feature that points at a file
        else:
            path = f"{os.path.basename(self.name_or_path)}#{i}"
        label = self.fixed_label if self.fixed_label is not None else parse_label(
            rec[self.label_column], names=self.label_names)
        record = dict(rec)
        if self.label_names and self.label_column in record:
            record[self.label_column + "_name"] = self.label_names[int(record[self.label_column])]
        caption = self.caption(record) if self.caption.template else (
            optional_str(rec.get(self.caption_column)) if self.caption_column else None)
        key = str(rec[self.key_column]) if self.key_column in rec else f"{self.split}/{i}"
        gen = str(rec[self.generator_column]) if self.generator_column else (self.generator or
                                                                              ("real" if label == 0 else "fake"))
        return Sample(key=key, image=data, label=label, caption=caption, generator=gen,
                      split=self.split, path=path)

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "name_or_path": os.path.abspath(self.name_or_path)
                if parquet_files(self.name_or_path) is not None else self.name_or_path,
                "split": self.split, "image_column": self.image_column, "label_column": self.label_column,
                "caption_column": self.caption_column, "caption_template": self.caption.template,
                "generator_column": self.generator_column, "config_name": self.config_name}
