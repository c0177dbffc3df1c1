"""Serving policies, found by name (see registry.py)."""

from . import registry
from .flexpipe import FlexPipeParams, FlexPipePolicy
from .static import StaticParams, StaticPolicy

registry.register("static", StaticParams, StaticPolicy)
registry.register("flexpipe", FlexPipeParams, FlexPipePolicy)

__all__ = ["registry"]
