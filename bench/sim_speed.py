"""Simulator speed on the workloads users run, as ratios to the targets (issue 12).

Each case runs in its own process (so its peak RSS is its own) through the same path as
`flexpipe-sim run` (simulate -> records -> metrics -> tables/summary written to a temp folder;
plots off, a fixed cost of a few seconds unrelated to the simulated volume):

  cv4-POLICY     scenarios/paper/cv4.yaml, 2 h, one of the six policies (static, serverlessllm,
                 alpaserve, muxserve, tetris, flexpipe)          target: < 30 s wall
  azure-conv-1   one Llama-2-7B replica (1 A100, static) replaying the Azure LLM conversation
                 trace (19,366 requests, 1 h)                    target: >= 10 x Vidur's 441 req/s
  gpus-1000      500 servers / 1,000 GPUs, the paper's four-model mix at 250 req/s, 1 h, flexpipe
                                                                 target: < 300 s wall
Every case: peak RSS < 2 GB. Vidur's 441 simulated requests per wall second is its rate on this
replay measured on the project's 2-core build machine (issue 12).

    python bench/sim_speed.py                      # every case, full size (~10 minutes)
    python bench/sim_speed.py --scale 0.1          # every horizon x 0.1 (a quick look)
    python bench/sim_speed.py --cases azure-conv-1 --set engine.fast_forward=false
    python bench/sim_speed.py --json out.json      # machine-readable figures

A ratio >= 1 meets the target. Wall includes building the cluster and workload, simulating, and
writing requests.parquet / timeseries / summary.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDUR_RPS = 441.0
GB = 1024 ** 3


def case_overrides(name: str) -> tuple[str, list[str], dict]:
    """(scenario file, --set overrides, target) of one case."""
    paper = str(ROOT / "scenarios/paper/cv4.yaml")
    if name == "cv4-static":  # the scenario's own static parameters
        return paper, ["policy.name=static"], {"wall_s": 30.0}
    if name.removeprefix("cv4-") in POLICIES:  # the policy with its defaults
        return paper, ["policy={name: %s}" % name.removeprefix("cv4-")], {"wall_s": 30.0}
    if name == "azure-conv-1":
        return str(ROOT / "bench/scenarios/azure_conv_single.yaml"), [], {"rps": 10 * VIDUR_RPS}
    if name == "gpus-1000":
        return str(ROOT / "bench/scenarios/gpus_1000.yaml"), [], {"wall_s": 300.0}
    raise SystemExit(f"unknown case {name!r}")


POLICIES = ["static", "serverlessllm", "alpaserve", "muxserve", "tetris", "flexpipe"]
CASES = [f"cv4-{p}" for p in POLICIES] + ["azure-conv-1", "gpus-1000"]


def _run_case(name: str, scale: float, extra: list[str], q: mp.Queue) -> None:
    try:
        _measure(name, scale, extra, q)
    except BaseException as e:  # noqa: BLE001 - reported by the parent, which goes on
        q.put({"case": name, "error": f"{type(e).__name__}: {e}"})


def _measure(name: str, scale: float, extra: list[str], q: mp.Queue) -> None:
    from flexpipe_sim.runner import run_scenario
    from flexpipe_sim.scenario import load_scenario

    path, sets, target = case_overrides(name)
    sets = sets + ["outputs.plots=false", "outputs.format=parquet"] + extra
    sc = load_scenario(path, sets)
    if scale != 1.0:
        sc = load_scenario(path, sets + [f"horizon_s={sc.horizon_s * scale}"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_scenario(sc, Path(tmp) / "out")
        wall = time.perf_counter() - t0
    raw = res.raw
    n = len(raw.requests) if hasattr(raw, "requests") else res.summary.get("requests", 0)
    q.put({
        "case": name, "requests": int(n), "simulated_s": float(raw.end_s), "wall_s": wall,
        "rps": n / wall, "sim_s_per_wall_s": raw.end_s / wall,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB,
        "target": target, "scale": scale,
    })


def ratio(r: dict) -> float:
    t = r["target"]
    if "wall_s" in t:  # the wall target scales with the horizon
        return t["wall_s"] * r["scale"] / r["wall_s"]
    return r["rps"] / t["rps"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every horizon (wall targets scale too)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="scenario override for every case")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")  # a fresh interpreter per case: its own peak RSS
    rows = []
    for name in args.cases.split(","):
        q = ctx.Queue()
        p = ctx.Process(target=_run_case, args=(name, args.scale, args.sets, q))
        p.start()
        r = q.get()
        p.join()
        if "error" in r:
            print(f"{name:18s} FAILED: {r['error']}", flush=True)
            rows.append(r)
            continue
        r["ratio"] = ratio(r)
        r["rss_ratio"] = 2.0 / r["peak_rss_gb"]
        rows.append(r)
        print(f"{name:18s} {r['requests']:>9,} req  {r['simulated_s']:>7,.0f} sim-s  wall {r['wall_s']:7.1f} s  "
              f"{r['rps']:>8,.0f} req/s  {r['sim_s_per_wall_s']:>7,.0f} sim-s/s  RSS {r['peak_rss_gb']:.2f} GB  "
              f"target ratio {r['ratio']:.2f}  RSS ratio {r['rss_ratio']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    sys.exit(1 if any("error" in r for r in rows) else 0)


if __name__ == "__main__":
    main()
