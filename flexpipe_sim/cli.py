"""`flexpipe-sim`: the command-line interface (typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .cliio import _error, _warn, console, err
from .calibratecli import calibrate
from .outdir import FORCE_HELP
from .scenario import Scenario, ScenarioError, load_scenario
from .profiles import ProfileError
from .workload.loaders import TraceError

FORMAT_HELP = "Trace format: auto, azure-llm, mooncake, azure-functions, servegen or generic."

app = typer.Typer(
    help="Simulate FlexPipe-style serverless LLM serving on a fragmented GPU cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cluster_app = typer.Typer(help="Inspect the cluster a scenario builds.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
trace_app = typer.Typer(help="Inspect request traces and convert them to the generic CSV.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")

SET_HELP = "Override a scenario value, e.g. --set workload.arrivals.rate=20 --set models.0.slo.ttft_s=1 (repeatable)."


def _check_out(target: Path, force: bool, inputs: list[Path]) -> None:
    """Refuse a results folder we cannot or should not write before anything is computed (exit 2)."""
    from .outdir import OutDirError, check_out_dir

    try:
        check_out_dir(target, force=force, inputs=inputs)
    except OutDirError as e:
        _error(e)  # escaped: a folder name may hold '[...]'
        raise typer.Exit(2) from None


def _interrupted(what: str, out: Path | None, missing: list[str] | None = None) -> typer.Exit:
    """Ctrl-C: say what was kept and what is missing; exit 130 (the shell's code for SIGINT)."""
    msg = f"[bold yellow]interrupted:[/] {what}"
    if out is not None and out.exists():
        msg += f"; what was computed is in {out}, marked 'interrupted' in run_info.json"
    if missing:
        msg += f"; missing runs: {', '.join(missing)}"
    err.print(msg, highlight=False, soft_wrap=True)
    return typer.Exit(130)


OUT_HELP = (" Written beside it first and moved into place when done, so a folder never mixes two runs; "
            "a previous flexpipe results folder there is replaced. Ctrl-C keeps what was computed, marked "
            "'interrupted' in run_info.json (exit code 130).")


def _load(path: Path, overrides: list[str], seed: Optional[int] = None) -> Scenario:
    if seed is not None:
        overrides = [*overrides, f"seed={seed}"]
    try:
        return load_scenario(path, overrides)
    except ScenarioError as e:
        _error(e)
        raise typer.Exit(2) from None


def _writable_dir(path: Path, what: str, kind: str = "folder") -> None:
    """Exit 2 before any work when `path` cannot be written (a file in the way, no permission)."""
    from .paths import unwritable

    why = unwritable(path, kind)
    if why:
        _error(f"{what}: {why}")
        raise typer.Exit(2)


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="Scenario YAML file (see scenarios/ and docs/scenarios.md)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default: outputs.dir of the "
                                       "scenario, results/<name>)." + OUT_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; overrides the scenario's seed."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Replay a scenario's workload against its policy; print a summary table and write results."""
    from .report import summary_table
    from .runner import RunInterrupted, resolve_out_dir, run_scenario

    sc = _load(scenario, set_, seed)
    target = resolve_out_dir(sc, out)
    _check_out(target, force, [scenario])
    horizon = sc.horizon_s
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[sim]}"),
        MofNCompleteColumn(), TextColumn("requests done"), TimeElapsedColumn(),
        console=err, disable=quiet, transient=False,
    ) as bar:
        task = bar.add_task(sc.name, total=None, sim="")

        def progress(now: float, done: int) -> None:
            bar.update(task, completed=done, sim=f"t={now:,.0f}/{horizon:,.0f}s")

        try:
            result = run_scenario(sc, target, progress=progress, force=force, inputs=[scenario])
        except RunInterrupted as e:
            bar.stop()
            o = e.output.summary["overall"]
            raise _interrupted(f"stopped at t={e.output.raw.end_s:,.0f}/{horizon:,.0f} s simulated "
                               f"({o['finished']:,} of {o['requests']:,} requests finished)", target) from None
        except KeyboardInterrupt:
            bar.stop()
            raise _interrupted("the run was stopped", target) from None
        except (ScenarioError, TraceError, ProfileError, OSError) as e:
            _error(e)
            raise typer.Exit(2) from None
        bar.update(task, total=result.summary["overall"]["requests"])
    console.print(summary_table(result.summary))
    for model, how in result.summary["cost_models"].items():
        console.print(f"cost model for {model}: {how}")
    for note in result.summary["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    for warning in result.info["warnings"]:
        _warn(warning)
    info = result.info
    console.print(
        f"results: {target}  ·  wall {info['wall_s']:.1f} s  ·  "
        f"{info['simulated_requests_per_wall_s']:,.0f} simulated requests per wall second"
    )
    if result.plot_error:
        _error(f"plots failed ({result.plot_error}); tables and summary.json were written")
        raise typer.Exit(1)


@app.command()
def compare(
    scenarios: list[Path] = typer.Argument(..., help="Scenario files; every policy runs on each one's arrivals."),
    policies: str = typer.Option(
        "static,flexpipe", "--policies", "-p",
        help="Comma-separated policies: static, flexpipe, serverlessllm, alpaserve, muxserve, tetris; a variant "
             "sets params: 'flexpipe:refactor=false+topology=false'."),
    out: Path = typer.Option(Path("results/compare"), "--out", "-o",
                             help="Folder for the comparison and each run's results." + OUT_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for every run (default: each scenario's)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Runs at a time, each in its own "
                                          "process (default: the CPU count, at most the number of runs); 1 runs "
                                          "them one after another in this process. The numbers are the same."),
) -> None:
    """Run several policies on the same scenarios and seeds; write comparison.csv/.md/.png."""
    from .compare import RunsInterrupted
    from .compare import compare as run_compare
    from .compare import with_policy

    names = _policy_names(policies)
    _check_out(out, force, list(scenarios))
    scs = [_load(p, set_, seed) for p in scenarios]
    for sc in scs:  # every variant's params are checked before the first run starts
        for n in names:
            try:
                with_policy(sc, n)
            except ScenarioError as e:
                _error(e)
                raise typer.Exit(2) from None
    try:
        import os

        n_workers = workers or min(os.cpu_count() or 1, len(scs) * len(names))
        df = run_compare(scs, names, out, on_run=lambda s, p: err.print(f"running {s} with {p} ..."), force=force,
                         workers=n_workers)
    except RunsInterrupted as e:
        raise _interrupted(f"{len(e.done)} of {len(e.done) + len(e.missing)} runs finished", out, e.missing) from None
    except KeyboardInterrupt:
        raise _interrupted("compare was stopped", out) from None
    except (ScenarioError, TraceError, ProfileError, OSError) as e:
        _error(e)
        raise typer.Exit(2) from None
    from .compare import terminal_tables

    for t in terminal_tables(df):
        console.print(t)
    console.print(f"written: {out / 'comparison.csv'}, {out / 'comparison.md'}, {out / 'comparison.png'}, "
                  f"and the evaluation report in {out / 'report'} (evaluation.md / .html, figures)")


def _policy_names(policies: str) -> list[str]:
    """Split and check a --policies list; exit 2 naming an unknown policy or a bad variant."""
    from .compare import parse_policy, split_policies
    from .policies import registry

    names = split_policies(policies)
    if not names:
        _error(f"--policies {policies!r}: no policies; give e.g. static,flexpipe")
        raise typer.Exit(2)
    try:
        unknown = [n for n in names if parse_policy(n)[0] not in registry.names()]
    except ValueError as e:
        _error(e)
        raise typer.Exit(2) from None
    if unknown:
        _error(f"unknown policy {', '.join(unknown)}; valid policies: {', '.join(registry.names())}")
        raise typer.Exit(2)
    return names


@app.command()
def loadsweep(
    scenario: Path = typer.Argument(..., help="Scenario file; its total arrival rate (workload.arrivals.rate) is swept."),
    rates: str = typer.Option("5,10,15,20,25", "--rates", "-r",
                              help="Comma-separated total rates in req/s, e.g. 5,10,15,20,25."),
    policies: str = typer.Option("static,flexpipe", "--policies", "-p", help="Policies (and variants) as in `compare`."),
    out: Path = typer.Option(Path("results/loadsweep"), "--out", "-o",
                             help="Folder for the sweep and each run's results." + OUT_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for every run (default: the scenario's)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Run every policy at several total arrival rates; write loadsweep.csv/.md/.png (policy x rate: SLO,
    per-model SLO, E2E p50/p99, GPU-hours, goodput) and claims.csv/.md (the rates where each paper claim holds)."""
    from rich.table import Table

    from .compare import RunsInterrupted, with_policy
    from .loadsweep import at_rate, parse_rates, sweep

    try:
        rate_list = parse_rates(rates)
    except ValueError as e:
        _error(e)
        raise typer.Exit(2) from None
    names = _policy_names(policies)
    _check_out(out, force, [scenario])
    sc = _load(scenario, set_, seed)
    try:  # every rate and variant is checked before the first run starts
        for r in rate_list:
            for n in names:
                with_policy(at_rate(sc, r), n)
    except ScenarioError as e:
        _error(e)
        raise typer.Exit(2) from None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[now]}"), TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task("load sweep", total=len(rate_list) * len(names), now="")

        def on_run(rate: float, pol: str, i: int, n: int) -> None:
            bar.update(task, completed=i, description=f"{rate:g} req/s · {pol}")

        def progress(now: float, done: int) -> None:
            bar.update(task, now=f"t={now:,.0f}/{sc.horizon_s:,.0f}s, {done:,} requests done")

        try:
            table, claims = sweep(sc, rate_list, names, out, on_run=on_run, progress=progress, force=force)
        except RunsInterrupted as e:
            bar.stop()
            raise _interrupted(f"{len(e.done)} of {len(e.done) + len(e.missing)} runs finished", out, e.missing) from None
        except KeyboardInterrupt:
            bar.stop()
            raise _interrupted("the sweep was stopped", out) from None
        except (ScenarioError, TraceError, ProfileError, OSError) as e:
            _error(e)
            raise typer.Exit(2) from None
        bar.update(task, completed=len(rate_list) * len(names), description="load sweep", now="done")
    t = Table(title=f"{sc.name}: policies against load")
    for head in ("req/s", "policy", "SLO %", "SLO % model mean", "E2E p50 s", "E2E p99 s", "GPU-h", "goodput/s",
                 "unserved"):
        t.add_column(head, justify="right")

    def f(x, fmt: str) -> str:
        return "-" if x is None or x != x else fmt.format(x)

    for _, r in table.iterrows():
        t.add_row(f"{r.rate:g}", r.policy, f(r.slo_attainment, "{:.1%}"), f(r.slo_model_mean, "{:.1%}"),
                  f(r.e2e_p50_s, "{:.2f}"), f(r.e2e_p99_s, "{:.2f}"), f(r.gpu_hours, "{:.1f}"),
                  f(r.goodput_rps, "{:.2f}"), r.unserved or "", style="red" if r.unserved else None)
    console.print(t)
    tested = claims[(claims.holds_at_rps != "") | (claims.fails_at_rps != "")]
    for c in tested.itertuples():
        console.print(f"{c.claim}: holds at [{c.holds_at_rps or '-'}], fails at [{c.fails_at_rps or '-'}] req/s")
    files = ", ".join(str(out / f) for f in ("loadsweep.csv", "loadsweep.md", "loadsweep.png", "claims.csv", "claims.md"))
    console.print(f"written: {files}")


@app.command()
def report(
    folders: list[Path] = typer.Argument(..., help="Folders holding runs (compare outputs); searched recursively."),
    out: Path = typer.Option(Path("results/report"), "--out", "-o", help="Folder for the report." + OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Build the paper-style evaluation report (Figs. 8-12, paper-vs-ours table) from finished runs.
    Runs marked interrupted or failed are left out; the report warns when the set of runs is incomplete
    (an interrupted compare, a policy missing for a scenario). Wall-clock figures go to timing.csv/.md."""
    from .evaluation import RunFolderError, write_report
    from .outdir import results_folder

    missing = [f for f in folders if not f.is_dir()]
    if missing:
        _error(f"not a folder: {', '.join(map(str, missing))}")
        raise typer.Exit(2)
    _check_out(out, force, list(folders))
    try:
        with results_folder(out, "report", force=force) as rf:
            t, warnings = write_report(folders, rf.path, shown=[str(f) for f in folders])
            rf.info["warnings"] = warnings
    except KeyboardInterrupt:
        raise _interrupted("the report was stopped", out) from None
    except RunFolderError as e:
        _error(e)
        raise typer.Exit(2) from None
    for w in warnings:
        err.print(f"[yellow]warning:[/] incomplete set of runs: {w}", highlight=False, soft_wrap=True)
    if t.empty:
        _error(f"no finished runs (summary.json) under {', '.join(map(str, folders))}")
        raise typer.Exit(2)
    console.print(f"{len(t)} runs; written: {out / 'evaluation.md'}, {out / 'evaluation.html'}, figures and CSVs "
                  f"(wall-clock figures: {out / 'timing.csv'})")


@cluster_app.command("stats")
def cluster_stats(
    scenario: Path = typer.Argument(..., help="Scenario YAML file whose cluster to build."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; overrides the scenario's seed."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Build the scenario's cluster and compare its background-tenant load with the paper's Table 1."""
    from .clusterstats import cluster_stats_table

    sc = _load(scenario, set_, seed)
    console.print(cluster_stats_table(sc))


@trace_app.command("stats")
def trace_stats(
    source: Path = typer.Argument(..., help="A trace file (or ServeGen folder), or a scenario YAML whose workload to analyse."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    out: Path = typer.Option(Path("results/trace-stats"), "--out", "-o", help="Folder for the PNG and JSON."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed: a scenario's (overrides its seed), or for "
                                       "traces that need randomness (per-minute expansion, ServeGen; default 0)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Rows, span, rate, IAT CV, burstiness, IDC at 1/10/60 s, peak/mean per minute, length percentiles;
    writes a PNG of arrivals over time and length histograms, and the numbers as JSON."""
    from .report import write_json
    from .tracecli import stats_table, trace_stats as compute
    from .workload.stats import json_safe

    _writable_dir(out, "--out")
    try:
        name, st, png = compute(source, fmt, set_, out, seed,
                                warn=_warn)
    except (ScenarioError, TraceError) as e:
        _error(e)
        raise typer.Exit(2) from None
    console.print(stats_table(name, st))
    write_json(png.with_suffix(".json"), json_safe(st))
    console.print(f"plot: {png}  ·  numbers: {png.with_suffix('.json')}")


@trace_app.command("convert")
def trace_convert(
    source: Path = typer.Argument(..., help="A trace file in any supported format."),
    dest: Path = typer.Argument(..., help="Output CSV (timestamp,prompt_tokens,output_tokens[,model]); .gz compresses."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    lengths: str = typer.Option("azure-conv", "--lengths", help="For traces without lengths: azure-conv or azure-code table."),
    seed: int = typer.Option(0, "--seed", help="Seed for expansion and for sampled lengths."),
) -> None:
    """Convert a trace to the generic CSV that scenarios and other tools read."""
    from .tracecli import convert

    if lengths not in ("azure-conv", "azure-code"):
        err.print("[bold red]error:[/] --lengths must be azure-conv or azure-code")
        raise typer.Exit(2)
    _writable_dir(dest, "DEST", "file")
    try:
        n = convert(source, dest, fmt, lengths, seed)
    except (TraceError, OSError) as e:
        _error(e)
        raise typer.Exit(2) from None
    console.print(f"wrote {n:,} requests to {dest}")


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML: scenarios, policies, seeds, a grid of scenario keys, "
                                      "optional set and horizon_s (see scenarios/sweeps/example.yaml)."),
    backend: str = typer.Option("local", "--backend", "-b", help="local: a process pool on this machine; ray: Ray "
                                "tasks on the cluster at --address, or on a local Ray started for the sweep."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Runs at a time (default: the CPU "
                                          "count); with ray and no --address, the local Ray's num_cpus."),
    address: Optional[str] = typer.Option(None, "--address", help="An existing Ray cluster: auto, host:6379 or "
                                          "ray://head:10001 (ray backend only; the nodes need flexpipe installed)."),
    out: Path = typer.Option(Path("results/sweep"), "--out", "-o", help="Sweep folder: runs/<point>/, runs.jsonl "
                             "(one row per finished run), sweep.csv/.md/.png and report/."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip points already complete in --out "
                                "(default); --no-resume deletes the folder's runs and runs everything."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the evaluation report in <out>/report."),
) -> None:
    """Run every scenario x grid point x policy x seed of a sweep file; store each run as it finishes;
    aggregate over seeds (mean, 95% t interval) into sweep.csv/.md/.png and the evaluation report."""
    import os

    from rich.markup import escape

    from .sweep import run_sweep
    from .sweeprun import RayMissing, import_ray
    from .sweepspec import SweepError
    from .sweepstats import terminal_tables

    if backend not in ("local", "ray"):
        _error(f"--backend {backend!r}: local or ray")
        raise typer.Exit(2)
    if address and backend != "ray":
        _error("--address needs --backend ray")
        raise typer.Exit(2)
    if backend == "ray":
        try:
            import_ray()
        except RayMissing as e:
            _error(e)
            raise typer.Exit(2) from None
    n_workers = workers or os.cpu_count() or 1
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task("sweep", total=None, last="")

        def on_start(total: int, todo: int) -> None:
            bar.update(task, total=todo, description=f"sweep ({total - todo} of {total} already done)")

        def on_row(row: dict) -> None:
            bar.advance(task)
            bar.update(task, last=f"{row['id']}: {row['status']}")
            if row["status"] != "complete":
                bar.console.print(f"[red]failed:[/] {escape(row['id'])}: {escape(str(row['error']))}",
                                  highlight=False, soft_wrap=True)

        try:
            res = run_sweep(sweep_file, out, backend=backend, workers=n_workers, address=address, resume=resume,
                            report=report, on_start=on_start, on_row=on_row)
        except (SweepError, RayMissing) as e:
            bar.stop()
            _error(e)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            bar.stop()
            err.print(f"[bold yellow]interrupted:[/] the sweep was stopped; the finished runs are in "
                      f"{escape(str(out / 'runs.jsonl'))}, and the same command resumes from them",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
    if not res.table.empty:
        for t in terminal_tables(res.table, list(res.spec.grid), res.spec.name or sweep_file.stem):
            console.print(t)
    for w in res.report_warnings:
        _warn(w)
    console.print(f"{len(res.ran)} runs now, {len(res.points) - len(res.ran)} kept from before; written: "
                  f"{out / 'runs.jsonl'}, {out / 'sweep.csv'}, {out / 'sweep.md'}, {out / 'sweep.png'}"
                  + (f", {out / 'report'}" if report else ""))
    if res.failed:
        _error(f"{len(res.failed)} runs failed (errors in {out / 'runs.jsonl'}); the others are aggregated")
        raise typer.Exit(1)


# `calibrate` lives in calibratecli.py
app.command()(calibrate)

# --- live backend (flexpipe_live): `live` and `validate`; their bodies are in flexpipe_live/cliapp.py ---
DEVICES_HELP = "Devices for the stages: cpu:N (N logical CPU devices in this process) or cuda:0,cuda:1."
KV_HELP = "Most KV tokens a live stage reserves (bounds host memory on CPU; a policy's smaller kv_tokens wins)."
THREADS_HELP = "CPU devices: torch intra-op threads (1, as calibrate measures CPU profiles; 0: torch's default)."


@app.command()
def live(
    scenario: Path = typer.Argument(..., help="Scenario YAML file (e.g. scenarios/live/cpu_small.yaml)."),
    devices: str = typer.Option("cpu:2", "--devices", "-d", help=DEVICES_HELP),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Replay arrivals this many times faster (rate x X, "
                                     "horizon / X); results stay in wall seconds."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default: outputs.dir of the "
                                       "scenario, results/<name>)." + OUT_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    kv_tokens: int = typer.Option(8192, "--kv-tokens", min=16, help=KV_HELP),
    threads: int = typer.Option(1, "--threads", min=0, help=THREADS_HELP),
    processes: bool = typer.Option(False, "--processes", help="Run each CPU device as a worker process (stages hand "
                                   "activations over torch.distributed gloo); inflight refactors are refused then."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Replay a scenario's arrivals by wall clock against real flexpipe_kernel pipelines on local devices,
    the scenario's policy deciding launches, retirements and inflight refactors; write results as `run` does."""
    from flexpipe_live.cliapp import live_main

    live_main(scenario, _load(scenario, set_), devices, time_scale, out, force, kv_tokens, threads, quiet, processes)


@app.command()
def validate(
    scenario: Path = typer.Argument(..., help="Scenario YAML file (e.g. scenarios/live/cpu_small.yaml)."),
    devices: str = typer.Option("cpu:2", "--devices", "-d", help=DEVICES_HELP),
    out: Path = typer.Option(Path("results/validate"), "--out", "-o", help="Folder for live/, sim/, validate.csv/.json "
                             "and cdf.png; a profile measured here is cached in it." + OUT_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    kv_tokens: int = typer.Option(8192, "--kv-tokens", min=16, help=KV_HELP),
    threads: int = typer.Option(1, "--threads", min=0, help=THREADS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Run the scenario live and simulated (with a cost profile of these devices) on identical arrivals and
    lengths; print and save the simulator's error per metric (TTFT, TPOT, E2E mean/p50/p90/p99, throughput,
    refactor pause, KV transfer time) and side-by-side CDF plots."""
    from flexpipe_live.cliapp import validate_main

    validate_main(scenario, _load(scenario, set_), devices, out, force, kv_tokens, threads, quiet)


@app.command()
def serve(
    scenario: Path = typer.Argument(..., help="Scenario YAML whose first model to serve (random weights, the scenario's seed)."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port to listen on (0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    devices: str = typer.Option("cpu:2", "--devices", help="Pipeline stages: cpu:N (N CPU stages) or cuda:0,cuda:1,... (one per GPU)."),
    model: Optional[str] = typer.Option(None, "--model", help="A kernel preset (tiny, small, llama2-7b, ...) instead of the scenario's model."),
    kv_blocks: int = typer.Option(512, "--kv-blocks", help="KV cache blocks per stage."),
    block_size: int = typer.Option(16, "--block-size", help="Tokens per KV block."),
    token_budget: int = typer.Option(512, "--token-budget", help="Most tokens in one micro-batch (chunked prefill beyond)."),
    max_seqs: int = typer.Option(64, "--max-seqs", help="Most sequences in one micro-batch."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs/--eager", help="Decode through CUDA graphs per batch-size bucket (on CPU: the same padded path, eagerly)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """An OpenAI-compatible endpoint (/v1/models, /v1/completions, /v1/chat/completions, streaming too)
    over a pipeline of flexpipe_kernel stages, one per device; concurrent requests share batches.
    Text maps to token ids per character (README: "Serving over HTTP"); Ctrl-C stops it."""
    try:
        from flexpipe_serve.pipeline import ServeSetupError
        from flexpipe_serve.server import serve as run_server
    except ImportError as e:
        _error(f"serve needs PyTorch, FastAPI and uvicorn ({e}); pip install 'flexpipe[kernel,serve]'")
        raise typer.Exit(2) from None
    sc = _load(scenario, set_)
    try:
        run_server(sc, port=port, host=host, devices=devices, model=model, kv_blocks=kv_blocks, block_size=block_size,
                   token_budget=token_budget, max_seqs=max_seqs, cuda_graphs=cuda_graphs,
                   log=lambda m: err.print(m, highlight=False, soft_wrap=True))
    except ServeSetupError as e:
        _error(e)
        raise typer.Exit(2) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
