"""What every experiment shares: where its data is, provenance in every result, atomic writes.

Data lives under one folder, named by ``--data DIR`` where a script takes it, else by the
``CLIPDETECT_DATA`` environment variable (:func:`data_root`); nothing defaults to a path of the
machines the experiments first ran on. Every result goes through :func:`save_json`,
:func:`save_text` or :func:`save_csv`: written atomically by :mod:`clipdetect.core.io` and
stamped with :func:`clipdetect.core.provenance.provenance` (git commit, package version, argv,
date). Run the scripts from the repository root with the package installed
(``pip install -e .``) or ``PYTHONPATH=.``; a script's sibling modules import as they are.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from clipdetect.core.io import write_csv, write_json, write_text
from clipdetect.core.provenance import provenance

#: the environment variable naming the data folder when a script is given no ``--data``
DATA_ENV = "CLIPDETECT_DATA"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def data_root(given: Optional[str | os.PathLike] = None) -> Path:
    """``given`` (a ``--data`` value), else ``$CLIPDETECT_DATA``; a clear error when neither is set."""
    root = given or os.environ.get(DATA_ENV)
    if not root:
        raise SystemExit(f"name the data folder with the {DATA_ENV} environment variable "
                         "(or --data DIR where the script has that option; see its --help)")
    return Path(root)


def add_data_arg(ap) -> None:
    ap.add_argument("--data", type=Path, default=os.environ.get(DATA_ENV),
                    help=f"the data folder (default ${DATA_ENV})")


def stamped(doc: Any) -> dict:
    """``doc`` (a dict, or any value under ``"result"``) with a ``provenance`` entry."""
    body = dict(doc) if isinstance(doc, dict) else {"result": doc}
    return {**body, "provenance": provenance()}


def save_json(path: str | os.PathLike, doc: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, stamped(doc))


def provenance_comment() -> str:
    return f"<!-- provenance: {json.dumps(provenance(), sort_keys=True)} -->\n"


def save_text(path: str | os.PathLike, text: str) -> None:
    """Markdown (or any text that allows an HTML comment) with the provenance as its last line."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text.rstrip("\n") + "\n\n" + provenance_comment())


def save_csv(path: str | os.PathLike, df) -> None:
    """The table as CSV, and its provenance beside it in ``<path>.provenance.json``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, df)
    write_json(f"{path}.provenance.json", provenance())


def in_data(*parts: str) -> Path:
    """``parts`` inside the data folder ($CLIPDETECT_DATA): what a file argument left out defaults to."""
    return data_root().joinpath(*parts)


def cifake_parquet() -> str:
    """The CIFAKE parquet the benchmarks decode (``cifake_dev.parquet`` in the data folder)."""
    return str(in_data("cifake_dev.parquet"))


def b16_backbone() -> str:
    """Real CLIP ViT-B/16 weights in the data folder (``weights/clip_b16.pt``; see experiments/README.md)."""
    return f"ViT-B-16-quickgelu:{in_data('weights', 'clip_b16.pt')}"
