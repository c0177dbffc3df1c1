"""Numbers are numbers: YAML `true` must not become 1 and `.inf` must not become a horizon.

Pydantic's lax mode turns booleans into 0/1 for int and float fields (`horizon_s: true` ran as
1 s). Numeric strings stay accepted on purpose: PyYAML reads `1e9` as the string '1e9'.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any


def is_numeric(annotation: Any) -> bool:
    """Whether a field's type admits int or float (directly, in a union, a list, or Annotated)."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return is_numeric(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple):
        return any(is_numeric(a) for a in typing.get_args(annotation) if a is not bool)
    return False


def bad_number(value: Any) -> str | None:
    """Why `value` (or an item of a list) cannot stand for a number here, else None."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, bool):
            return f"expected a number, got {str(v).lower()} (a boolean is not a number)"
        if isinstance(v, float) and not math.isfinite(v):
            return f"expected a finite number, got {v}"
    return None
