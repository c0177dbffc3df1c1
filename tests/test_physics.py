"""Engine physics (issue 11): balanced micro-batch slots, capacity-aware routing, contended weight
loads, work-conserving GPU sharing, interference reported apart from busy time."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from flexpipe_sim.engine.simulator import Simulation
from flexpipe_sim.metrics import requests_frame
from flexpipe_sim.policies.base import ClusterView, Launch, StagePlan
from flexpipe_sim.scenario import parse_scenario

from .helpers import small_raw
from .test_run import check_conservation


class LaunchOnce:
    """Launch `replicas` pipelines of `depth` stages on GPUs 0.. at t=0 (all free memory as KV)."""

    name = "test"

    def __init__(self, depth: int, replicas: int, model: str = "llama2-7b") -> None:
        self.depth, self.replicas, self.model, self.done = depth, replicas, model, False

    def decide(self, view: ClusterView):
        if self.done:
            return []
        self.done = True
        spec = view.models[self.model].spec
        out = []
        for k in range(self.replicas):
            gpus = range(k * self.depth, (k + 1) * self.depth)
            out.append(Launch(self.model, tuple(StagePlan(a, b, g) for (a, b), g in zip(spec.even_split(self.depth), gpus))))
        return out


def idle_8gpu(rate: float = 8.0, horizon: float = 200.0, **changes):
    raw = small_raw(**{
        "horizon_s": horizon, "drain_s": 300, "cluster.servers": 1, "cluster.gpus": 8, "cluster.racks": 1, "cluster.tenant_scale": 0.0,
        "workload.arrivals": {"kind": "gamma", "rate": rate, "cv": 4.0},
        "workload.lengths": {"kind": "fixed", "prompt_tokens": 1000, "output_tokens": 200},
        "models.0.slo": {"ttft_s": 10.0, "tpot_s": 0.5}, **changes})
    return parse_scenario(raw)


def run_with(sc, policy):
    sim = Simulation(sc)
    sim.policy = policy
    raw = sim.run()
    return sim, raw


# --- 1. balanced micro-batch slots ---------------------------------------------------------------

def slot_sizes(sim, every: float = 1.0) -> list[list[int]]:
    """Sample the running sequences of every slot of every instance, once per `every` seconds."""
    out: list[list[int]] = []

    def proc():
        while True:
            yield sim.env.timeout(every)
            for inst in sim.transitions.instances.values():
                sizes = [len(s.running) for s in inst.slots[: inst.n_active]]
                if sum(sizes) >= len(sizes):
                    out.append(sizes)

    sim.env.process(proc())
    return out


def test_balanced_slots_keep_a_pipeline_close_to_replicas():
    """8 idle GPUs on one server, Llama-2-7B, 8 req/s Gamma CV 4, 1000/200 tokens: one 8-stage
    pipeline against eight 1-stage replicas.

    Per generated token both do the same work: a pipeline cycle runs its S stages of L/S layers
    each for b = B/S sequences, as a replica's step runs L layers for its B/S sequences. What the
    pipeline adds is S-1 PCIe hops and the token return per cycle (a few ms against ~90 ms per
    token) and prefill chunks that delay every slot behind them at each stage (each by 1/S of the
    chunk's time, so the same delay per token on average). So a balanced pipeline's TPOT is within
    a small factor of the replicas': we assert < 1.5x (measured 1.22x: 0.109 s vs 0.089 s). Before
    the fix (first slot awake takes the queue): 3.72x, 0.331 s vs 0.089 s, slot sizes 50-108 at one
    instant (spread p90 69 sequences; now 4). The pipeline is never faster (>= 1x)."""
    tpot = {}
    for depth, reps in ((8, 1), (1, 8)):
        sc = idle_8gpu(horizon=120.0)
        sim = Simulation(sc)
        sim.policy = LaunchOnce(depth, reps)
        sizes = slot_sizes(sim) if depth == 8 else []
        raw = sim.run()
        check_conservation(sim, raw)
        df = requests_frame(raw)
        assert (df.drop_reason == "").all()
        tpot[depth] = float(df.tpot_s.median())
        if depth == 8:
            spread = np.array([max(s) - min(s) for s in sizes])
            biggest = np.array([max(s) for s in sizes])
            # balanced: slots differ by a few sequences at most (they finish at different times)
            assert np.percentile(spread, 90) <= max(4, 0.25 * np.percentile(biggest, 90)), (spread.max(), biggest.max())
    ratio = tpot[8] / tpot[1]
    assert 1.0 <= ratio < 1.5, tpot
