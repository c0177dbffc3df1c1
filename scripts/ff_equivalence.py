"""Fast-forward (lazy decode counters and run-ahead) against step by step on a paper scenario:
every request's record must be the same (tests/test_fastforward.py does this on short slices;
this runs longer ones).

    python scripts/ff_equivalence.py --policies flexpipe,muxserve,tetris,serverlessllm,alpaserve,static \
        --scenario scenarios/paper/cv4.yaml --horizon 600
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flexpipe_sim.engine.simulator import Simulation  # noqa: E402
from flexpipe_sim.metrics import requests_frame  # noqa: E402
from flexpipe_sim.scenario import load_scenario  # noqa: E402
from tests.test_fastforward import _same  # noqa: E402  (the tests' comparison: integers exact, times 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", default="static,flexpipe")
    ap.add_argument("--scenario", default=str(ROOT / "scenarios/paper/cv4.yaml"))
    ap.add_argument("--horizon", type=float, default=600.0, help="simulated seconds of arrivals")
    args = ap.parse_args()
    for pol in args.policies.split(","):
        frames, ahead = [], 0
        for ff in ("true", "false"):
            sc = load_scenario(args.scenario, ["policy={name: %s}" % pol, f"horizon_s={args.horizon}",
                                               f"engine.fast_forward={ff}"])
            sim = Simulation(sc)
            frames.append(requests_frame(sim.run()))
            if ff == "true":
                ahead = sum(i.steps_ahead for i in sim.transitions.instances.values())
        _same(frames[0], frames[1])  # raises on the first difference
        print(f"{pol}: the same records on and off ({len(frames[0]):,} requests; "
              f"{ahead:,} steps run ahead by the instances alive at the end)", flush=True)


if __name__ == "__main__":
    main()
