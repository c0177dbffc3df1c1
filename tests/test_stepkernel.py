"""The compiled run-ahead loop (engine/stepkernel.py) against the Python one it replaces.

Its pricing must give the Python lookup's float to the bit (profile rows in log space, the fitted
roofline beyond the grid, the roofline cost model), and whole runs must give the same records with
`engine.compiled` on and off. (tests/test_fastforward.py compares both against step-by-step runs.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flexpipe_sim.costmodel import CostModel, PipelineCost, ProfileCostModel, StageShape
from flexpipe_sim.engine import runahead
from flexpipe_sim.engine import stepkernel as sk
from flexpipe_sim.engine.simulator import Simulation
from flexpipe_sim.hardware import GPUS
from flexpipe_sim.metrics import requests_frame
from flexpipe_sim.models import get_model
from flexpipe_sim.profiles import load_profile
from flexpipe_sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sk.AVAILABLE, reason="numba is not installed")


def _pipeline(cost: CostModel) -> PipelineCost:
    gpu = GPUS["a100-80gb"]
    return PipelineCost(cost, [StageShape(32, True, True, gpu)], [], None)


@pytest.mark.parametrize("kind", ["profile", "roofline"])
def test_pricing_is_the_python_lookup_to_the_bit(kind):
    model = get_model("llama2-7b")
    if kind == "profile":
        cost = ProfileCostModel(model, load_profile(ROOT / "calibrate/profiles/a100-80gb-llama2-7b-vidur.json"))
    else:
        cost = CostModel(model)
    pc = _pipeline(cost)
    rng = np.random.default_rng(0)
    checked = beyond = 0
    for n in [1, 2, 3, 5, 17, 64, 200, 255, 256, 300, 1000]:
        tab = pc.decode_kernel(n)
        assert tab is not None
        layer = pc.decode_pricing(n)[0]
        rows, cmax, ext = tab[1][None, :], np.array([tab[2]]), np.zeros(2)
        for kv in np.unique(np.concatenate([rng.integers(n, 20_000 * n, 300), [n, 4032 * n, 4033 * n]])):
            kv = int(kv)
            assert sk._price(tab[0], 0, kv, n, rows, cmax, tab[3], ext) == layer(kv), (n, kv)
            checked += 1
        beyond += int(ext[0])
    assert checked > 3000
    if kind == "profile":
        assert beyond > 100  # the fitted roofline beyond the grid was exercised too


@pytest.mark.parametrize("kind", ["profile", "roofline"])
def test_stage_step_is_the_python_stage_loop_to_the_bit(kind):
    """stepkernel.stage_step (RunAhead's Python window loop's compiled pricing and stage clocks)
    against that loop in Python (RunAhead._schedule_ahead's): completion, compute, stage clocks,
    busy sums and each stage's last steps, over many steps of several slots on four stages."""
    from collections import deque

    from flexpipe_sim.hardware import link_spec

    model, gpu = get_model("llama2-7b"), GPUS["a100-80gb"]
    cost = (ProfileCostModel(model, load_profile(ROOT / "calibrate/profiles/a100-80gb-llama2-7b-vidur.json"))
            if kind == "profile" else CostModel(model))
    shapes = [StageShape(8, True, False, gpu, 1.0), StageShape(9, False, False, gpu, 1.3),
              StageShape(7, False, False, gpu, 1.0), StageShape(8, False, True, gpu, 1.1)]
    link = link_spec("rdma", gpu)
    pc = PipelineCost(cost, shapes, [link] * 3, link)
    P, m = len(shapes), 3
    plan = [(None, sh.num_layers, sh.has_head, sh.slowdown) for sh in shapes]
    rng = np.random.default_rng(1)
    ns = [int(x) for x in rng.integers(1, 300, m)]
    tabs = [pc.decode_kernel(n) for n in ns]
    R = len(tabs[0][1])
    K = np.array([float(p[1]) for p in plan] + [float(p[3]) for p in plan] + [float(p[2]) for p in plan]
                 + [t[2] for t in tabs] + [h for t in tabs for h in t[6]] + [x for t in tabs for x in t[1]]
                 + list(tabs[0][3]))
    S, RN = np.zeros(P + 7 + 2 * P * P), np.zeros(P, np.int64)
    free, sums, recent = [0.0] * P, [0.0, 0.0, 0], [deque(maxlen=P) for _ in range(P)]
    oh = pc._overhead
    t = 0.0
    for step in range(400):
        i = step % m
        n = ns[i]
        kv = int(rng.integers(n, 5000 * n))
        layer, head, _ = pc.decode_pricing(n)
        back, hops, _ = pc.decode_hops(n)
        t = t + float(rng.uniform(0.0, 0.02))
        got = sk.stage_step(i, t + back, kv, n, tabs[i][4], K, S, RN, tabs[i][0], oh, P, m, R)
        lt = layer(kv)  # RunAhead._schedule_ahead's stage loop
        sums[0] += lt
        sums[1] += head
        sums[2] += 1
        u, compute = t + back, 0.0
        for q, (_, nl, hh, sd) in enumerate(plan):
            dt = (nl * lt + head + oh) * sd if hh else (nl * lt + oh) * sd
            u = max(u, free[q])
            free[q] = u + dt
            recent[q].append((u, u + dt))
            compute += dt
            u = u + dt + hops[q]
        assert got == (u, compute), step
    assert S[:P].tolist() == free and S[P:P + 3].tolist() == [sums[0], sums[1], float(sums[2])]
    for q in range(P):
        ring = S[P + 7 + 2 * P * q: P + 7 + 2 * P * (q + 1)].tolist()
        last = list(zip(ring[0::2], ring[1::2]))
        c = int(RN[q])
        assert last[c % P:] + last[: c % P] == list(recent[q])
    if kind == "profile":
        assert S[P + 4] > 0  # contexts beyond the grid were priced by the fitted roofline too


@pytest.mark.parametrize("policy,whole", [("static", True), ("muxserve", True), ("flexpipe", True),
                                          ("flexpipe", False)])
def test_compiled_loop_gives_the_python_loops_records(policy, whole, monkeypatch):
    """A slice of the paper's cv4: one-stage replicas (static; MuxServe: windows past
    arrivals taken back by settle) and FlexPipe's pipelines, scaling and refactors. Every window
    goes to the compiled loop (not only those long enough to gain), so all of them are compared;
    or (whole=False) every pipeline window to the Python loop with compiled stage steps."""
    monkeypatch.setattr(runahead, "_COMPILED_MIN_WORK", 0 if whole else 1 << 30)
    monkeypatch.setattr(runahead, "_COMPILED_STEPS_PER_SLOT", 0 if whole else 1 << 30)
    def run(compiled: bool):
        sc = load_scenario(ROOT / "scenarios/paper/cv4.yaml", [
            "horizon_s=90", "drain_s=120", "policy={name: %s}" % policy, f"engine.compiled={compiled}"])
        sim = Simulation(sc)
        df = requests_frame(sim.run())
        return sim, df

    sim_c, a = run(True)
    _, b = run(False)
    compiled = sum(i.windows_compiled for i in sim_c.transitions.instances.values())
    assert compiled > 100 if whole else compiled == 0
    if not whole:  # pipelines' windows priced their steps in the compiled stage step
        assert any(i._kbuf is not None for i in sim_c.transitions.instances.values())
    elif policy == "flexpipe":  # pipelines' compiled windows kept slots in their arrays across windows
        insts = sim_c.transitions.instances.values()  # and took finishing steps (heldslots._take_completion)
        assert any(i._kst is not None for i in insts)
        assert sum(i.finished_ahead for i in insts) > 10
        assert sum(i.windows_woken for i in insts) > 100  # windows begun at a held slot's completion
    assert len(a) > 1000
    assert a.equals(b), "records differ between the compiled and the Python window loop"
