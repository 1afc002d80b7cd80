"""Validation of JSON read from disk against a table of fields, before anything is built from it.

A format declares its fields once, as a dict ``{name: Field(...)}`` (types, required or not,
null allowed or not, numeric ranges, choices, size bounds, nested tables); :func:`validate`
walks a parsed document and raises one line naming the first bad field by its dotted path::

    detector.json: head_config.depth = 200000 is out of range [1, 64]

Numbers must be finite; ``bool`` is not an ``int``; an ``int`` is a ``float``. Unknown keys
are allowed in a table only where its ``extra`` says so (formats that always tolerated them).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Type

__all__ = ["Field", "validate", "SchemaError"]

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               dict: "an object", list: "a list"}


class SchemaError(ValueError):
    """A document that does not match its table; the message names the field."""


@dataclass(frozen=True)
class Field:
    """One field: its JSON ``type`` (int, float, str, bool, dict or list) and its bounds.

    ``lo``/``hi``: inclusive numeric range (``lo_open``/``hi_open`` make an end exclusive);
    ``choices``: allowed values; ``max_len``: most characters / items / keys; ``pattern``: a
    regular expression a string must match in full; ``fields``: the table of a nested object
    (``extra``: whether keys outside it are allowed); ``items``: the field every list item or
    (without ``fields``) every object value must match.
    """

    type: type
    required: bool = False
    nullable: bool = False
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    choices: Optional[Tuple[Any, ...]] = None
    max_len: Optional[int] = None
    pattern: Optional[str] = None
    fields: Optional[Mapping[str, "Field"]] = None
    extra: bool = True
    items: Optional["Field"] = None


def _fail(error: Type[Exception], what: str, where: str, message: str):
    raise error(f"{what}: {where} {message}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


def _check_number(value, spec: Field, where: str, what: str, error) -> None:
    if not math.isfinite(value):
        _fail(error, what, where, f"= {_show(value)} is not a finite number")
    lo_bad = spec.lo is not None and (value < spec.lo or (spec.lo_open and value == spec.lo))
    hi_bad = spec.hi is not None and (value > spec.hi or (spec.hi_open and value == spec.hi))
    if lo_bad or hi_bad:
        lo = "-inf" if spec.lo is None else _number(spec.lo)
        hi = "inf" if spec.hi is None else _number(spec.hi)
        rng = f"{'(' if spec.lo_open else '['}{lo}, {hi}{')' if spec.hi_open else ']'}"
        _fail(error, what, where, f"= {_show(value)} is out of range {rng}")


def validate(doc: Any, spec: Field | Mapping[str, Field], *, what: str = "document", where: str = "",
             error: Type[Exception] = SchemaError) -> Any:
    """Check ``doc`` against ``spec`` (a :class:`Field`, or a table for a top-level object);
    returns ``doc`` unchanged or raises ``error`` naming the first bad field."""
    if not isinstance(spec, Field):
        spec = Field(dict, required=True, fields=spec)
    name = where or "the file"
    if doc is None:
        if not spec.nullable:
            _fail(error, what, name, f"is null, expected {_TYPE_NAMES[spec.type]}")
        return doc
    ok = (isinstance(doc, (int, float)) and not isinstance(doc, bool) if spec.type is float else
          isinstance(doc, int) and not isinstance(doc, bool) if spec.type is int else isinstance(doc, spec.type))
    if not ok:
        _fail(error, what, name, f"= {_show(doc)} is {type(doc).__name__}, expected {_TYPE_NAMES[spec.type]}")
    if spec.type in (int, float):
        _check_number(doc, spec, name, what, error)
    if spec.choices is not None and doc not in spec.choices:
        _fail(error, what, name, f"= {_show(doc)} is not one of {list(spec.choices)}")
    if spec.max_len is not None and spec.type in (str, list, dict) and len(doc) > spec.max_len:
        _fail(error, what, name, f"holds {len(doc):,} {'characters' if spec.type is str else 'entries'}, "
                                 f"more than {spec.max_len:,}")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, doc):
        _fail(error, what, name, f"= {_show(doc)} is not an allowed name (pattern {spec.pattern})")
    if spec.type is dict:
        _check_object(doc, spec, where, what, error)
    elif spec.type is list and spec.items is not None:
        for i, item in enumerate(doc):
            validate(item, spec.items, what=what, where=f"{where}[{i}]", error=error)
    return doc


def _check_object(doc: dict, spec: Field, where: str, what: str, error) -> None:
    prefix = f"{where}." if where else ""
    if spec.fields is not None:
        for key, field in spec.fields.items():
            if key in doc:
                validate(doc[key], field, what=what, where=prefix + key, error=error)
            elif field.required:
                _fail(error, what, prefix + key, "is missing")
        if not spec.extra:
            unknown = sorted(str(k) for k in doc if k not in spec.fields)
            if unknown:
                _fail(error, what, where or "the file", f"has unknown field(s) {unknown}; expected a subset "
                                                        f"of {sorted(spec.fields)}")
    elif spec.items is not None:
        for key, value in doc.items():
            validate(value, spec.items, what=what, where=prefix + str(key), error=error)
