"""Inflight refactoring in the simulator: split and merge a serving instance; nothing is lost."""

from __future__ import annotations

from flexpipe_sim.engine.simulator import Simulation
from flexpipe_sim.metrics import requests_frame
from flexpipe_core.policyapi import ClusterView, Launch, Refactor, StagePlan
from flexpipe_sim.policies.placement import place_pipeline
from flexpipe_sim.scenario import parse_scenario

from .helpers import small_raw
from .test_run import check_conservation


class SplitThenMerge:
    """Launch 2 stages at t=0, split to 4 at t=20, merge back to 2 at t=40 (on other GPUs)."""

    name = "test"
    depth = 2  # at launch
    changes = ((20.0, 4), (40.0, 2))  # (time, depth) of each refactor

    def __init__(self) -> None:
        self.done: set[str] = set()

    def decide(self, view: ClusterView):
        spec = view.models["llama2-7b"].spec
        if "launch" not in self.done:
            self.done.add("launch")
            return [place_pipeline(view, "llama2-7b", spec.even_split(self.depth), set())]
        inst = next((i for i in view.instances if i.state == "ready"), None)
        if inst is None:
            return []
        for when, depth in self.changes:
            if view.now >= when and when not in self.done and len(inst.gpus) != depth:
                self.done.add(when)
                free = [g.id for g in view.gpus if "llama2-7b" not in g.models][:depth]
                plan = tuple(StagePlan(a, b, g) for (a, b), g in zip(spec.even_split(depth), free))
                return [Refactor(inst.id, plan)]
        return []


def test_split_and_merge_while_serving():
    sc = parse_scenario(small_raw(**{"workload.arrivals.rate": 3.0, "horizon_s": 60, "cluster.tenant_scale": 0.0}))
    sim = Simulation(sc)
    sim.policy = SplitThenMerge()
    raw = sim.run()
    check_conservation(sim, raw)
    recs = sim.transitions.refactors
    assert [(r["old_stages"], r["new_stages"]) for r in recs] == [(2, 4), (4, 2)]
    for r in recs:
        assert r["kv_bytes"] > 0 and r["rounds"] >= 1 and r["preempted"] == 0
        assert 0 < r["pause_s"] < r["duration_s"]
        assert r["pause_s"] < 0.5  # a short switch, not a restart
    df = requests_frame(raw)
    assert (df.drop_reason == "").all()
    assert df.preemptions.sum() == 0
    # the old stages' GPUs were given back: only the final 2 stages hold memory at the end
    assert sim.transitions.gpus_allocated == 2
    inst = next(iter(sim.transitions.instances.values()))
    assert len(inst.stages) == 2 and inst.n_active == 2
    # requests that spanned a refactor still got every token
    spanning = df[(df.arrival_s < 20) & (df.finish_s > 20)]
    assert len(spanning) > 0 and (spanning.generated_tokens == spanning.output_tokens).all()


class MergeThenSplit(SplitThenMerge):
    """Launch 4 stages at t=0, merge to 2 at t=20, split back to 4 at t=40 (on other GPUs)."""

    depth = 4
    changes = ((20.0, 2), (40.0, 4))


def test_slots_a_merge_retired_serve_again_after_a_split():
    """A merge retires the extra slots (their loops end); a later split must give them loops again.
    Before the fix they stayed without one: half the pipeline's micro-batch slots never ran, and
    as their load stayed 0 the live slots (never the least loaded) admitted only when empty."""
    sc = parse_scenario(small_raw(**{"workload.arrivals.rate": 4.0, "horizon_s": 80, "cluster.tenant_scale": 0.0}))
    sim = Simulation(sc)
    sim.policy = MergeThenSplit()
    steps_at: dict[float, list[int]] = {}

    def snapshot():
        for t in (39.0, 79.0):
            yield sim.env.timeout(t - sim.env.now)
            inst = next(iter(sim.transitions.instances.values()))
            steps_at[t] = [s.fast_steps + s.slow_steps for s in inst.slots]

    sim.env.process(snapshot())
    raw = sim.run()
    check_conservation(sim, raw)
    recs = sim.transitions.refactors
    assert [(r["old_stages"], r["new_stages"]) for r in recs] == [(4, 2), (2, 4)]
    assert recs[1]["switched_s"] < 79.0
    inst = next(iter(sim.transitions.instances.values()))
    assert inst.n_active == 4 and all(p is not None and p.is_alive for p in inst._procs)
    after = [b - a for a, b in zip(steps_at[39.0], steps_at[79.0])]
    assert all(n > 50 for n in after), after  # every slot of the re-split pipeline takes steps
    df = requests_frame(raw)
    assert (df.drop_reason == "").all()


def test_invalid_refactor_is_rejected_not_applied():
    sc = parse_scenario(small_raw(**{"horizon_s": 20, "cluster.tenant_scale": 0.0}))
    sim = Simulation(sc)

    class Bad(SplitThenMerge):
        def decide(self, view):
            acts = super().decide(view) if "launch" not in self.done else []
            inst = next((i for i in view.instances if i.state == "ready"), None)
            if inst is not None and "bad" not in self.done:
                self.done.add("bad")
                other = inst.gpus[1]
                return [Refactor(inst.id, (StagePlan(0, 16, other), StagePlan(16, 32, other)))]
            return acts

    sim.policy = Bad()
    raw = sim.run()
    assert any("two stages of one model" in r["reason"] for r in raw.rejected)
    check_conservation(sim, raw)
