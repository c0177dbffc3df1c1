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


@pytest.mark.parametrize("policy", ["static", "muxserve", "flexpipe"])
def test_compiled_loop_gives_the_python_loops_records(policy, monkeypatch):
    """A slice of the paper's cv4: one-stage replicas (static; MuxServe: windows past
    arrivals taken back by settle) and FlexPipe's pipelines, scaling and refactors. Every window
    goes to the compiled loop (not only those long enough to gain), so all of them are compared."""
    monkeypatch.setattr(runahead, "_COMPILED_MIN_WORK", 0)
    def run(compiled: bool):
        sc = load_scenario(ROOT / "scenarios/paper/cv4.yaml", [
            "horizon_s=90", "drain_s=120", "policy={name: %s}" % policy, f"engine.compiled={compiled}"])
        sim = Simulation(sc)
        df = requests_frame(sim.run())
        return sim, df

    sim_c, a = run(True)
    _, b = run(False)
    assert sum(i.windows_compiled for i in sim_c.transitions.instances.values()) > 100
    assert len(a) > 1000
    assert a.equals(b), "records differ between the compiled and the Python window loop"
