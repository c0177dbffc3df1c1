"""Profile one simulator run (the path `flexpipe-sim run` takes, plots off) with pyinstrument.

    pip install -e ".[profile]"
    python bench/profile_sim.py scenarios/paper/cv4.yaml --scale 1.0 -o profile.txt [--set policy={name: flexpipe}]

Prints the wall time and writes pyinstrument's call tree (sampling every 5 ms, so the profiler adds
little) to -o. docs/results/sim_speed/ holds the before/after profiles of issue 12 made with it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pyinstrument import Profiler

from flexpipe_sim.runner import run_scenario
from flexpipe_sim.scenario import load_scenario


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", type=Path)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the scenario's horizon")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="scenario override (repeatable)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="where the call tree goes (text)")
    args = ap.parse_args()
    sets = [*args.sets, "outputs.plots=false"]
    sc = load_scenario(args.scenario, sets)
    sc = load_scenario(args.scenario, [*sets, f"horizon_s={sc.horizon_s * args.scale}"])
    prof = Profiler(interval=0.005)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prof.start()
        res = run_scenario(sc, Path(tmp) / "out")
        prof.stop()
        wall = time.perf_counter() - t0
    args.out.write_text(prof.output_text(unicode=True, color=False))
    print(f"{len(res.raw.requests):,} requests, {res.raw.end_s:,.0f} simulated s, wall {wall:.1f} s "
          f"(profiled); call tree in {args.out}")


if __name__ == "__main__":
    main()
