"""Run a scenario end to end: simulate -> records -> metrics -> files. The CLI and tests call this."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from .engine.simulator import ProgressFn, RawResults, Simulation
from .metrics import requests_frame, run_info, summarize, timeseries_frame
from .outdir import check_out_dir, results_folder
from .report import write_json, write_plots, write_scenario, write_tables
from .scenario import Scenario


@dataclass
class RunOutput:
    summary: dict[str, Any]
    info: dict[str, Any]
    out_dir: Path | None
    raw: RawResults
    plot_error: str | None = None

    @property
    def interrupted(self) -> bool:
        return self.raw.interrupted


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; `output` holds its partial results (already written when it has a folder)."""

    def __init__(self, output: RunOutput) -> None:
        super().__init__("interrupted")
        self.output = output


def resolve_out_dir(sc: Scenario, out: str | Path | None) -> Path:
    return Path(out) if out is not None else Path(sc.outputs.dir.format(name=sc.name))


@contextmanager
def sigint_at_progress() -> Iterator[list[bool]]:
    """While simulating, a Ctrl-C only sets a flag, and the next progress tick (a clean point between
    events) raises KeyboardInterrupt, so the run stops in a consistent state and its results can be
    written; a second Ctrl-C interrupts at once. Only in the main thread (signals live there)."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


def simulate(sc: Scenario, progress: ProgressFn | None = None) -> RawResults:
    """Simulation(sc).run with Ctrl-C turned into an early, clean stop (RawResults.interrupted)."""
    if sc.cluster.mix is not None:
        from .heterosim import HeteroSimulation

        sim = HeteroSimulation(sc)
    else:
        sim = Simulation(sc)
    with sigint_at_progress() as flag:
        def tick(now: float, done: int) -> None:
            if flag[0]:
                flag[0] = False  # raise once; the run then finishes its bookkeeping
                raise KeyboardInterrupt
            if progress:
                progress(now, done)

        return sim.run(tick)


def run_scenario(sc: Scenario, out: str | Path | None = None, *, write: bool = True,
                 progress: ProgressFn | None = None, force: bool = False, inputs: Iterable[Path] = (),
                 staged: bool = True) -> RunOutput:
    """Simulate and write the results folder. It is checked before simulating (outdir.check_out_dir),
    written into a staging folder beside it and moved into place when done (`staged=False`: written
    straight into `out`, for callers that stage a whole folder of runs). A run stopped by Ctrl-C is
    written too (run_info.json status `interrupted`, no plots), then RunInterrupted is raised."""
    out_dir = resolve_out_dir(sc, out) if write else None
    if out_dir is not None and staged:
        check_out_dir(out_dir, force=force, inputs=inputs)
    raw = simulate(sc, progress)
    df, ts = requests_frame(raw), timeseries_frame(raw)
    summary, info = summarize(raw, df, ts), run_info(raw)
    if out_dir is None:
        if raw.interrupted:
            raise RunInterrupted(RunOutput(summary, info, None, raw))
        return RunOutput(summary, info, None, raw)
    status = "interrupted" if raw.interrupted else "complete"
    if staged:
        with results_folder(out_dir, "run", force=force) as rf:
            plot_error = _write(rf.path, sc, raw, df, ts, summary)
            rf.info.update(info, status=status, simulated_s=raw.end_s)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_error = _write(out_dir, sc, raw, df, ts, summary)
        write_json(out_dir / "run_info.json", {"tool": "flexpipe-sim", "kind": "run", "status": status,
                                               **info, "simulated_s": raw.end_s})
    res = RunOutput(summary, info, out_dir, raw, plot_error)
    if raw.interrupted:
        raise RunInterrupted(res)
    return res


def _write(out_dir: Path, sc: Scenario, raw: RawResults, df, ts, summary: dict) -> str | None:
    # Tables and summary first: a failure while plotting must not lose computed results.
    write_tables(out_dir, sc.outputs.format, df, ts, raw.launches, raw.rejected, raw.refactors)
    write_json(out_dir / "summary.json", summary)
    if getattr(raw, "switches", None) is not None:  # mixed-cluster runs: switchcost.py, hetero_phase's plans
        import pandas as pd

        pd.DataFrame(raw.switches).to_csv(out_dir / "switches.csv", index=False)
        pd.DataFrame(getattr(raw, "plans", [])).to_csv(out_dir / "plans.csv", index=False)
    write_scenario(out_dir / "scenario.yaml", sc)
    if sc.outputs.plots and not raw.interrupted:
        try:
            write_plots(out_dir, df, ts, sc.name, {m.name: (m.slo.ttft_s, m.slo.tpot_s) for m in sc.models})
            if getattr(raw, "switches", None):
                from .switchplot import write_switch_plot

                write_switch_plot(out_dir, raw.refactors, raw.switches)
        except Exception as e:  # noqa: BLE001 - reported to the user, results are already on disk
            return f"{type(e).__name__}: {e}"
    return None
