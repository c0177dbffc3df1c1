"""Run a scenario end to end: simulate -> records -> metrics -> files. The CLI and tests call this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine.simulator import ProgressFn, RawResults, Simulation
from .metrics import requests_frame, run_info, summarize, timeseries_frame
from .report import write_json, write_plots, write_scenario, write_tables
from .scenario import Scenario


@dataclass
class RunOutput:
    summary: dict[str, Any]
    info: dict[str, Any]
    out_dir: Path | None
    raw: RawResults
    plot_error: str | None = None


def resolve_out_dir(sc: Scenario, out: str | Path | None) -> Path:
    return Path(out) if out is not None else Path(sc.outputs.dir.format(name=sc.name))


def run_scenario(sc: Scenario, out: str | Path | None = None, *, write: bool = True,
                 progress: ProgressFn | None = None) -> RunOutput:
    raw = Simulation(sc).run(progress)
    df, ts = requests_frame(raw), timeseries_frame(raw)
    summary, info = summarize(raw, df, ts), run_info(raw)
    if not write:
        return RunOutput(summary, info, None, raw)
    out_dir = resolve_out_dir(sc, out)
    # Tables and summary first: a failure while plotting must not lose computed results.
    write_tables(out_dir, sc.outputs.format, df, ts, raw.launches, raw.rejected, raw.refactors)
    write_json(out_dir / "summary.json", summary)
    write_json(out_dir / "run_info.json", info)
    write_scenario(out_dir / "scenario.yaml", sc)
    plot_error = None
    if sc.outputs.plots:
        try:
            write_plots(out_dir, df, ts, sc.name, {m.name: (m.slo.ttft_s, m.slo.tpot_s) for m in sc.models})
        except Exception as e:  # noqa: BLE001 - reported to the user, results are already on disk
            plot_error = f"{type(e).__name__}: {e}"
    return RunOutput(summary, info, out_dir, raw, plot_error)
