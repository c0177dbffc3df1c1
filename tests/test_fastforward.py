"""Fast-forwarded decode steps (engine/fastbatch.py) give the records of the step-by-step run.

Each case runs twice, `engine.fast_forward` on and off, and compares every request's record:
integers and times exactly as far as float rounding allows (the fast path sums a request's
per-step compute and comm times in another order). Cases cover the default scenario, a slice of a
paper scenario under two policies (pipelines, co-located stages, FlexPipe's scaling and refactors),
a split-then-merge refactor while serving, and KV pressure that forces preemptions out of fast mode.
Fast-forward includes running single-stage instances' steady steps ahead in one event
(Instance._run_ahead); the cases where it happens say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexpipe_sim.engine.fastbatch import FastSlotBatcher
from flexpipe_sim.engine.instance import Instance
from flexpipe_sim.engine import runahead
from flexpipe_sim.engine.runahead import RunAhead
from flexpipe_sim.engine.simulator import Simulation
from flexpipe_sim.metrics import requests_frame
from flexpipe_sim.scenario import load_scenario, parse_scenario

from .helpers import small_raw
from .test_refactor_sim import SplitThenMerge
from .test_run import check_conservation

ROOT = Path(__file__).resolve().parents[1]
INTS = ["id", "instance", "prompt_tokens", "output_tokens", "generated_tokens", "preemptions"]
TIMES = ["admitted_s", "first_token_s", "finish_s", "compute_s", "comm_s"]


def _run(sc, policy=None) -> tuple[Simulation, pd.DataFrame]:
    sim = Simulation(sc)
    if policy is not None:
        sim.policy = policy()
    raw = sim.run()
    check_conservation(sim, raw)
    return sim, requests_frame(raw)


def _fast_steps(sim: Simulation) -> int:
    return sum(s.fast_steps for i in sim.transitions.instances.values() for s in i.slots
               if isinstance(s, FastSlotBatcher))


def _ahead(sim: Simulation) -> int:
    return sum(i.steps_ahead for i in sim.transitions.instances.values())


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b) > 0
    for c in INTS:
        np.testing.assert_array_equal(a[c].to_numpy(), b[c].to_numpy(), err_msg=c)
    assert (a.drop_reason == b.drop_reason).all()
    for c in TIMES:
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=c)


def _both(load, policy=None) -> tuple[Simulation, pd.DataFrame, pd.DataFrame]:
    fast, df_fast = _run(load("true"), policy)
    _, df_slow = _run(load("false"), policy)
    _same(df_fast, df_slow)
    assert _fast_steps(fast) > 0, "the fast path was never taken: the case tests nothing"
    return fast, df_fast, df_slow


def test_default_scenario():
    _both(lambda ff: load_scenario(ROOT / "scenarios/default.yaml", ["horizon_s=150", f"engine.fast_forward={ff}"]))


@pytest.mark.parametrize("policy", ["static", "flexpipe"])
def test_paper_scenario_slice(policy):
    sets = ["horizon_s=60", "drain_s=120", "policy={name: %s}" % policy]
    fast, _, _ = _both(lambda ff: load_scenario(ROOT / "scenarios/paper/cv4.yaml", sets + [f"engine.fast_forward={ff}"]))
    assert _ahead(fast) > 1000 or policy != "static"  # single-stage instances ran steady steps ahead


def test_refactor_heavy():
    def load(ff):
        return parse_scenario(small_raw(**{"workload.arrivals.rate": 3.0, "horizon_s": 60,
                                           "cluster.tenant_scale": 0.0, "engine.fast_forward": ff == "true"}))
    sim, df, _ = _both(load, SplitThenMerge)
    assert len(sim.transitions.refactors) == 2
    assert _ahead(sim) > 1000  # 2- and 4-stage pipelines ran steps ahead, slots interleaved
    # and while their refactors loaded weights and copied KV (up to each read, Simulation._horizon)
    assert sum(i.refactor_ahead for i in sim.transitions.instances.values()) > 100
    spanning = df[(df.arrival_s < 20) & (df.finish_s > 40)]
    assert len(spanning) > 0  # requests decoded across both refactors


def test_kv_pressure_preempts_out_of_fast_mode():
    # Little KV per stage and a high rate: running requests outgrow the free blocks and get preempted.
    def load(ff):
        return parse_scenario(small_raw(**{
            "workload.arrivals.rate": 12.0, "horizon_s": 40, "cluster.tenant_scale": 0.0,
            "policy": {"name": "static", "params": {"stages": 1, "replicas": 1}},
            "engine.gpu_memory_utilization": 0.2, "engine.fast_forward": ff == "true"}))
    _, df, _ = _both(load)
    assert df.preemptions.sum() > 0


def test_finishes_taken_inside_windows():
    """Light load on 4-stage pipelines: nobody waits, so run-ahead windows take the steps that
    finish requests (accounted at their completion times) and the ordinary path's steps (an
    admission's prefill) instead of stopping there. Same records and the same end of run (the last
    request is never finished ahead: its finish ends the run)."""
    def load(ff):
        return parse_scenario(small_raw(**{
            "workload.arrivals.rate": 4.0, "horizon_s": 30, "drain_s": 60, "cluster.tenant_scale": 0.0, "seed": 1,
            "policy": {"name": "static", "params": {"stages": 4, "replicas": 1}},
            "engine.fast_forward": ff == "true"}))
    fast, df_fast = _run(load("true"))
    slow, df_slow = _run(load("false"))
    _same(df_fast, df_slow)
    assert sum(i.finished_ahead for i in fast.transitions.instances.values()) > 20
    assert sum(i.nonsteady_ahead for i in fast.transitions.instances.values()) > 20
    assert fast.env.now == slow.env.now  # the run ended at the last finish, as step by step
    # (in this case the last finish would be inside a window: without the backend's finish_ahead
    # guard the run ends ~0.7 s early)


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(stages=st.integers(1, 4), rate=st.sampled_from([1.0, 3.0, 8.0]), cv=st.sampled_from([1.0, 4.0]),
       tenants=st.sampled_from([0.0, 1.0]), seed=st.integers(0, 2**16), mem=st.sampled_from([0.9, 0.2]))
def test_random_small_cases(stages, rate, cv, tenants, seed, mem):
    """Fast-forward and run-ahead against step by step on random small cases: pipeline depth,
    load, burstiness, tenants sharing SMs, and a small KV pool that forces preemptions."""
    def load(ff):
        changes = {"workload.arrivals.rate": rate, "workload.arrivals.cv": cv, "horizon_s": 25, "drain_s": 60,
                   "cluster.tenant_scale": tenants, "seed": seed, "policy.params.stages": stages,
                   "policy.params.replicas": 1, "engine.gpu_memory_utilization": mem,
                   "engine.fast_forward": ff == "true"}
        return parse_scenario(small_raw(**changes))
    _both(load)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("mem", [0.9, 0.35])
def test_steps_past_arrivals_taken_back(mem, compiled, monkeypatch):
    """Single-stage replicas run steady steps past their model's arrivals; the one an arrival is
    routed to takes back the steps it should not have taken (Instance.settle), KV growths included.
    With little KV (mem 0.35) windows also end short of blocks and requests get preempted.
    After each settle, every lazy request holds no block before it needs it (its next growth is
    due within a block's worth of ticks) and the block counts balance. Both the compiled window
    loop (engine/stepkernel.py) and the Python one."""
    settle = RunAhead.settle

    def checked(self):
        settle(self)
        s = self.slots[0]
        bs = self.kv.block_size
        lazy = [r for r in s.running if r.ff_tick >= 0] if s.fast else []
        owed = [s.kv_owed(r) for r in lazy]  # blocks counted in bulk, not yet on the request
        # each lazy request's next growth (every bs ticks from its last) is due after the step in flight
        assert all(s.tick < r.ff_due + k * bs <= s.tick + bs for r, k in zip(lazy, owed)), \
            "a KV block grown past now was kept"
        for m in self.kv.managers:  # BlockCounter.check_integrity, the owed blocks counted as held
            held = sum(m.held.values()) + sum(owed)
            assert m.num_free >= 0 and m.num_free + held == m.num_blocks
            assert m.allocated_total - m.freed_total == held

    monkeypatch.setattr(RunAhead, "settle", checked)
    monkeypatch.setattr(runahead, "_COMPILED_MIN_WORK", 0)  # every window to the compiled loop (if on)

    def load(ff):
        return parse_scenario(small_raw(**{
            "workload.arrivals.rate": 10.0, "horizon_s": 40, "cluster.tenant_scale": 0.0, "seed": 5,
            "policy": {"name": "static", "params": {"stages": 1, "replicas": 3}},
            "engine.gpu_memory_utilization": mem, "engine.fast_forward": ff == "true",
            "engine.compiled": compiled}))
    sim, df, _ = _both(load)
    insts = sim.transitions.instances.values()
    assert (sum(i.windows_compiled for i in insts) > 100) == compiled
    assert sum(i.steps_undone for i in insts) > 100  # arrivals did land inside windows
    assert sum(i.growths_undone for i in insts) > 10  # and took back KV blocks grown past them
    if mem < 0.5:
        assert df.preemptions.sum() > 0


class JoinLater:
    """Llama-2-7B alone on GPU 0 from t=0; Llama-2-13B launched onto the same GPU at t=5, so its
    stage joins GPU 0 when its weights arrive: at a time no controller tick or arrival marks.
    (Subclasses change the 7B's stages, the 13B's GPU and the time.)"""

    name = "test"
    first = ((0, 32, 0),)  # the 7B's stages: (first layer, end layer, GPU)
    gpu, at = 0, 5  # the 13B's GPU and launch time

    def __init__(self) -> None:
        self.done: set[str] = set()

    def decide(self, view):
        from flexpipe_core.policyapi import Launch, StagePlan

        acts = []
        if "a" not in self.done:
            self.done.add("a")
            acts.append(Launch("llama2-7b", tuple(StagePlan(*p) for p in self.first), kv_tokens=30_000))
        if view.now >= self.at and "b" not in self.done:
            self.done.add("b")
            acts.append(Launch("llama2-13b", (StagePlan(0, 40, self.gpu),), kv_tokens=20_000))
        return acts


def test_stage_joining_a_gpu_while_its_only_stage_runs_ahead():
    def load(ff):
        return parse_scenario(small_raw(**{
            "models": [{"name": "llama2-7b", "share": 3, "slo": {"ttft_s": 2.0, "tpot_s": 0.1}},
                       {"name": "llama2-13b", "share": 1, "slo": {"ttft_s": 2.0, "tpot_s": 0.2}}],
            "workload.arrivals.rate": 1.0, "horizon_s": 60, "cluster.tenant_scale": 0.0, "seed": 1,
            "engine.fast_forward": ff == "true"}))
    sim, df, _ = _both(load, JoinLater)
    launches = {x["model"]: x for x in sim.transitions.launches}
    assert launches["llama2-13b"]["gpus"] == launches["llama2-7b"]["gpus"] == "0"
    assert _ahead(sim) > 100
    # before the fix, 7B ran ahead through the 13B's load and its steps missed the 13B's bookings


class JoinPipelineLater(JoinLater):
    """Llama-2-7B as a two-stage pipeline on GPUs 0 and 1 from t=0; Llama-2-13B launched onto GPU 1
    at t=15: the pipeline's second stage, until then alone on its GPU (its steps kept by the run-ahead
    windows' compiled stage steps, not booked), hands its last steps over when the 13B joins."""

    first = ((0, 16, 0), (16, 32, 1))
    gpu, at = 1, 15


def _pipeline_scenario(**changes):
    return parse_scenario(small_raw(**{
        "models": [{"name": "llama2-7b", "share": 6, "slo": {"ttft_s": 2.0, "tpot_s": 0.1}},
                   {"name": "llama2-13b", "share": 1, "slo": {"ttft_s": 2.0, "tpot_s": 0.2}}],
        "workload.arrivals.rate": 8.0, "horizon_s": 40, "cluster.tenant_scale": 0.0, "seed": 2, **changes}))


@pytest.mark.parametrize("compiled", [True, False])
def test_pipeline_windows_with_a_stage_joining(compiled, monkeypatch):
    """Pipeline windows (several slots) with a stage joining one of their GPUs mid-run: the same
    records as step by step, the windows' stage steps compiled or in Python. Every slot whose
    step a window took waits for its latest one (RunAhead._retarget): none wakes stale."""
    monkeypatch.setattr(runahead, "_COMPILED_STEPS_PER_SLOT", 1 << 30)  # no whole-window kernel
    sim, _, _ = _both(lambda ff: _pipeline_scenario(**{"engine.compiled": compiled,
                                                        "engine.fast_forward": ff == "true"}), JoinPipelineLater)
    pipe = next(i for i in sim.transitions.instances.values() if i.model == "llama2-7b")
    assert len(pipe.stages) == 2 and pipe.steps_ahead > 100
    assert pipe.retargets > 10 and pipe.stale_wakes == 0


@pytest.mark.parametrize("whole", [False, True])
def test_compiled_stage_steps_keep_the_last_steps(whole, monkeypatch):
    """Instance.set_sole hands over a stage's last steps (those that can still run) when a second
    stage joins its GPU. Compiled windows (stage steps in the Python loop, or whole windows) keep
    theirs in the instance's rings: mid-run, every stage's kept steps equal the Python loop's (its
    deques alone)."""
    monkeypatch.setattr(runahead, "_COMPILED_STEPS_PER_SLOT", 0 if whole else 1 << 30)
    kept = {}
    for compiled in (True, False):
        sim = Simulation(_pipeline_scenario(**{"engine.compiled": compiled}))
        sim.policy = JoinPipelineLater()
        for proc in (sim._controller(), sim._feeder(), sim._monitor(None)):
            sim.env.process(proc)
        sim.env.run(until=12.3)  # before the 13B is launched: the pipeline's stages run alone
        pipe = next(i for i in sim.transitions.instances.values() if i.model == "llama2-7b")
        assert pipe.steps_ahead > 50
        assert (pipe.windows_compiled > 10) == (whole and compiled)
        kept[compiled] = [pipe.set_sole(k, False) for k in range(2)]
    assert all(kept[True]) and kept[True] == kept[False]


@pytest.mark.parametrize("mem", [0.9, 0.3])
def test_idle_slots_woken_one_at_a_time(mem, monkeypatch):
    """An arrival (or a finish with a queue) wakes only the idle slot that admits first
    (Instance._wake_admitters); waking every idle slot, as before, gives the same records to the
    bit, with more wakes. Bursty traffic on 4-stage pipelines (several idle slots at most
    arrivals); with little KV, preemptions and admissions that fail for want of blocks."""
    def load():
        return parse_scenario(small_raw(**{
            "workload.arrivals.rate": 6.0, "workload.arrivals.cv": 4.0, "horizon_s": 40, "seed": 5,
            "policy": {"name": "static", "params": {"stages": 4, "replicas": 2}},
            "engine.gpu_memory_utilization": mem}))
    few, df_few = _run(load())
    monkeypatch.setattr(Instance, "_wake_admitters", Instance._wake_slots)
    every, df_every = _run(load())
    for c in INTS + TIMES:
        np.testing.assert_array_equal(df_few[c].to_numpy(), df_every[c].to_numpy(), err_msg=c)
    wakes = [sum(i.idle_wakes for i in s.transitions.instances.values()) for s in (few, every)]
    assert 0 < wakes[0] < wakes[1] / 2, wakes
    if mem < 0.5:
        assert df_few.preemptions.sum() > 0
