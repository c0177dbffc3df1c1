"""Per-request records and GPU samples -> tables and a summary (DESIGN.md "Metrics").

TTFT = first token - arrival. TPOT = (finish - first token) / (output tokens - 1), for requests with
more than one output token. E2E = finish - arrival. A request meets its SLO when it finished with
TTFT <= ttft_s and TPOT <= tpot_s (a one-token request has no TPOT and is judged on TTFT alone).
Goodput = requests that met their SLO per second of the arrival horizon. GPU reservation = the
always-on floor (fewest GPUs allocated at any sample after the first launch) as % of the peak.
Resource efficiency = goodput per average allocated GPU (the paper gives no formula, §9.4).
Warm-up (`warmup_s`): requests arriving before it are not measured (dropped from the frame) and the
GPU figures start at it; rates divide by the measured span, horizon - warm-up.

Latency breakdown (Fig. 8), four parts that sum to E2E for every finished request:
  queue      = first admission - arrival: waiting in the gateway and the instance queue;
  compute    = stage compute on the request's critical path, summed over its steps;
  comm       = activation hops and token return, summed over its steps;
  batch wait = the rest, E2E - queue - compute - comm: time admitted but not on the critical path
               of a step of its own (pipeline bubbles, other micro-batches' turns, waiting for a
               slot, re-queueing and recompute after a preemption).

Per model: SLO attainment of each model, their unweighted mean (`slo_attainment_model_mean`: a
policy that starves a rare model cannot hide it behind the request-weighted figure), and a flag
for every model a policy leaves unserved: fewer than UNSERVED_BELOW of its requests met the SLO
(finished share is never below SLO attainment, so this also catches models it drops).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .engine.simulator import RawResults

SCHEMA_VERSION = 1
_PCTS = (50, 90, 99)
# A model is "unserved" when under 10% of its requests met the SLO. Our choice (the paper is
# silent), well below any attainment a serving system would call serving a model; it flags
# static's OPT-66B at 0-3.5% in the paper scenarios (fidelity audit, cause 3).
UNSERVED_BELOW = 0.10


def requests_frame(raw: RawResults) -> pd.DataFrame:
    """One row per request, the schema shared by the simulator and the live backend."""
    df = raw.requests.frame().sort_values("id", kind="stable", ignore_index=True)
    df = df[df.arrival_s >= raw.scenario.warmup_s].reset_index(drop=True)  # warm-up is not measured
    slo = {m.name: (m.slo.ttft_s, m.slo.tpot_s) for m in raw.scenario.models}
    df["ttft_s"] = df.first_token_s - df.arrival_s
    df["e2e_s"] = df.finish_s - df.arrival_s
    multi = df.output_tokens > 1
    df["tpot_s"] = np.where(multi, (df.finish_s - df.first_token_s) / (df.output_tokens - 1).clip(lower=1), np.nan)
    df["queue_s"] = df.admitted_s - df.arrival_s  # gateway + instance queue, up to the first admission
    # admitted but off the critical path: bubbles, other micro-batches, preemption and recompute
    df["batch_wait_s"] = df.e2e_s - df.queue_s - df.compute_s - df.comm_s
    ttft_slo = df.model.map(lambda m: slo[m][0])
    tpot_slo = df.model.map(lambda m: slo[m][1])
    finished = df.drop_reason == ""
    df["met_slo"] = finished & (df.ttft_s <= ttft_slo) & (~multi | (df.tpot_s <= tpot_slo))
    return df


def timeseries_frame(raw: RawResults) -> pd.DataFrame:
    ts = pd.DataFrame(raw.samples)
    ts = ts[ts.time_s >= raw.scenario.warmup_s].reset_index(drop=True)  # warm-up is not measured
    dt = ts.time_s.diff()
    ts["gpu_busy_frac"] = (ts.busy_gpu_s.diff() / (dt * ts.gpus_allocated.where(ts.gpus_allocated > 0))).clip(0, 1)
    return ts


def _stats(x: pd.Series) -> dict[str, float | None]:
    v = x.dropna().to_numpy()
    if len(v) == 0:
        return {"mean": None, **{f"p{p}": None for p in _PCTS}}
    out: dict[str, float | None] = {"mean": float(v.mean())}
    for p, q in zip(_PCTS, np.percentile(v, _PCTS)):
        out[f"p{p}"] = float(q)
    return out


def _round(obj: Any) -> Any:
    """Round floats so summaries are stable text (and byte-identical for the same seed)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def _block(df: pd.DataFrame, horizon_s: float) -> dict[str, Any]:
    fin = df[df.drop_reason == ""]
    return {
        "requests": int(len(df)),
        "finished": int(len(fin)),
        "dropped": int(len(df) - len(fin)),
        "ttft_s": _stats(fin.ttft_s),
        "tpot_s": _stats(fin.tpot_s),
        "e2e_s": _stats(fin.e2e_s),
        "breakdown_mean_s": {
            "queue": float(fin.queue_s.mean()) if len(fin) else None,
            "batch_wait": float(fin.batch_wait_s.mean()) if len(fin) else None,
            "compute": float(fin.compute_s.mean()) if len(fin) else None,
            "comm": float(fin.comm_s.mean()) if len(fin) else None,
        },
        "slo_attainment": float(df.met_slo.mean()) if len(df) else None,
        "goodput_rps": float(df.met_slo.sum() / horizon_s),
        "throughput_rps": float(len(fin) / horizon_s),
        "preemptions": int(df.preemptions.sum()),
    }


def model_slo(df: pd.DataFrame) -> tuple[float | None, list[str]]:
    """(unweighted mean over models of their SLO attainment, models under UNSERVED_BELOW)."""
    slo = df.groupby("model", sort=True).met_slo.mean()
    return (float(slo.mean()) if len(slo) else None), [str(m) for m in slo.index if slo[m] < UNSERVED_BELOW]


def model_slo_columns(summary: dict, models: list[str]) -> dict[str, float | None]:
    """`slo_<model>`: each model's SLO attainment (a one-model run has no per-model block: overall)."""
    per = summary["per_model"]
    return {f"slo_{m}": per[m]["slo_attainment"] if m in per else
            (summary["overall"]["slo_attainment"] if len(models) == 1 else None) for m in models}


def summarize(raw: RawResults, df: pd.DataFrame, ts: pd.DataFrame) -> dict[str, Any]:
    sc = raw.scenario
    horizon = sc.horizon_s - sc.warmup_s  # the measured span of arrivals
    alloc = ts.gpus_allocated.to_numpy()
    t = ts.time_s.to_numpy()
    gpu_s = float(np.sum(alloc[:-1] * np.diff(t))) if len(t) > 1 else 0.0
    after = alloc[np.argmax(alloc > 0):] if (alloc > 0).any() else alloc
    peak = int(alloc.max()) if len(alloc) else 0
    floor = int(after.min()) if len(after) else 0
    # own stage work, without interference; measured from the first sample (after any warm-up)
    busy = float(ts.busy_gpu_s.iloc[-1] - ts.busy_gpu_s.iloc[0]) if len(ts) else 0.0
    interference = (float(ts.interference_gpu_s.iloc[-1] - ts.interference_gpu_s.iloc[0])
                    if len(ts) and "interference_gpu_s" in ts else 0.0)
    overall = _block(df, horizon)
    span = raw.end_s - sc.warmup_s
    avg_gpus = gpu_s / span if span > 0 else 0.0
    drops = df.drop_reason[df.drop_reason != ""].value_counts().to_dict()
    overall["slo_attainment_model_mean"], unserved = model_slo(df)
    blocks = {m: _block(g, horizon) for m, g in df.groupby("model", sort=True)} if len(sc.models) > 1 else {}
    for m, b in blocks.items():
        b["unserved"] = m in unserved
    # warm-up events are not measured either (the warm burst test counts refactors of its window)
    refactors = [r for r in raw.refactors if r["requested_s"] >= sc.warmup_s]
    launches = [x for x in raw.launches if x["requested_s"] >= sc.warmup_s]
    summary = {
        "schema_version": SCHEMA_VERSION,
        "scenario": sc.name,
        "policy": sc.policy.name,
        "seed": sc.seed,
        "horizon_s": sc.horizon_s,
        **({"warmup_s": sc.warmup_s} if sc.warmup_s else {}),
        "simulated_s": raw.end_s,
        "overall": overall,
        "per_model": blocks,
        "unserved_models": unserved,
        "unserved_below_slo": UNSERVED_BELOW,
        "drop_reasons": {k: int(v) for k, v in sorted(drops.items())},
        "gpus": {
            "cluster": len(raw.cluster.gpus),
            "peak_allocated": peak,
            "always_on": floor,
            "reservation_pct_of_peak": 100.0 * floor / peak if peak else None,
            "allocated_gpu_s": gpu_s,
            "busy_gpu_s": busy,
            "busy_frac_of_allocated": busy / gpu_s if gpu_s else None,
            "interference_gpu_s": interference,  # extra GPU time tenant SM time-slicing cost our stages
            "resource_efficiency_goodput_per_gpu": overall["goodput_rps"] / avg_gpus if avg_gpus else None,
        },
        "refactors": {
            "count": len(refactors),
            "pause_s_mean": float(np.mean([r["pause_s"] for r in refactors])) if refactors else None,
            "pause_s_max": float(np.max([r["pause_s"] for r in refactors])) if refactors else None,
            "duration_s_mean": float(np.mean([r["duration_s"] for r in refactors])) if refactors else None,
            "kv_gb_total": float(sum(r["kv_bytes"] for r in refactors) / 1e9),
        },
        "instances": {
            "launched": len(launches),
            "rejected_actions": len(raw.rejected),
            "cold_starts": int(sum(1 for x in launches if x["cold_stages"] and x["load_s"] > 0)),
        },
        "cost_models": raw.cost_models,
        "notes": raw.notes + ([f"warm-up: requests arriving before {sc.warmup_s:g} s and GPU time before it "
                               f"are excluded from the request, SLO and GPU figures (measured: {horizon:g} s of arrivals)"]
                              if sc.warmup_s else []),
    }
    if getattr(raw, "switches", None) is not None:  # mixed-cluster runs (heterosim.py): what each switch cost
        from .switchcost import summary_block

        summary["switches"] = summary_block([r for r in raw.switches if r["requested_s"] >= sc.warmup_s])
    # Wall-clock numbers vary between runs; they go to run_info (see `run_info`), so that
    # summary.json is byte-identical for the same scenario and seed.
    return _round(summary)


def run_info(raw: RawResults) -> dict[str, Any]:
    d = raw.decide_wall_s
    return {
        "wall_s": round(raw.wall_s, 3),
        "simulated_requests_per_wall_s": round(len(raw.requests) / raw.wall_s, 1) if raw.wall_s > 0 else None,
        "policy_decision_ms": {
            "mean": round(1e3 * float(np.mean(d)), 4) if d else None,
            "max": round(1e3 * float(np.max(d)), 4) if d else None,
        },
        "warnings": list(raw.warnings),
    }
