"""The bodies of `flexpipe-sim live` and `validate` (flexpipe_sim/cli.py holds their thin commands):
progress display, summary, one clear message and exit 2 for bad input, 130 for Ctrl-C."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flexpipe_sim.cliio import _error, _warn, console, err
from flexpipe_sim.outdir import OutDirError
from flexpipe_sim.profiles import ProfileError
from flexpipe_sim.runner import RunInterrupted
from flexpipe_sim.scenario import Scenario, ScenarioError
from flexpipe_sim.workload.loaders import TraceError

from .devices import LiveError, parse_devices

BAD_INPUT = (LiveError, ScenarioError, TraceError, ProfileError, OutDirError, OSError, ValueError)


@contextmanager
def live_progress(sc: Scenario, quiet: bool) -> Iterator:
    """A progress bar over requests done, with the wall clock against the horizon and what is queued,
    running, served by how many pipelines and refactored."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("done"),
                  TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=err, disable=quiet) as bar:
        task = bar.add_task(f"live {sc.name}", total=None, state="warming up")

        def progress(now: float, c: dict) -> None:
            bar.update(task, completed=c["done"], total=c["total"],
                       state=f"t={now:,.1f}/{sc.horizon_s:,.0f}s arrived {c['arrived']} queued {c['queued']} "
                             f"running {c['running']} pipelines {c['pipelines']} refactors {c['refactors']}"
                             + (f" dropped {c['dropped']}" if c["dropped"] else ""))

        yield progress


def _prepare(sc: Scenario, devices: str, time_scale: float) -> tuple[Scenario, list[str]]:
    from .runner import scaled_scenario

    try:
        devs = parse_devices(devices)
        return scaled_scenario(sc, len(devs), time_scale), devs
    except LiveError as e:
        _error(e)
        raise typer.Exit(2) from None


def live_main(path: Path, sc: Scenario, devices: str, time_scale: float, out: Path | None, force: bool,
              kv_tokens: int, threads: int, quiet: bool, processes: bool = False) -> None:
    from flexpipe_sim.report import summary_table
    from flexpipe_sim.runner import resolve_out_dir

    from .runner import run_live

    sc, devs = _prepare(sc, devices, time_scale)
    target = resolve_out_dir(sc, out)
    try:
        with live_progress(sc, quiet) as progress:
            res, _ = run_live(sc, devs, target, force=force, kv_tokens=kv_tokens, threads=threads or None,
                              processes=processes, progress=progress, inputs=[path])
    except RunInterrupted as e:
        o = e.output.summary["overall"]
        err.print(f"[bold yellow]interrupted:[/] stopped at t={e.output.raw.end_s:,.1f} s ({o['finished']:,} of "
                  f"{o['requests']:,} requests finished); what was measured is in {target}, marked 'interrupted' "
                  "in run_info.json", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except BAD_INPUT as e:
        _error(e)
        raise typer.Exit(2) from None
    console.print(summary_table(res.summary))
    for note in res.summary["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for w in res.info["warnings"]:
        _warn(w)
    console.print(f"results: {target}  ·  wall {res.info['wall_s']:.1f} s  ·  devices {', '.join(devs)}")
    if res.plot_error:
        _error(f"plots failed ({res.plot_error}); tables and summary.json were written")
        raise typer.Exit(1)


def validate_main(path: Path, sc: Scenario, devices: str, out: Path, force: bool, kv_tokens: int, threads: int,
                  quiet: bool) -> None:
    from rich.table import Table

    from .validate import validate

    sc, devs = _prepare(sc, devices, 1.0)
    try:
        with live_progress(sc, quiet) as progress:
            table, doc = validate(sc, devs, out, force=force, kv_tokens=kv_tokens, threads=threads or None,
                                progress=progress, inputs=[path], say=lambda s: err.print(s, highlight=False))
    except RunInterrupted:
        err.print(f"[bold yellow]interrupted:[/] the live run was stopped; its partial results are in {out}/live")
        raise typer.Exit(130) from None
    except BAD_INPUT as e:
        _error(e)
        raise typer.Exit(2) from None
    t = Table(title=f"validate {sc.name}: simulator vs live kernel, error = (sim - live) / live")
    for c in ("metric", "live", "sim", "error", "sim (in-run speed)", "error (in-run speed)"):
        t.add_column(c, justify="left" if c == "metric" else "right")

    def fmt(v) -> str:
        return "-" if v is None or v != v else f"{v:.4g}"

    def pct(v) -> str:
        return "-" if v is None or v != v else f"{v:+.1%}"

    for r in table.itertuples():
        t.add_row(r.metric, fmt(r.live), fmt(r.sim), pct(r.rel_error), fmt(r.sim_in_run_speed),
                  pct(r.rel_error_in_run_speed))
    console.print(t)
    console.print(f"in-run speed: the live steps took {doc['speed_factor']:.2f} x what the profile predicts for them")
    console.print(f"results: {out} (validate.csv, validate.json, cdf.png, live/, sim/)")
