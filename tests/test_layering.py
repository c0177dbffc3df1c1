"""The layering of issue 13: core / sim backend / kernel, checked on what each import really loads.

Each check runs in a fresh interpreter (sys.modules of the test process already holds everything).
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(stmt: str) -> set[str]:
    code = f"import sys\n{stmt}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_core_is_torch_free_simpy_free_and_sim_free():
    mods = loaded_after("import flexpipe_core.batcher, flexpipe_core.policyapi, flexpipe_core.blocks")
    assert not {m for m in mods if m.split(".")[0] in ("torch", "simpy", "flexpipe_sim", "flexpipe_kernel")}


def test_simulator_never_imports_torch():
    mods = loaded_after("from flexpipe_sim.runner import run_scenario; import flexpipe_sim.cli, flexpipe_sim.engine.simulator")
    assert "simpy" in mods
    assert not {m for m in mods if m.split(".")[0] in ("torch", "flexpipe_kernel")}


def test_kernel_never_imports_the_simulators_engine():
    pytest.importorskip("torch")
    mods = loaded_after("import flexpipe_kernel, flexpipe_kernel.engine, flexpipe_kernel.refactor, flexpipe_kernel.calibrate")
    assert "flexpipe_core.batcher" in mods
    assert not {m for m in mods if m.startswith("flexpipe_sim.engine") or m.startswith("flexpipe_sim.policies") or m == "simpy"}
