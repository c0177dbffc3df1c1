"""`flexpipe-sim`: the command-line interface (typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .scenario import Scenario, ScenarioError, load_scenario
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

console = Console()
err = Console(stderr=True)

SET_HELP = "Override a scenario value, e.g. --set workload.rate=20 --set models.0.slo.ttft_s=1 (repeatable)."


def _load(path: Path, overrides: list[str], seed: Optional[int] = None) -> Scenario:
    if seed is not None:
        overrides = [*overrides, f"seed={seed}"]
    try:
        return load_scenario(path, overrides)
    except ScenarioError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="Scenario YAML file (see scenarios/ and docs/scenarios.md)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default: outputs.dir of the scenario)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; overrides the scenario's seed."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Replay a scenario's workload against its policy; print a summary table and write results."""
    from .report import summary_table
    from .runner import resolve_out_dir, run_scenario

    sc = _load(scenario, set_, seed)
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
            result = run_scenario(sc, out, progress=progress)
        except (ScenarioError, TraceError) as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        bar.update(task, total=result.summary["overall"]["requests"])
    console.print(summary_table(result.summary))
    for note in result.summary["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    info = result.info
    console.print(
        f"results: {resolve_out_dir(sc, out)}  ·  wall {info['wall_s']:.1f} s  ·  "
        f"{info['simulated_requests_per_wall_s']:,.0f} simulated requests per wall second"
    )
    if result.plot_error:
        err.print(f"[bold red]error:[/] plots failed ({result.plot_error}); tables and summary.json were written")
        raise typer.Exit(1)


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
    seed: int = typer.Option(0, "--seed", help="Seed for traces that need randomness (per-minute expansion, ServeGen)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Rows, span, rate, IAT CV, burstiness, IDC at 1/10/60 s, peak/mean per minute, length percentiles;
    writes a PNG of arrivals over time and length histograms, and the numbers as JSON."""
    from .report import write_json
    from .tracecli import stats_table, trace_stats as compute

    try:
        name, st, png = compute(source, fmt, set_, out, seed)
    except (ScenarioError, TraceError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(stats_table(name, st))
    write_json(png.with_suffix(".json"), st)
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
    try:
        n = convert(source, dest, fmt, lengths, seed)
    except TraceError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"wrote {n:,} requests to {dest}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
