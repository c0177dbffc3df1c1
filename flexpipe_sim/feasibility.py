"""Can a scenario run at all? Work bounds and memory fit, checked before anything is simulated.

Work: a mistyped rate or interval (1e12 req/s, a sample every microsecond, a 30-year horizon)
used to hang the simulator or ask numpy for terabytes. The scenario says how much work it asks
for (requests = rate x horizon, samples = run length / interval), so it is refused up front,
naming the key, the estimate and the limit. The limits are far above the paper's runs (2 h at
20 req/s: 144,000 requests, 7,500 samples) and a 1,000-GPU cluster at 250 req/s for 1 h
(900,000 requests).

Memory: every stage must hold its weights, workspace and the KV of one full-context request
(engine/transitions.py refuses less). Even one layer per stage on an empty GPU is the least any
placement can ask; a model above that can never be served.
"""

from __future__ import annotations

from typing import Any

MAX_REQUESTS = 5_000_000
MAX_STEPS = 1_000_000  # time-series samples, and policy decisions, per run
MAX_DIURNAL_CYCLES = 10_000  # the warp's grid has 512 points per cycle
GIB = 2**30


def expected_requests(sc: Any) -> tuple[float, str] | None:
    """(Expected arrivals, the key that sets them), or None where only the trace file knows."""
    a = sc.workload.arrivals
    if a.kind in ("poisson", "gamma"):
        return a.rate * sc.horizon_s, "workload.arrivals.rate"
    if a.kind == "mmpp":
        rate = a.rate if a.rate is not None else sum(r * s for r, s in zip(a.rates, a.mean_sojourn_s)) / sum(a.mean_sojourn_s)
        return rate * sc.horizon_s, "workload.arrivals.rate" if a.rate is not None else "workload.arrivals.rates"
    if a.rate is not None:
        return a.rate * (a.stream_s if a.stream_s is not None else sc.horizon_s), "workload.arrivals.rate"
    return None


def _mmpp_visits(sc: Any) -> float:
    """State visits the MMPP generator loops over: one per mean sojourn of (unscaled) time."""
    a = sc.workload.arrivals
    mean_soj = sum(a.mean_sojourn_s) / len(a.mean_sojourn_s)
    mean_rate = sum(r * s for r, s in zip(a.rates, a.mean_sojourn_s)) / sum(a.mean_sojourn_s)
    scale = 1.0 if a.rate is None else mean_rate / a.rate
    return sc.horizon_s / scale / mean_soj


def check_work(sc: Any) -> None:
    """ValueError naming the key when the scenario asks for more work than a run can hold."""
    est = expected_requests(sc)
    if est is not None and est[0] > MAX_REQUESTS:
        n, key = est
        raise ValueError(f"{key}: this asks for about {n:,.3g} requests over horizon_s={sc.horizon_s:g} s; "
                         f"the limit is {MAX_REQUESTS:,} per run (the paper's runs have 144,000)")
    if sc.workload.arrivals.kind == "mmpp" and _mmpp_visits(sc) > MAX_REQUESTS:
        raise ValueError(f"workload.arrivals.mean_sojourn_s: states this short switch about "
                         f"{_mmpp_visits(sc):,.3g} times over the horizon; the limit is {MAX_REQUESTS:,}")
    run_s = sc.horizon_s + sc.drain_s
    for key, every, what in (("outputs.sample_interval_s", sc.outputs.sample_interval_s, "time-series samples"),
                             ("engine.control_interval_s", sc.engine.control_interval_s, "policy decisions")):
        steps = run_s / every
        if steps > MAX_STEPS:
            raise ValueError(f"{key}: {every:g} s over horizon_s + drain_s = {run_s:g} s is {steps:,.3g} {what}; "
                             f"the limit is {MAX_STEPS:,} (use an interval of at least {run_s / MAX_STEPS:.3g} s)")
    d = sc.workload.diurnal
    if d is not None and sc.horizon_s / d.period_s > MAX_DIURNAL_CYCLES:
        raise ValueError(f"workload.diurnal.period_s: {d.period_s:g} s repeats {sc.horizon_s / d.period_s:,.3g} "
                         f"times over the horizon; the limit is {MAX_DIURNAL_CYCLES:,} cycles")


def min_stage_bytes(spec: Any, block_size: int, workspace_bytes: float) -> int:
    """The least memory any stage of `spec` needs: one layer (the embedding or head stage, the
    largest of them), workspace, and KV for one full-context request in whole blocks."""
    kv_tokens = -(-spec.max_context // block_size) * block_size
    ends = {(0, 1), (spec.num_layers - 1, spec.num_layers)}
    if spec.num_layers > 2:
        ends.add((1, 2))
    return max(int(spec.stage_weight_bytes(f, e) + workspace_bytes + kv_tokens * spec.kv_bytes_per_token_layer * (e - f))
               for f, e in ends)


def describe_need(spec: Any, need: int) -> str:
    kv = spec.max_context * spec.kv_bytes_per_token_layer
    return (f"even one layer per stage needs {need / GIB:,.1f} GiB (weights, workspace, and "
            f"{kv / GIB:,.1f} GiB of KV per layer for one full-context request of {spec.max_context:,} tokens)")


def check_fits(sc: Any, gpu: Any) -> None:
    """ValueError naming the model when no stage of it fits an empty GPU of the cluster's kind."""
    e = sc.engine
    usable = gpu.memory_bytes * e.gpu_memory_utilization
    for i, m in enumerate(sc.models):
        spec = m.spec()
        need = min_stage_bytes(spec, e.block_size, e.workspace_gb * GIB)
        if need > usable:
            raise ValueError(f"models.{i}: {spec.name} cannot fit on any {gpu.name}: {describe_need(spec, need)}; "
                             f"an empty GPU offers {usable / GIB:,.1f} GiB (engine.gpu_memory_utilization "
                             f"{e.gpu_memory_utilization:g} of {gpu.memory_bytes / GIB:,.0f} GiB)")
