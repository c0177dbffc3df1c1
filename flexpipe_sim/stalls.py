"""Pipeline stall recovery (FlexPipe §9.3, Fig. 11) from per-request records.

The paper: a stall starts when latency exceeds 1.5x the baseline (P25 latency under normal
operation) and has recovered when latency is back within 1.2x of it. The paper does not say which
latency; ours is the per-request *normalised* latency, E2E / output tokens (seconds per token, the
usual LLM-serving measure that does not grow with output length), in arrival order. Baseline: the
run's P25 of that latency over finished requests. A stall episode starts at the arrival of the
first request above 1.5x and ends at the arrival of the next request at or below 1.2x; its recovery
time is the span between the two. Requests dropped while a stall lasts keep it going (they count as
above the threshold). An episode still open at the end of the run is reported as unrecovered.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STALL_X = 1.5  # paper §9.3
RECOVER_X = 1.2  # paper §9.3
BASELINE_Q = 25  # paper §9.3: P25 latency under normal operation


def normalized_latency(df: pd.DataFrame) -> pd.Series:
    """Seconds per output token; NaN for dropped requests."""
    fin = df.drop_reason == ""
    return (df.e2e_s / df.output_tokens.clip(lower=1)).where(fin)


def recoveries(df: pd.DataFrame) -> tuple[np.ndarray, int]:
    """(recovery times in seconds of every recovered stall, number of unrecovered stalls)."""
    if len(df) == 0:
        return np.array([]), 0
    d = df.sort_values(["arrival_s", "id"], kind="stable")
    lat = normalized_latency(d).to_numpy()
    t = d.arrival_s.to_numpy()
    ok = ~np.isnan(lat)
    if not ok.any():
        return np.array([]), 0
    base = float(np.percentile(lat[ok], BASELINE_Q))
    high = np.where(ok, lat > STALL_X * base, True)  # a dropped request is a stalled one
    low = ok & (lat <= RECOVER_X * base)
    out: list[float] = []
    start: float | None = None
    for ti, h, lo in zip(t, high, low):
        if start is None:
            if h:
                start = ti
        elif lo:
            out.append(ti - start)
            start = None
    return np.asarray(out), int(start is not None)
