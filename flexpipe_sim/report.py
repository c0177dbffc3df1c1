"""Writing a run's results: tables (Parquet or CSV), summary.json, plots, and the terminal table.

Files in the results folder:
  requests.parquet|csv   one row per request (metrics.requests_frame)
  timeseries.csv         GPUs allocated/busy, queue lengths, running requests over time
  launches.csv           every instance launch: when asked, when ready, load time, cold stages
  rejected_actions.csv   actions the backend refused, with the reason (only if any)
  summary.json           the run's summary (deterministic for a scenario + seed)
  run_info.json          wall time, simulator speed, policy decision time (varies run to run)
  scenario.yaml          the scenario as run, with defaults and --set overrides filled in
  latency_cdf.png, gpus_over_time.png, queue_length.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.table import Table


def write_tables(out: Path, fmt: str, df: pd.DataFrame, ts: pd.DataFrame, launches: list[dict],
                 rejected: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(out / "requests.parquet", index=False)
    else:
        df.to_csv(out / "requests.csv", index=False)
    ts.to_csv(out / "timeseries.csv", index=False)
    pd.DataFrame(launches).to_csv(out / "launches.csv", index=False)
    if rejected:
        pd.DataFrame(rejected).to_csv(out / "rejected_actions.csv", index=False)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_scenario(path: Path, scenario) -> None:
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False))


def write_plots(out: Path, df: pd.DataFrame, ts: pd.DataFrame, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    fin = df[df.drop_reason == ""]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, col, label in zip(axes, ("ttft_s", "tpot_s", "e2e_s"), ("TTFT", "TPOT", "end-to-end latency")):
        for model, g in fin.groupby("model"):
            v = np.sort(g[col].dropna().to_numpy())
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=model)
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (s, log scale)")
        ax.set_ylabel("fraction of finished requests")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: latency CDFs ({len(fin)} finished, {len(df) - len(fin)} dropped)")
    fig.tight_layout()
    paths.append(out / "latency_cdf.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.step(ts.time_s, ts.gpus_allocated, where="post", label="GPUs allocated")
    ax.plot(ts.time_s, ts.gpus_allocated * ts.gpu_busy_frac.fillna(0), lw=0.8, alpha=0.8, label="GPUs busy (equivalent)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("GPUs")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: GPUs over time")
    fig.tight_layout()
    paths.append(out / "gpus_over_time.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(ts.time_s, ts.gateway_queue + ts.instance_queue, label="waiting (gateway + instances)")
    ax.plot(ts.time_s, ts.running, label="running", alpha=0.8)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("requests")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: queue length over time")
    fig.tight_layout()
    paths.append(out / "queue_length.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1e3 * x:,.1f}"


def summary_table(summary: dict[str, Any]) -> Table:
    o, g = summary["overall"], summary["gpus"]
    t = Table(title=f"{summary['scenario']} · policy {summary['policy']} · seed {summary['seed']}")
    t.add_column("metric")
    t.add_column("mean", justify="right")
    t.add_column("p50", justify="right")
    t.add_column("p90", justify="right")
    t.add_column("p99", justify="right")
    for key, label in (("ttft_s", "TTFT (ms)"), ("tpot_s", "TPOT (ms)"), ("e2e_s", "E2E (ms)")):
        s = o[key]
        t.add_row(label, _ms(s["mean"]), _ms(s["p50"]), _ms(s["p90"]), _ms(s["p99"]))
    t.add_section()
    b = o["breakdown_mean_s"]
    t.add_row("E2E breakdown (ms)", f"queue {_ms(b['queue'])}", f"compute {_ms(b['compute'])}", f"comm {_ms(b['comm'])}", "")
    t.add_row("requests", f"{o['requests']:,}", f"finished {o['finished']:,}", f"dropped {o['dropped']:,}",
              f"preempted {o['preemptions']:,}")
    att = o["slo_attainment"]
    t.add_row("SLO attainment", "-" if att is None else f"{100 * att:.1f}%", f"goodput {o['goodput_rps']:.2f}/s",
              f"thruput {o['throughput_rps']:.2f}/s", "")
    res = g["reservation_pct_of_peak"]
    busy = g["busy_frac_of_allocated"]
    t.add_row("GPUs", f"peak {g['peak_allocated']}/{g['cluster']}", f"always-on {g['always_on']}",
              "-" if res is None else f"reserv. {res:.0f}%", "-" if busy is None else f"busy {100 * busy:.0f}%")
    t.add_row("GPU-seconds", f"{g['allocated_gpu_s']:,.0f}", f"busy {g['busy_gpu_s']:,.0f}", "", "")
    return t
