"""Text that came from outside (file names, manifest keys, generator names, paths) made safe
for the files the toolkit writes: the one helper every CSV and Markdown writer uses.

* CSV: a cell a spreadsheet would run as a formula — one starting (after blanks) with ``=``,
  ``+``, ``-``, ``@``, a tab, a carriage return, or their full-width forms — is prefixed with
  ``'`` (the OWASP rule), so Excel, LibreOffice and Google Sheets show it as text. Numbers are
  left alone (a negative score stays a number). :func:`csv_cell`, :func:`csv_row`, :func:`csv_safe`.
* Markdown: :func:`md_text` escapes what would change the document (``|`` ends a table cell,
  ``[`` and ``]`` make links such as ``javascript:`` ones, backquotes open code, a backslash
  would undo an escape) and turns ``<``, ``>`` and ``&`` into HTML entities, so no raw HTML
  survives; line breaks become spaces. Emphasis characters are left alone (cosmetic only).
  :func:`md_code` shows a value as inline code (names and paths), with a fence it cannot close.
* JSON: :func:`plain_json` turns NaN and infinities into null (strict JSON), numpy values into
  Python ones.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping

__all__ = ["csv_cell", "csv_row", "csv_safe", "md_text", "md_code", "plain_json", "FORMULA_STARTS"]

#: first characters that make a spreadsheet evaluate a cell (ASCII and full-width forms)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_BLANKS = " \u00a0\u3000\x0b\x0c"
_MD_ESCAPE = re.compile(r"([\\`\[\]|])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def csv_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would execute; others unchanged."""
    if isinstance(value, str) and (value[:1] in FORMULA_STARTS or value.lstrip(_BLANKS)[:1] in FORMULA_STARTS):
        return "'" + value
    return value


def csv_row(row: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: csv_cell(v) for k, v in row.items()}


def csv_safe(df):
    """A copy of DataFrame ``df`` whose text cells and column names are :func:`csv_cell`-safe."""
    from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

    out = df.rename(columns=lambda c: csv_cell(c) if isinstance(c, str) else c)
    for col in out.columns:
        dtype = out[col].dtype
        if not (is_numeric_dtype(dtype) or is_bool_dtype(dtype) or is_datetime64_any_dtype(dtype)):
            out[col] = out[col].astype(object).map(csv_cell)  # text of any dtype: object, str, string, category
    return out


def md_text(value: Any) -> str:
    """``value`` as Markdown text that renders as itself: no table break, link, emphasis or HTML."""
    text = " ".join(str(value).splitlines()) if value is not None else ""
    text = "".join(_HTML.get(ch, ch) for ch in text)
    return _MD_ESCAPE.sub(r"\\\1", text)


def md_code(value: Any) -> str:
    """``value`` as inline code: a fence of more backquotes than any run inside, ``|`` escaped
    for tables, line breaks as spaces (HTML inside a code span is shown, not rendered)."""
    text = " ".join(str(value).splitlines()).replace("|", r"\|")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plain_json(obj: Any) -> Any:
    """Strict JSON values: NaN and infinities become null, numpy (and torch) scalars and arrays
    Python numbers and lists, tuples lists, keys strings."""
    if isinstance(obj, dict):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return plain_json(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
