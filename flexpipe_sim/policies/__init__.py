"""Serving policies, found by name (see registry.py)."""

from . import registry
from .static import StaticParams, StaticPolicy

registry.register("static", StaticParams, StaticPolicy)

__all__ = ["registry"]
