"""Simulator speed: simulated requests per wall second on a paper-like stream.

The DESIGN goal is the paper's run (20 req/s for 2 h = 144k requests on 82 GPUs) in under 30 s on
2 cores, i.e. >= 4,800 simulated requests per wall second. This runs a shorter slice of that
workload (Gamma CV 4 at 20 req/s, Azure conversation lengths, static provisioning for the peak)
and prints the rate and its ratio to the goal.

    python bench/sim_speed.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import time

from flexpipe_sim.engine.simulator import Simulation
from flexpipe_sim.scenario import parse_scenario

GOAL_RPS = 144_000 / 30.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--cv", type=float, default=4.0)
    args = ap.parse_args()
    sc = parse_scenario({
        "name": "bench", "seed": 1, "horizon_s": args.minutes * 60,
        "models": [{"name": "llama2-7b", "slo": {"ttft_s": 2.0, "tpot_s": 0.1}}],
        "workload": {"arrivals": {"kind": "gamma", "rate": 20.0, "cv": args.cv}, "lengths": "azure-conv"},
        "policy": {"name": "static", "params": {"stages": 2}},
    })
    t0 = time.perf_counter()
    sim = Simulation(sc)
    raw = sim.run()
    wall = time.perf_counter() - t0
    steps = sum(i.steps for i in sim.transitions.instances.values())
    tokens = sum(r.generated for r in raw.requests)
    rps = len(raw.requests) / wall
    print(f"requests {len(raw.requests):,}  micro-batch steps {steps:,}  tokens {tokens:,}  wall {wall:.2f} s")
    print(f"simulated requests per wall second: {rps:,.0f}   (goal {GOAL_RPS:,.0f}; ratio {rps / GOAL_RPS:.2f})")
    print(f"simulated tokens per wall second: {tokens / wall:,.0f}   micro-batch steps per wall second: {steps / wall:,.0f}")


if __name__ == "__main__":
    main()
