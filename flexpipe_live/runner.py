"""`flexpipe-sim live`: run a scenario on local devices and write a results folder in `run`'s format."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from flexpipe_sim.metrics import requests_frame, run_info, summarize, timeseries_frame
from flexpipe_sim.outdir import check_out_dir, results_folder
from flexpipe_sim.runner import RunInterrupted, RunOutput, _write, sigint_at_progress
from flexpipe_sim.scenario import Scenario

from .backend import LiveBackend, ProgressFn
from .devices import LiveError


def scaled_scenario(sc: Scenario, n_devices: int, time_scale: float = 1.0) -> Scenario:
    """The scenario as the live backend runs it: one node with these devices, no background tenants,
    and with `time_scale` X > 1 the arrivals X times faster (trace rate x X; horizon, warm-up and drain
    / X), so results stay in wall seconds. `validate` simulates this same scenario."""
    if time_scale <= 0:
        raise LiveError(f"--time-scale {time_scale:g}: must be > 0")
    upd = {"cluster": sc.cluster.model_copy(update={"servers": 1, "gpus": n_devices, "racks": 1, "tenant_scale": 0.0,
                                                   "max_gpus_per_server": max(sc.cluster.max_gpus_per_server, n_devices)})}
    if time_scale != 1.0:
        arr = sc.workload.arrivals
        rate = getattr(arr, "rate", None)
        if rate is None:
            raise LiveError(f"--time-scale needs workload.arrivals.rate in the scenario (a {arr.kind} stream without one)")
        upd.update(horizon_s=sc.horizon_s / time_scale, warmup_s=sc.warmup_s / time_scale, drain_s=sc.drain_s / time_scale,
                   workload=sc.workload.model_copy(update={"arrivals": arr.model_copy(update={"rate": rate * time_scale})}))
    return sc.model_copy(update=upd)


def run_live(sc: Scenario, devices: list[str], out: Path | None, *, force: bool = False, kv_tokens: int = 8192,
             threads: int | None = 1, processes: bool = False, progress: ProgressFn | None = None, inputs: Iterable[Path] = ()) -> tuple[RunOutput, LiveBackend]:
    """Run live and write the results folder (tables first, then plots); Ctrl-C writes what was
    measured, run_info status `interrupted`, then raises RunInterrupted."""
    if out is not None:
        check_out_dir(out, force=force, inputs=inputs)
    backend = LiveBackend(sc, devices, kv_tokens=kv_tokens, threads=threads, processes=processes)
    with sigint_at_progress() as flag:
        raw = backend.run(progress, stop=lambda: flag[0])
    df, ts = requests_frame(raw), timeseries_frame(raw)
    summary, info = summarize(raw, df, ts), run_info(raw)
    sp = backend.speed
    info.update(backend="live", devices=devices, processes=processes, failures=backend.failures, kv_tokens_cap=kv_tokens, threads=threads,
                step_seconds={"measured": round(sp["measured_s"], 4), "cost_model": round(sp["predicted_s"], 4),
                              "steps": sp["steps"],
                              "engine_overhead_per_step": sp["engine_s"] / sp["engine_steps"] if sp["engine_steps"] else 0.0})
    status = "interrupted" if raw.interrupted else "complete"
    plot_error = None
    if out is not None:
        with results_folder(out, "live", force=force) as rf:
            plot_error = _write(rf.path, sc, raw, df, ts, summary)
            rf.info.update(info, status=status, simulated_s=raw.end_s, partial=raw.interrupted)
    res = RunOutput(summary, info, out, raw, plot_error)
    if raw.interrupted:
        raise RunInterrupted(res)
    return res, backend
