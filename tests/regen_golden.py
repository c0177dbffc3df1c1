"""Regenerate scenarios/golden/*.summary.json after an intended change: `python -m tests.regen_golden`."""

from __future__ import annotations

import json

from flexpipe_sim.runner import run_scenario
from flexpipe_sim.scenario import load_scenario

from .conftest import ROOT

GOLDEN = ["default"]

if __name__ == "__main__":
    for name in GOLDEN:
        summary = run_scenario(load_scenario(ROOT / "scenarios" / f"{name}.yaml"), write=False).summary
        path = ROOT / "scenarios" / "golden" / f"{name}.summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {path}")
