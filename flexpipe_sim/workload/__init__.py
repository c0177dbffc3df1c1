"""Workload: when requests arrive, which model they ask for, and how long they are."""

from .generate import Workload, build_workload

__all__ = ["Workload", "build_workload"]
