"""`flexpipe-sim validate`: the same scenario run live and simulated on identical arrivals and lengths,
and the simulator's error per metric.

The simulator prices steps with a cost profile of these devices (the scenario's `cost.profiles`, or
one measured here with flexpipe_kernel.calibrate and cached in the out dir). Error = (sim - live) /
live: the simulator's relative error against what the kernel measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from flexpipe_sim.metrics import requests_frame, timeseries_frame
from flexpipe_sim.outdir import check_out_dir, results_folder
from flexpipe_sim.report import write_json
from flexpipe_sim.runner import RunInterrupted, RunOutput, _write, run_scenario
from flexpipe_sim.scenario import Scenario

from .backend import ProgressFn
from .devices import LiveError
from .runner import run_live

LATENCIES = ("ttft_s", "tpot_s", "e2e_s")
STATS = ("mean", "p50", "p90", "p99")


def ensure_profiles(sc: Scenario, device: str, cache_dir: Path, say: Callable[[str], None] = print) -> Scenario:
    """The scenario with a cost profile for every model: its own where it names one, else a profile
    measured now on `device` (quick grid) and cached as cache_dir/profile-<model>.json."""
    from flexpipe_kernel.model import PRESETS

    from .pipeline import kernel_args

    profiles = dict(sc.cost.profiles)
    for m in sc.models:
        if m.name in profiles:
            continue
        path = cache_dir / f"profile-{m.name}.json"
        if not path.exists():
            args = kernel_args(m.spec())
            preset = next((k for k, a in PRESETS.items() if a == args), None)
            if preset is None:
                raise LiveError(f"{m.name}: no cost profile in the scenario and no kernel preset of its shape to measure "
                                "one; run `flexpipe-sim calibrate` and set cost.profiles")
            from flexpipe_kernel.calibrate import calibrate
            from flexpipe_sim.profiles import save_profile

            say(f"measuring a cost profile for {m.name} on {device} (calibrate --quick) ...")
            save_profile(calibrate(preset, device, quick=True, gpu_kind=sc.cluster.gpu), path)
        profiles[m.name] = str(path)
    return sc.model_copy(update={"cost": sc.cost.model_copy(update={"profiles": profiles})})


SCALED_KEYS = (("prefill", "layer_s"), ("prefill", "p10"), ("prefill", "p90"), ("decode", "layer_s"),
               ("decode", "p10"), ("decode", "p90"), ("head", "s"), ("overheads", "stage_step_s"))


def scaled_profile(src: str | Path, factor: float, dest: Path, extra_step_s: float = 0.0) -> Path:
    """A copy of a profile with every compute time x factor (links and refactor rates unchanged) and
    `extra_step_s` more fixed time per stage step (the live engine's own work around a stage call)."""
    from flexpipe_sim.profiles import save_profile

    raw = json.loads(Path(src).read_text())

    def mul(x):
        return [mul(v) for v in x] if isinstance(x, list) else (None if x is None else float(x) * factor)

    for a, b in SCALED_KEYS:
        if a in raw and b in raw[a]:
            raw[a][b] = mul(raw[a][b])
    raw.setdefault("overheads", {})["stage_step_s"] = raw["overheads"].get("stage_step_s", 0.0) + extra_step_s
    raw["name"] = f"{raw['name']}-x{factor:.2f}"
    raw["kind"] = "derived"
    raw["derived_from"] = (f"{raw.get('name')}: compute times x {factor:.3f} (the live run's measured / predicted "
                           f"stage time), + {1e3 * extra_step_s:.3f} ms per stage step (its engine overhead)")
    return save_profile(raw, dest)


def _rel(sim: float | None, live: float | None) -> float | None:
    if sim is None or live is None or live == 0:
        return None
    return (sim - live) / live


def error_table(live: dict[str, Any], sim: dict[str, Any]) -> pd.DataFrame:
    rows = []
    lo, so = live["overall"], sim["overall"]
    for lat in LATENCIES:
        for st in STATS:
            rows.append((f"{lat[:-2]}_{st}", lo[lat][st], so[lat][st]))
    rows.append(("throughput_rps", lo["throughput_rps"], so["throughput_rps"]))
    lr, sr = live["refactors"], sim["refactors"]
    rows.append(("refactors", lr["count"], sr["count"]))
    rows.append(("refactor_pause_s_mean", lr["pause_s_mean"], sr["pause_s_mean"]))
    rows.append(("refactor_duration_s_mean", lr["duration_s_mean"], sr["duration_s_mean"]))
    rows.append(("refactor_kv_gb", lr["kv_gb_total"], sr["kv_gb_total"]))
    df = pd.DataFrame(rows, columns=["metric", "live", "sim"])
    df["rel_error"] = [_rel(s, lv) for lv, s in zip(df.live, df.sim)]
    return df


def kv_transfer_s(refactors: list[dict]) -> float | None:
    """Refactor time spent on KV: the whole refactor less its weight loads (pre-copy rounds + pause)."""
    if not refactors:
        return None
    return float(np.mean([r["duration_s"] - r["weight_load_s"] for r in refactors]))


def cdf_plot(path: Path, live_df: pd.DataFrame, sims: dict[str, pd.DataFrame], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, col, label in zip(axes, LATENCIES, ("TTFT", "TPOT", "E2E")):
        for df, name, style in [(live_df, "live (kernel)", "-")] + [(d, n, st) for (n, d), st in zip(sims.items(), ("--", ":"))]:
            v = np.sort(df.loc[df.drop_reason == "", col].dropna().to_numpy() * 1e3)
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), style, label=name)
        ax.set_xlabel(f"{label} (ms)")
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def validate(sc: Scenario, devices: list[str], out: Path, *, force: bool = False, kv_tokens: int = 8192,
             threads: int | None = 1, progress: ProgressFn | None = None, inputs=(), say: Callable[[str], None] = print
             ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Live run, then the simulation of the same (scaled) scenario; writes live/, sim/, validate.csv,
    validate.json and cdf.png into `out`. Returns the error table and the JSON written."""
    check_out_dir(out, force=force, inputs=inputs)
    with results_folder(out, "validate", force=force) as rf:
        sc = ensure_profiles(sc, devices[0], rf.path, say)
        try:
            live, backend = run_live(sc, devices, None, kv_tokens=kv_tokens, threads=threads, progress=progress)
        except RunInterrupted as e:  # keep the partial live results, then stop
            _save_live(rf.path / "live", sc, e.output)
            rf.info.update(status="interrupted", partial=True)
            raise
        _save_live(rf.path / "live", sc, live)
        say("simulating the same arrivals with the profile ...")
        sim = run_scenario(sc, rf.path / "sim", staged=False)
        # The machine's speed during the live run against the profile's: shared CPUs run slower or
        # faster than when profiled. One factor for the whole run; the simulator's dynamics
        # (batching, queueing, pipelining, refactor) are still its own.
        step = live.info["step_seconds"]
        factor = step["measured"] / step["cost_model"] if step["cost_model"] > 0 else 1.0
        sc_fit = sc.model_copy(update={"cost": sc.cost.model_copy(update={"profiles": {
            m: str(scaled_profile(p, factor, rf.path / f"profile-{m}.in-run.json", step["engine_overhead_per_step"]))
            for m, p in sc.cost.profiles.items()}})})
        say(f"simulating again with the profile x {factor:.2f} and {1e3 * step['engine_overhead_per_step']:.2f} ms engine "
            "overhead per step (both measured in the live run) ...")
        fit = run_scenario(sc_fit, rf.path / "sim_in_run_speed", staged=False)
        table = error_table(live.summary, sim.summary)
        fitted = error_table(live.summary, fit.summary)
        kv_live = kv_transfer_s(live.raw.refactors)
        kv_sim, kv_fit = kv_transfer_s(sim.raw.refactors), kv_transfer_s(fit.raw.refactors)
        table.loc[len(table)] = ["refactor_kv_transfer_s_mean", kv_live, kv_sim, _rel(kv_sim, kv_live)]
        fitted.loc[len(fitted)] = ["refactor_kv_transfer_s_mean", kv_live, kv_fit, _rel(kv_fit, kv_live)]
        table["sim_in_run_speed"] = fitted.sim
        table["rel_error_in_run_speed"] = fitted.rel_error
        table.to_csv(rf.path / "validate.csv", index=False)
        doc = {"scenario": sc.name, "devices": devices, "profiles": dict(sc.cost.profiles),
               "error_definition": "(sim - live) / live",
               "speed_factor": factor, "step_seconds": step,
               "metrics": {r.metric: {"live": r.live, "sim": r.sim, "rel_error": r.rel_error,
                                      "sim_in_run_speed": r.sim_in_run_speed,
                                      "rel_error_in_run_speed": r.rel_error_in_run_speed}
                           for r in table.itertuples()}}
        write_json(rf.path / "validate.json", doc)
        cdf_plot(rf.path / "cdf.png", requests_frame(live.raw), {"simulated (profile)": requests_frame(sim.raw),
                 f"simulated (profile x {factor:.2f})": requests_frame(fit.raw)},
                 f"{sc.name}: live kernel vs simulator ({len(devices)} x {devices[0]})")
        rf.info.update(live_wall_s=live.info["wall_s"])
    return table, doc


def _save_live(path: Path, sc: Scenario, res: RunOutput) -> None:
    path.mkdir(parents=True, exist_ok=True)
    raw = res.raw
    _write(path, sc, raw, requests_frame(raw), timeseries_frame(raw), res.summary)
    write_json(path / "run_info.json", {"tool": "flexpipe-sim", "kind": "live",
                                        "status": "interrupted" if raw.interrupted else "complete", **res.info})
