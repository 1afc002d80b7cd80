"""Config dataclasses from JSON: one place that checks field names."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Type, TypeVar

__all__ = ["from_dict", "check_fields"]

T = TypeVar("T")


def check_fields(cls: type, keys, *, what: str | None = None) -> None:
    """Raise ``ValueError`` naming every key of ``keys`` that is not a field of dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ValueError(f"unknown {what or cls.__name__} field(s) {unknown}; expected a subset of {sorted(known)}")


def from_dict(cls: Type[T], data: Mapping[str, Any], *, what: str | None = None) -> T:
    """``cls(**data)`` for a dataclass, refusing unknown fields with the list of known ones."""
    check_fields(cls, data, what=what)
    return cls(**dict(data))
