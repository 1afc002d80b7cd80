"""Sources: adapters that yield :class:`Sample` records in a fixed, repeatable order.

Every source yields ``Sample(key, image, caption, label, generator, split, path)`` (and,
where the source knows them, ``source``, ``family`` and ``group``) where
``image`` is a path or encoded bytes (decoding happens later, in worker processes) and
``label`` is 0 for real, 1 for generated (fake). ``iterate(start)`` resumes at a position
without decoding what it skips; ``describe()`` is the JSON identity used to resume runs.
"""
from __future__ import annotations

import contextlib
import logging
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
REAL_NAMES = {"real", "0_real", "reals", "nature", "natural", "authentic", "0"}
FAKE_NAMES = {"fake", "1_fake", "fakes", "ai", "generated", "synthetic", "1"}
SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


@dataclass
class Sample:
    key: str
    image: Union[str, bytes]
    label: int
    caption: Optional[str] = None
    generator: str = ""
    split: str = "train"
    path: str = ""
    source: str = ""   # where the image comes from (a dataset, a photo collection), for leave-one-source-out
    family: str = ""   # the generator family across sources (e.g. "sd" for every Stable Diffusion set)
    group: str = ""    # content group (one prompt's real and fakes): splits never cut a group


def parse_label(value: Any, *, names: Optional[List[str]] = None) -> int:
    """0/1, bool, 'real'/'fake' (and common synonyms), or a ClassLabel index with names."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in REAL_NAMES:
            return 0
        if v in FAKE_NAMES:
            return 1
        raise ValueError(f"label {value!r} is neither real ({sorted(REAL_NAMES)}) nor fake ({sorted(FAKE_NAMES)})")
    if names is not None and 0 <= int(value) < len(names):
        return parse_label(names[int(value)])
    if int(value) in (0, 1):
        return int(value)
    raise ValueError(f"label {value!r} is not 0 (real) or 1 (fake)")


class CaptionTemplate:
    """``"a photo of a {cifar_class}"`` filled from a record's fields; missing field → clear error."""

    def __init__(self, template: Optional[str]):
        self.template = template
        self.fields = [f for _, f, _, _ in string.Formatter().parse(template or "") if f]

    def __call__(self, record: Mapping[str, Any]) -> Optional[str]:
        if not self.template:
            return None
        try:
            return self.template.format(**{k: record[k] for k in self.fields})
        except KeyError as exc:
            raise ValueError(f"caption template {self.template!r} uses field {exc.args[0]!r}, "
                             f"which this source does not have (fields: {sorted(record)})") from None


class Source:
    """Base class: subclasses implement ``__len__`` (or None) and ``iterate(start)``."""

    kind = "source"

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        return self.iterate(0)

    def size(self) -> Optional[int]:
        return None

    def describe(self) -> Dict[str, Any]:
        raise NotImplementedError

    def find(self, keys) -> Dict[str, Sample]:
        """key → the first sample with that key, for those of ``keys`` the source holds (one pass,
        stopping once all are found)."""
        need, found = set(keys), {}
        for s in self.iterate(0):
            if s.key in need and s.key not in found:
                found[s.key] = s
                if len(found) == len(need):
                    break
        return found


class ImageFolderSource(Source):
    """A folder of images, labelled by subfolder.

    Layouts (sorted walk, so the order is stable):

    * ``root/real/...`` and ``root/fake/...`` (also ``0_real``/``1_fake``, ``REAL``/``FAKE``):
      subfolders name things the way users lay them out. ``fake/<generator>/...`` gives the
      fakes under it that generator (``generator`` column; files directly in ``fake/`` get
      generator ``fake``) and ``real/<source>/...`` gives the reals under it that photo source
      (``source`` column; files directly in ``real/`` get none). Deeper folders keep the name
      of the first level;
    * one folder per generator, ``root/<generator>/...``, with ``labels={"laion": 0, "sd14": 1}``
      (a folder not in the mapping is an error); a real folder's name is also its source;
    * either layout under split folders: ``root/train/real/...``, ``root/val/fake/...``.
    """

    kind = "folder"

    def __init__(self, root: str | os.PathLike, *, labels: Optional[Mapping[str, int]] = None,
                 split: str = "train", caption_template: Optional[str] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist")
        self.labels = dict(labels or {})
        self.split = split
        self.caption = CaptionTemplate(caption_template)
        self._items = self._scan()

    def _label_of(self, folder: str) -> int:
        if folder in self.labels:
            return int(self.labels[folder])
        try:
            return parse_label(folder)
        except ValueError:
            raise ValueError(f"folder {folder!r} under {str(self.root)!r} is not 'real'/'fake'; pass a mapping "
                             f"such as --label-map {folder}=1 (generator folders) ") from None

    def _names(self, folder: Path, label: int, dirpath: str) -> tuple:
        """(generator, source) of the files in ``dirpath`` under class folder ``folder``."""
        rel = os.path.relpath(dirpath, folder)
        sub = None if rel == os.curdir else rel.split(os.sep)[0]
        mapped = folder.name in self.labels
        if label == 1:
            return (folder.name if mapped or sub is None else sub), ""
        return folder.name, (sub if sub is not None else (folder.name if mapped else ""))

    def _scan(self) -> List[tuple]:
        tops = sorted(p for p in self.root.iterdir() if p.is_dir())
        if tops and all(p.name.lower() in SPLIT_NAMES for p in tops):
            groups = [(p.name.lower(), c) for p in tops for c in sorted(q for q in p.iterdir() if q.is_dir())]
        else:
            groups = [(self.split, p) for p in tops]
        if not groups:
            raise ValueError(f"{str(self.root)!r} has no class or generator subfolders (expected real/ and fake/)")
        items = []
        for split, folder in groups:
            label = self._label_of(folder.name)
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames.sort()
                generator, source = self._names(folder, label, dirpath)
                for name in sorted(filenames):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        items.append((os.path.join(dirpath, name), label, generator, source, split))
        return items

    def size(self) -> int:
        return len(self._items)

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        for path, label, group, source, split in self._items[start:]:
            key = os.path.relpath(path, self.root)
            record = {"label": label, "label_name": "fake" if label else "real", "generator": group,
                      "source": source, "stem": Path(path).stem, "split": split}
            yield Sample(key=key, image=path, label=label, caption=self.caption(record),
                         generator=group, split=split, path=path, source=source)

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root.resolve()), "labels": self.labels,
                "split": self.split, "caption_template": self.caption.template}


class ManifestSource(Source):
    """A CSV or parquet table with ``path`` and ``label`` columns, and optionally ``key``,
    ``caption``, ``generator``, ``split``, ``source``, ``family`` and ``group``. Relative paths
    resolve against ``root`` (default: the manifest's folder)."""

    kind = "manifest"

    def __init__(self, path: str | os.PathLike, *, root: Optional[str] = None,
                 caption_template: Optional[str] = None, split: str = "train"):
        import pandas as pd

        self.path = Path(path)
        self.df = pd.read_parquet(self.path) if self.path.suffix == ".parquet" else pd.read_csv(self.path)
        missing = {"path", "label"} - set(self.df.columns)
        if missing:
            raise ValueError(f"manifest {str(self.path)!r} lacks column(s) {sorted(missing)}; "
                             f"it has {list(self.df.columns)}")
        self.root = Path(root) if root else self.path.parent
        self.split = split
        self.caption = CaptionTemplate(caption_template)

    def size(self) -> int:
        return len(self.df)

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        cols = list(self.df.columns)
        for row in self.df.iloc[start:].itertuples(index=False):
            rec = dict(zip(cols, row))
            p = str(rec["path"])
            full = p if os.path.isabs(p) else str(self.root / p)
            caption = self.caption(rec) if self.caption.template else optional_str(rec.get("caption"))
            yield Sample(key=str(rec.get("key", p)), image=full, label=parse_label(rec["label"]),
                         caption=caption, generator=optional_str(rec.get("generator")) or "",
                         split=optional_str(rec.get("split")) or self.split, path=full,
                         **{c: optional_str(rec.get(c)) or "" for c in ("source", "family", "group")})

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path.resolve()), "root": str(self.root.resolve()),
                "split": self.split, "caption_template": self.caption.template}


def optional_str(value: Any) -> Optional[str]:
    import pandas as pd

    with contextlib.suppress(TypeError, ValueError):  # pd.isna of a list-like is an array
        if pd.isna(value):  # None, NaN, NA
            return None
    return str(value)
