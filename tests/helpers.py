"""Shared test helpers."""

from __future__ import annotations

import copy


def small_raw(**changes) -> dict:
    """A fast scenario (a few hundred requests) as a raw dict; `changes` are dotted-key overrides."""
    raw = {
        "name": "small",
        "seed": 3,
        "horizon_s": 60,
        "drain_s": 120,
        "cluster": {"servers": 8, "gpus": 16, "gpu": "a100-80gb"},
        "models": [{"name": "llama2-7b", "slo": {"ttft_s": 2.0, "tpot_s": 0.1}}],
        "workload": {"arrivals": {"kind": "gamma", "rate": 4.0, "cv": 2.0}, "lengths": "azure-conv"},
        "policy": {"name": "static", "params": {"stages": 2}},
        "outputs": {"format": "csv", "plots": False},
    }
    raw = copy.deepcopy(raw)
    for key, value in changes.items():
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        node[parts[-1]] = value
    return raw
