"""`flexpipe-sim sweep`: a grid of scenarios x scenario keys x policies x seeds, run on a process pool
or Ray, stored run by run, aggregated over seeds with confidence intervals.

The sweep file and its expansion: sweepspec.py. Running, the manifest and resuming: sweeprun.py.
Aggregation, table and plot: sweepstats.py. Written in <out> besides the runs and the manifest:
  sweep.csv, sweep.md   one row per (scenario, grid point, policy): seeds, failed runs, and for each
                        metric its mean and 95% t-interval bounds over the seeds
  sweep.png             the metrics against the first numeric grid key, a line and band per policy
  report/               the evaluation report (evaluation.write_report) over the complete runs
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from .sweeprun import MANIFEST, RUNS, latest_rows, pending, run_points
from .sweepspec import Point, SweepError, SweepSpec, expand, load_sweep
from . import sweepstats


@dataclass
class SweepResult:
    spec: SweepSpec
    points: list[Point]
    ran: list[dict]  # rows of the runs this invocation ran
    table: pd.DataFrame  # the aggregate (sweepstats.aggregate)
    report_warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.ran if r["status"] != "complete"]


def prepare(path: Path, out: Path, resume: bool = True) -> tuple[SweepSpec, list[Point], list[Point]]:
    """Load and expand the sweep, check and set up `out`; returns (spec, all points, points to run).
    Raises SweepError before anything runs."""
    spec = load_sweep(path)
    points = expand(spec, path.resolve().parent)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out}: a file, not a folder")
    is_sweep = (out / MANIFEST).is_file() or (out / "sweep.yaml").is_file()
    if out.is_dir() and any(out.iterdir()) and not is_sweep:
        raise SweepError(f"--out {out}: the folder is not empty and holds no sweep (runs.jsonl); choose another")
    if out.resolve() in path.resolve().parents:
        raise SweepError(f"--out {out}: the sweep file {path} is inside it; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:  # start over: the previous runs and manifest go
        shutil.rmtree(out / RUNS, ignore_errors=True)
        (out / MANIFEST).unlink(missing_ok=True)
    shutil.copyfile(path, out / "sweep.yaml")
    return spec, points, pending(points, out)


def run_sweep(path: Path, out: Path, *, backend: str = "local", workers: int = 1, address: str | None = None,
              resume: bool = True, report: bool = True, on_start: Callable[[int, int], None] | None = None,
              on_row: Callable[[dict], None] | None = None) -> SweepResult:
    """Run the points not done yet, then aggregate every point's latest manifest row."""
    spec, points, todo = prepare(path, out, resume)
    if on_start:
        on_start(len(points), len(todo))
    ran = run_points(todo, out, backend=backend, workers=workers, address=address, on_row=on_row)
    table, warnings = summarise(spec, points, out, path.stem, report=report)
    return SweepResult(spec, points, ran, table, warnings)


def summarise(spec: SweepSpec, points: list[Point], out: Path, stem: str, *,
              report: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Write sweep.csv/.md/.png (and the report) from the manifest's latest row of each point."""
    last = latest_rows(out)
    rows = [last[p.id] for p in points if p.id in last]
    keys = list(spec.grid)
    title = spec.name or stem
    if not rows:
        return pd.DataFrame(), []
    agg = sweepstats.aggregate(sweepstats.runs_frame(rows, keys), keys)
    sweepstats.write_table(agg, keys, out, title)
    if agg[[c for c in agg.columns if c.endswith("_mean")]].notna().any().any():
        sweepstats.plot(agg, keys, out / "sweep.png", title)
    warnings: list[str] = []
    if report and any(r["status"] == "complete" for r in rows):
        from .evaluation import write_report

        _, warnings = write_report([out / RUNS], out / "report", shown=[str(out / RUNS)])
    return agg, warnings
