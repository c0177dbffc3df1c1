"""The arrival statistics policies see (Simulation._arrival_stats: rate, inter-arrival CV, trend over
the last stats window), read as a slice of each model's sorted arrival times, equal at every
controller tick those of the straightforward form: a window of released arrival times (a deque,
the oldest dropped as they leave it) and numpy over a copy of it."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from flexpipe_sim.engine.simulator import SLOPE_Z, Simulation
from flexpipe_sim.scenario import parse_scenario

from .helpers import small_raw


def _reference(q: deque, now: float, win: float) -> tuple[float, float, float]:
    while q and q[0] < now - win:
        q.popleft()
    rate = len(q) / win
    if len(q) < 3:
        return rate, 0.0, 0.0
    t = np.fromiter(q, float)
    iat = np.diff(t)
    cv = float(iat.std() / iat.mean()) if iat.mean() > 0 else 0.0
    if now < win:
        return rate, cv, 0.0
    late = int((t >= now - win / 2).sum())
    early = len(q) - late
    z = (late - early) / math.sqrt(late + early)
    return rate, cv, float((late - early) / (win / 2) / max(rate, 1e-9) / (win / 2) if abs(z) >= SLOPE_Z else 0.0)


def test_arrival_stats_equal_the_window_recomputed():
    sc = parse_scenario(small_raw(**{
        "models": [{"name": "llama2-7b", "share": 3, "slo": {"ttft_s": 2.0, "tpot_s": 0.1}},
                   {"name": "llama2-13b", "share": 1, "slo": {"ttft_s": 2.0, "tpot_s": 0.2}}],
        "workload.arrivals": {"kind": "gamma", "rate": 6.0, "cv": 4.0}, "horizon_s": 60, "seed": 5,
        "engine.stats_window_s": 7.5}))
    sim = Simulation(sc)
    queues = {m: deque() for m in sim.specs}
    arrive = sim.gateway.arrive

    def mirror(r):  # the feeder releases every request through the gateway, in arrival order
        queues[r.model].append(r.arrival_s)
        arrive(r)

    sim.gateway.arrive = mirror
    stats = sim._arrival_stats
    checked = []

    def check(model):
        got = stats(model)
        assert got == _reference(queues[model], sim.env.now, sc.engine.stats_window_s), (model, sim.env.now)
        checked.append(got)
        return got

    sim._arrival_stats = check
    sim.run()
    assert len(checked) >= 100
    assert any(c[1] > 0 for c in checked) and any(c[2] != 0 for c in checked)  # CV and trend both exercised
