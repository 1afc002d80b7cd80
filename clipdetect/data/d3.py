"""The D3 dataset (``elsaEU/ELSA_D3``) as a source: one row → one real + four fakes.

A D3 row holds one LAION image (as a URL only: ``url``), its caption ``original_prompt``,
the generation prompts ``positive_prompt``/``negative_prompt``, and four images generated
from that prompt (``image_gen0..3``, models in ``model_gen0..3``, in this order:
``DeepFloyd/IF-II-L-v1.0`` (256 px), ``CompVis/stable-diffusion-v1-4``,
``stabilityai/stable-diffusion-2-1-base``, ``stabilityai/stable-diffusion-xl-base-1.0``;
the file format of each fake is in ``filepath_gen*``: PNG, JPEG, BMP, GIF or TIFF).
:class:`D3Source` yields, per row and in this order, the real sample
(``"{id}/real"``, label 0, generator ``"real"``) and the selected fakes (``"{id}/gen{i}"``,
label 1, generator = ``model_gen{i}``), so the 5 images of a row are consecutive.

Captions (``caption_policy``):

* ``"same"`` (default): the real and all fakes of a row get ``original_prompt``. The text
  embedding is then identical within a row and carries no label information, so an
  image+text detector must find the evidence in the image.
* ``"reference"``: real ↔ ``original_prompt``, fake ↔ ``positive_prompt``, as in the
  reference implementation of the robust CLIP detector. The two prompts differ
  systematically (the generation prompt is a rewritten caption), so the text channel
  alone separates the classes: a detector trained this way partly learns the caption
  style, not the image. Use it only to reproduce published numbers, next to a
  text-only baseline that measures the leak.

Real images: from ``reals_dir`` (files named by row id, any image extension, searched
recursively), else from a :class:`~clipdetect.data.fetch.FetchStore` (``store``; bytes fetched
earlier with ``clipdetect fetch --d3 ...``), fetched on the fly from ``url``
when ``fetch_reals``. A real that is unavailable is still yielded, with a
:class:`MissingImage` that the decoder reports as ``real_missing`` in the error ledger:
the fakes are extracted and the missing reals are counted.

A fake that a row lacks (no bytes, or empty bytes) is yielded as a :class:`MissingImage`
too, counted as ``fake_missing``.

Generators are selected by full name (``"stabilityai/stable-diffusion-2-1-base"``, case
insensitive), by alias (``if``, ``sd14``, ``sd21``, ``sdxl``: the four full names above) or by
column (``gen0``..``gen3``); an unknown name is refused with the list of valid ones.

Splits: on the hub, ``train`` is the files ``data/train-*`` and ``data/val-*`` (2,300,000 +
6,629 rows) and ``validation`` is ``data/validation-*`` (4,800 rows). A local folder or glob
is filtered the same way by file name (:func:`~clipdetect.data.d3_layout.split_files`), so the
splits never mix.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from clipdetect.data.d3_layout import ALIASES, N_GEN, split_files
from clipdetect.data.d3_reals import D3RealImages, MissingImage
from clipdetect.data.hf import load_hf_dataset, parquet_files
from clipdetect.data.sources import Sample, Source, optional_str

_COLUMNS = {f"gen{i}" for i in range(N_GEN)}
CAPTION_POLICIES = ("same", "reference")
BASE_COLUMNS = ("id", "original_prompt", "url")


def _reopen(name_or_path: str, kwargs: Dict[str, Any]) -> "D3Source":
    return D3Source(name_or_path, **kwargs)


class D3Source(D3RealImages, Source):
    """Rows of D3 → samples (see the module docstring). ``name_or_path``: a hub name, or a
    parquet file / glob / folder with the D3 columns."""

    kind = "d3"
    OPTIONS = ("split", "generators", "caption_policy", "reals_dir", "fetch_reals", "streaming", "store",
               "include_real", "fetch_workers", "fetch_timeout", "fetch_retries", "fetch_backoff",
               "retry_failed", "fetch_window")

    def __init__(self, name_or_path: str, *, split: str = "train",
                 generators: Union[str, Sequence[str], None] = None, caption_policy: str = "same",
                 reals_dir: Optional[str] = None, fetch_reals: bool = False, streaming: bool = False,
                 store: Any = None, include_real: bool = True, fetch_workers: int = 16,
                 fetch_timeout: Union[float, Tuple[float, float]] = (5.0, 20.0), fetch_retries: int = 2,
                 fetch_backoff: float = 1.0, retry_failed: bool = False, fetch_window: int = 256):
        from clipdetect.data.fetch import FetchStore, default_store_root

        if caption_policy not in CAPTION_POLICIES:
            raise ValueError(f"caption_policy {caption_policy!r} is not one of {CAPTION_POLICIES}")
        if reals_dir is not None and not os.path.isdir(reals_dir):
            raise FileNotFoundError(f"reals_dir {reals_dir!r} is not a folder")
        if isinstance(generators, str):
            generators = generators.split(",")
        self.name_or_path, self.split, self.streaming = name_or_path, split, bool(streaming)
        self.generators = [g.strip() for g in generators if g.strip()] or None if generators else None
        self.caption_policy, self.include_real = caption_policy, bool(include_real)
        self.reals_dir, self.fetch_reals = reals_dir, bool(fetch_reals)
        if store is None and fetch_reals:
            store = default_store_root()
        if store is not None and not isinstance(store, FetchStore):
            store = FetchStore(store)
        self.store = store
        self.fetch_opts = dict(workers=int(fetch_workers), timeout=fetch_timeout, retries=int(fetch_retries),
                               backoff=float(fetch_backoff), retry_failed=bool(retry_failed), progress=False)
        self.fetch_window = max(1, int(fetch_window))
        self._kwargs = dict(split=split, generators=self.generators, caption_policy=caption_policy,
                            reals_dir=reals_dir, fetch_reals=fetch_reals, streaming=streaming,
                            store=None if self.store is None else str(self.store.root),
                            include_real=include_real, fetch_workers=fetch_workers,
                            fetch_timeout=fetch_timeout, fetch_retries=fetch_retries,
                            fetch_backoff=fetch_backoff, retry_failed=retry_failed, fetch_window=fetch_window)
        self._reals_index: Optional[Dict[str, str]] = None
        self._base = os.path.basename(name_or_path.rstrip("/"))
        self.ds = self._load()
        self._offsets = None if self.streaming else self._row_offsets()
        if self.streaming and self.generators is not None:
            models = self.ds.select_columns([f"model_gen{i}" for i in range(N_GEN)])
            first = next(iter(models), None) or {}
            self._check_generators({v for v in first.values() if v})  # the models of the first row

    def __reduce__(self):  # reopen on the other side instead of pickling the dataset object
        return _reopen, (self.name_or_path, self._kwargs)

    # ------------------------------------------------------------ loading
    def _load(self):
        import datasets

        ds = load_hf_dataset(self.name_or_path, split=self.split, streaming=self.streaming,
                             files=split_files(self.name_or_path, self.split),
                             offline_hint="download the parquet files (huggingface-cli download elsaEU/ELSA_D3 "
                                          "--repo-type dataset) and pass d3:/path/to/ELSA_D3/data --split train")
        cols = set(ds.features or {})
        need = set(BASE_COLUMNS) | {f"{c}_gen{i}" for c in ("model", "image") for i in range(N_GEN)}
        need |= {"positive_prompt"} if self.caption_policy == "reference" else set()
        if cols and need - cols:
            raise ValueError(f"{self.name_or_path!r} is not D3-shaped: it lacks {sorted(need - cols)}")
        for i in range(N_GEN):
            if f"image_gen{i}" in cols:
                ds = ds.cast_column(f"image_gen{i}", datasets.Image(decode=False))
        return ds

    def _matches(self, model: Optional[str], i: int) -> bool:
        if self.generators is None:
            return True
        cols, models = self._wanted
        return i in cols or (model or "").lower() in models

    @functools.cached_property
    def _wanted(self) -> Tuple[set, set]:
        """(columns, lower-cased full model names) that ``generators`` select; aliases resolved
        (computed once: it is read for every generated image of every row)."""
        cols = {int(g[3:]) for g in self.generators if g.lower() in _COLUMNS}
        models = {ALIASES.get(g.lower(), g).lower() for g in self.generators if g.lower() not in _COLUMNS}
        return cols, models

    def _check_generators(self, available: set) -> None:
        """Refuse a generator name that selects nothing, naming the valid ones."""
        have = {m.lower() for m in available}
        bad = [g for g in self.generators
               if g.lower() not in _COLUMNS and ALIASES.get(g.lower(), g).lower() not in have]
        if bad:
            aliases = ", ".join(f"{a} = {m}" for a, m in ALIASES.items())
            raise ValueError(f"generator(s) {bad} match no model in {self.name_or_path!r}. Valid names: a model it has "
                             f"{sorted(available)}, an alias ({aliases}) or a column (gen0..gen3)")

    def _row_offsets(self) -> np.ndarray:
        """Cumulative samples per row: position p lives in row searchsorted(offsets, p)."""
        n = len(self.ds)
        if self.generators is None:
            counts = np.full(n, int(self.include_real) + N_GEN, dtype=np.int64)
        else:
            import pyarrow as pa
            import pyarrow.compute as pc

            counts = np.full(n, int(self.include_real), dtype=np.int64)
            available = set()
            for i in range(N_GEN):
                col = self.ds.data.column(f"model_gen{i}")
                names = pc.unique(col).to_pylist()
                available.update(v for v in names if v)
                keep = [v for v in names if self._matches(v, i)]
                if keep:
                    mask = pc.fill_null(pc.is_in(col, value_set=pa.array(keep, pa.string())), False)
                    counts += np.asarray(mask.to_numpy(zero_copy_only=False), dtype=np.int64)
            self._check_generators(available)
        return np.concatenate([[0], np.cumsum(counts)])

    # ------------------------------------------------------------ Source API
    def rows(self) -> Optional[int]:
        return None if self.streaming else len(self.ds)

    def size(self) -> Optional[int]:
        return None if self._offsets is None else int(self._offsets[-1])

    def urls(self) -> Iterator[str]:
        """The real images' URLs, in row order (reads only the url column when it can)."""
        if self.streaming:
            yield from (rec["url"] for rec in self.ds.select_columns(["url"]))
        else:
            for chunk in self.ds.data.column("url").chunks:
                yield from chunk.to_pylist()

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        if self._offsets is not None:
            row = int(np.searchsorted(self._offsets, start, side="right") - 1) if start else 0
            if row >= len(self.ds):
                return
            skip = start - int(self._offsets[row])
            rows = self.ds.select(range(row, len(self.ds))) if row else self.ds
        else:
            stride = int(self.include_real) + N_GEN
            row, skip = (divmod(start, stride) if self.generators is None else (0, start))
            rows = self.ds.skip(row) if row else self.ds
        for r, rec in self._prefetched(enumerate(rows, row), row):
            samples = self.row_samples(r, rec)
            if skip:
                dropped = min(skip, len(samples))
                samples, skip = samples[dropped:], skip - dropped
            yield from samples

    def row_samples(self, r: int, rec: Dict[str, Any]) -> List[Sample]:
        """The samples of one D3 row (real first, then the selected fakes)."""
        rid = str(rec["id"])
        caption = optional_str(rec.get("original_prompt"))
        fake_caption = caption if self.caption_policy == "same" else optional_str(rec.get("positive_prompt"))
        out = []
        if self.include_real:
            url = optional_str(rec.get("url")) or ""
            out.append(Sample(key=f"{rid}/real", image=self._real_image(rid, url), label=0, caption=caption,
                              generator="real", split=self.split, path=url))
        for i in range(N_GEN):
            model = optional_str(rec.get(f"model_gen{i}"))
            if not self._matches(model, i):
                continue
            img = rec.get(f"image_gen{i}")
            data = img.get("bytes") if isinstance(img, dict) else img
            path = optional_str(rec.get(f"filepath_gen{i}")) or f"{self._base}#{r}/gen{i}"
            if not data:  # None or empty: the row lacks this fake, unless it points at a local file
                local = img.get("path") if isinstance(img, dict) else None
                data = local if local and os.path.isfile(local) else MissingImage(
                    "fake_missing", f"row {rid}: no image_gen{i}")
            out.append(Sample(key=f"{rid}/gen{i}", image=data, label=1, caption=fake_caption,
                              generator=model or f"gen{i}", split=self.split, path=path))
        return out

    def describe(self) -> Dict[str, Any]:
        """The run identity: which samples, in which order, with which captions. Where the
        real images come from (folder, store, fetching) is left out on purpose, so that a
        run resumed with reals added continues instead of starting a duplicate run in the
        same cache; to re-extract with more reals, use a new output folder."""
        name = os.path.abspath(self.name_or_path) if parquet_files(self.name_or_path) is not None else self.name_or_path
        return {"kind": self.kind, "name_or_path": name, "split": self.split, "generators": self.generators,
                "caption_policy": self.caption_policy, "include_real": self.include_real}
