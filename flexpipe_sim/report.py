"""Writing a run's results: tables (Parquet or CSV), summary.json, plots, and the terminal table.

Files in the results folder:
  requests.parquet|csv   one row per request (metrics.requests_frame)
  timeseries.csv         GPUs allocated/busy, queue lengths, running requests over time
  launches.csv           every instance launch: when asked, when ready, load time, cold stages
  rejected_actions.csv   actions the backend refused, with the reason (only if any)
  refactors.csv          every inflight refactor: stages before/after, loads, KV bytes, rounds, pause
  summary.json           the run's summary (deterministic for a scenario + seed)
  run_info.json          status (complete / interrupted / failed), files written, wall time, simulator
                         speed, policy decision time (varies run to run); outdir.py
  scenario.yaml          the scenario as run, with defaults and --set overrides filled in
  latency_cdf.png, gpus_over_time.png, queue_length.png
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Group
from rich.table import Table


def write_tables(out: Path, fmt: str, df: pd.DataFrame, ts: pd.DataFrame, launches: list[dict],
                 rejected: list[dict], refactors: list[dict] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(out / "requests.parquet", index=False)
    else:
        df.to_csv(out / "requests.csv", index=False)
    ts.to_csv(out / "timeseries.csv", index=False)
    pd.DataFrame(launches).to_csv(out / "launches.csv", index=False)
    if rejected:
        pd.DataFrame(rejected).to_csv(out / "rejected_actions.csv", index=False)
    if refactors:
        pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in refactors]).to_csv(
            out / "refactors.csv", index=False)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_scenario(path: Path, scenario) -> None:
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False))


def wrap_title(text: str, width_in: float) -> str:
    """Break a title into lines that fit a figure (or axes) `width_in` inches wide at 12 pt."""
    return textwrap.fill(text, max(30, int(11 * width_in)))


def write_plots(out: Path, df: pd.DataFrame, ts: pd.DataFrame, title: str,
                slos: dict[str, tuple[float, float]] | None = None) -> list[Path]:
    """latency_cdf.png (TTFT, TPOT, E2E per model, with each model's TTFT/TPOT SLO from `slos`:
    model -> (ttft_s, tpot_s)), gpus_over_time.png and queue_length.png. A model has one colour
    in every panel (palette.py), whichever panels it has values in (a one-token model has no TPOT)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt
    import numpy as np

    from .palette import model_color

    paths = []
    slos = slos or {}
    fin = df[df.drop_reason == ""]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    panels = (("ttft_s", "TTFT", 0), ("tpot_s", "TPOT", 1), ("e2e_s", "end-to-end latency", None))
    for ax, (col, label, slo_i) in zip(axes, panels):
        thresholds: dict[float, list[str]] = {}
        for model, g in fin.groupby("model"):
            v = np.sort(g[col].dropna().to_numpy())
            if not len(v):
                continue
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=model, color=model_color(str(model)))
            if slo_i is not None and model in slos:
                thresholds.setdefault(slos[model][slo_i], []).append(str(model))
        for x, models in thresholds.items():
            # one model's SLO in its colour; a threshold models share in gray, with their count
            ax.axvline(x, color=model_color(models[0]) if len(models) == 1 else "dimgray", ls="--", lw=1)
            ax.annotate(f"SLO {x:g} s" + (f" ({len(models)} models)" if len(models) > 1 else ""), (x, 0.5),
                        xycoords=("data", "axes fraction"), rotation=90, fontsize=7, ha="center", va="center",
                        color="dimgray", bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1})
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (s, log scale)")
        ax.set_ylabel("fraction of finished requests")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        # a request meets its SLO on TTFT and TPOT; the scenario sets no E2E objective
        ax.set_title("dashed: each model's SLO (gray: several models')" if slo_i is not None and slos else
                     "no E2E SLO (the SLO is TTFT and TPOT)" if slos else "", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(wrap_title(f"{title}: latency CDFs ({len(fin)} finished, {len(df) - len(fin)} dropped)", 13))
    paths.append(out / "latency_cdf.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    def over_time(name: str, ylabel: str, what: str, draw) -> None:
        fig, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
        draw(ax)
        ax.set_xlabel("simulated time (min)")  # as in the evaluation report's time axes
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_title(wrap_title(f"{title}: {what} over time", 8))
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    minutes = ts.time_s / 60

    def gpus(ax) -> None:
        ax.step(minutes, ts.gpus_allocated, where="post", label="GPUs allocated")
        ax.plot(minutes, ts.gpus_allocated * ts.gpu_busy_frac.fillna(0), lw=0.8, alpha=0.8,
                label="GPUs busy (equivalent)")

    def queues(ax) -> None:
        ax.plot(minutes, ts.gateway_queue + ts.instance_queue, label="waiting (gateway + instances)")
        ax.plot(minutes, ts.running, label="running", alpha=0.8)

    over_time("gpus_over_time.png", "GPUs", "GPUs", gpus)
    over_time("queue_length.png", "requests", "queue length", queues)
    return paths


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1e3 * x:,.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def model_rows(summary: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """Terminal rows for per-model SLO attainment: each model, their unweighted mean, and a
    highlighted row per unserved model (metrics.UNSERVED_BELOW)."""
    per, unserved = summary["per_model"], summary["unserved_models"]
    rows: list[tuple[str, str, str | None]] = []
    if per:
        mean = summary["overall"]["slo_attainment_model_mean"]
        rows.append(("SLO attainment, unweighted mean over models", _pct(mean), None))
        for m, b in per.items():
            rows.append((f"  SLO attainment: {m}", _pct(b["slo_attainment"]), "bold red" if b.get("unserved") else None))
    for m in unserved:
        b = per.get(m, summary["overall"])
        share = b["finished"] / b["requests"] if b["requests"] else None
        rows.append((f"UNSERVED: {m}", f"{_pct(b['slo_attainment'])} met the SLO, {_pct(share)} finished "
                     f"(flag below {100 * summary['unserved_below_slo']:.0f}%)", "bold red"))
    return rows


def summary_table(summary: dict[str, Any]) -> Group:
    """Two tables: latency percentiles, then the run's counts, SLOs and GPU use."""
    o, g = summary["overall"], summary["gpus"]
    lat = Table(title=f"{summary['scenario']} · policy {summary['policy']} · seed {summary['seed']}")
    lat.add_column("latency (ms)")
    for c in ("mean", "p50", "p90", "p99"):
        lat.add_column(c, justify="right")
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E")):
        st = o[key]
        lat.add_row(label, _ms(st["mean"]), _ms(st["p50"]), _ms(st["p90"]), _ms(st["p99"]))

    run = Table(show_header=False)
    run.add_column("what")
    run.add_column("value", justify="right")
    att = o["slo_attainment"]
    run.add_row("requests", f"{o['requests']:,} ({o['finished']:,} finished, {o['dropped']:,} dropped)")
    run.add_row("preemptions", f"{o['preemptions']:,}")
    b = o["breakdown_mean_s"]
    run.add_row("mean E2E = queue + batch wait + compute + comm (ms)",
                f"{_ms(b['queue'])} + {_ms(b['batch_wait'])} + {_ms(b['compute'])} + {_ms(b['comm'])}")
    run.add_row("SLO attainment", "-" if att is None else f"{100 * att:.1f}%")
    for row in model_rows(summary):
        run.add_row(*row[:2], style=row[2])
    run.add_row("goodput / throughput", f"{o['goodput_rps']:.2f} / {o['throughput_rps']:.2f} req/s")
    res, busy = g["reservation_pct_of_peak"], g["busy_frac_of_allocated"]
    run.add_row("GPUs peak / always-on / cluster", f"{g['peak_allocated']} / {g['always_on']} / {g['cluster']}")
    run.add_row("GPU reservation (% of peak)", "-" if res is None else f"{res:.0f}%")
    run.add_row("GPU-seconds allocated / busy", f"{g['allocated_gpu_s']:,.0f} / {g['busy_gpu_s']:,.0f}"
                + ("" if busy is None else f" ({100 * busy:.0f}%)"))
    eff = g["resource_efficiency_goodput_per_gpu"]
    run.add_row("goodput per allocated GPU", "-" if eff is None else f"{eff:.3f} req/s")
    rf = summary["refactors"]
    if rf["count"]:
        run.add_row("refactors (mean / max pause)", f"{rf['count']} ({1e3 * rf['pause_s_mean']:.1f} / {1e3 * rf['pause_s_max']:.1f} ms)")
    for reason, n in summary["drop_reasons"].items():
        run.add_row(f"dropped: {reason}", f"{n:,}", style="yellow")
    sw = summary.get("switches")
    if sw and sw["count"]:
        return Group(lat, run, switches_table(sw))
    return Group(lat, run)


def switches_table(sw: dict[str, Any]) -> Table:
    """What the run's pipeline switches cost against the targets (switchcost.py), and why a switch
    missed them."""
    tg = sw["targets"]
    t = Table(title="pipeline switches (switches.csv)", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{1e3 * x:.1f} ms"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:+.1f}%"

    t.add_row("switches", f"{sw['count']}")
    t.add_row(f"downtime mean / max (target < {ms(tg['downtime_s'])})",
              f"{ms(sw['downtime_s_mean'])} / {ms(sw['downtime_s_max'])} ({sw['downtime_target_met']} of {sw['count']} met)")
    t.add_row(f"in-flight TTFT / TPOT overhead vs no switch (target < {100 * tg['ttft_tpot_overhead']:.0f}%)",
              f"{pct(sw['ttft_overhead_mean'])} / {pct(sw['tpot_overhead_mean'])} ({sw['overhead_target_met']} of "
              f"{sw['count']} met)")
    t.add_row("moved: KV / weights", f"{sw['kv_gb_total']:.1f} GB / {sw['weight_gb_total']:.1f} GB")
    for line in sw["failures"][:5]:
        t.add_row("missed", line, style="yellow")
    if len(sw["failures"]) > 5:
        t.add_row("missed", f"... and {len(sw['failures']) - 5} more (switches.csv, column why)", style="yellow")
    return t
