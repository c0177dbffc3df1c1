"""`flexpipe-sim compare`: every policy on the same arrivals (same scenario, same seed), one table.

Each run keeps its own results folder (<out>/<scenario>/<policy label>/); the comparison is written
as comparison.csv, comparison.md and comparison.png in <out>, and the paper-style evaluation report
(evaluation.py: markdown, HTML, Figs. 8-12) in <out>/report. A policy takes the scenario's params
when the scenario names that policy, else its defaults; a variant names its own params:
`flexpipe:refactor=false+use_affinity=false` (values are YAML: numbers, true/false, lists).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from .evaluation import write_report
from .metrics import model_slo_columns
from .runner import run_scenario
from .scenario import Scenario, parse_scenario
from .yamlio import YamlError, parse_yaml


def split_policies(text: str) -> list[str]:
    """Split a --policies list on commas outside brackets ('flexpipe:granularities=[1,2],static')."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [p for p in out if p]


def parse_policy(spec: str) -> tuple[str, dict]:
    """'name' or 'name:key=value+key=value' -> (name, params); raises ValueError on a bad form."""
    name, _, rest = spec.partition(":")
    params: dict = {}
    for item in filter(None, rest.split("+")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"policy variant {spec!r}: expected key=value, got {item!r}")
        if not value.strip():
            raise ValueError(f"policy variant {spec!r}: no value for {key.strip()!r}")
        try:
            params[key.strip()] = parse_yaml(value, f"policy variant {spec!r}")
        except YamlError as e:
            raise ValueError(str(e)) from None
    return name.strip(), params


def with_policy(sc: Scenario, policy: str) -> Scenario:
    name, variant = parse_policy(policy)
    raw = sc.model_dump(mode="json")
    params = dict(raw["policy"]["params"]) if raw["policy"]["name"] == name and not variant else {}
    params.update(variant)
    raw["policy"] = {"name": name, "params": params}
    return parse_scenario(raw, f"{sc.name} with policy {policy}")


def row(sc: Scenario, summary: dict) -> dict:
    o, g, rf = summary["overall"], summary["gpus"], summary["refactors"]
    return {
        "scenario": sc.name, "policy": sc.policy.name, "requests": o["requests"], "dropped": o["dropped"],
        "ttft_p50_s": o["ttft_s"]["p50"], "ttft_p99_s": o["ttft_s"]["p99"], "tpot_p50_s": o["tpot_s"]["p50"],
        "e2e_mean_s": o["e2e_s"]["mean"], "e2e_p50_s": o["e2e_s"]["p50"], "e2e_p99_s": o["e2e_s"]["p99"],
        "queue_mean_s": o["breakdown_mean_s"]["queue"], "batch_wait_mean_s": o["breakdown_mean_s"]["batch_wait"],
        "compute_mean_s": o["breakdown_mean_s"]["compute"], "comm_mean_s": o["breakdown_mean_s"]["comm"],
        "slo_attainment": o["slo_attainment"], "slo_model_mean": o["slo_attainment_model_mean"],
        "unserved": " ".join(summary["unserved_models"]),
        "goodput_rps": o["goodput_rps"], "gpu_s": g["allocated_gpu_s"], "busy_frac": g["busy_frac_of_allocated"],
        "peak_gpus": g["peak_allocated"], "reservation_pct": g["reservation_pct_of_peak"],
        "goodput_per_gpu": g["resource_efficiency_goodput_per_gpu"], "refactors": rf["count"],
        "refactor_pause_ms_mean": None if rf["pause_s_mean"] is None else 1e3 * rf["pause_s_mean"],
        **model_slo_columns(summary, [m.name for m in sc.models]),
    }


def compare(scenarios: list[Scenario], policies: list[str], out: Path,
            on_run: Callable[[str, str], None] | None = None) -> pd.DataFrame:
    rows = []
    for sc in scenarios:
        for pol in policies:
            if on_run:
                on_run(sc.name, pol)
            run = with_policy(sc, pol)
            res = run_scenario(run, out / sc.name / pol.replace("/", "_"))
            rows.append({**row(run, res.summary), "policy": pol})
            # results so far are on disk before the next run can fail
            pd.DataFrame(rows).to_csv(out / "comparison.csv", index=False)
    df = pd.DataFrame(rows)
    (out / "comparison.md").write_text(df.to_markdown(index=False, floatfmt=".3g") + "\n")
    plot(df, out / "comparison.png")
    write_report([out], out / "report")
    return df


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    labels = [f"{s}\n{p}" for s, p in zip(df.scenario, df.policy)]
    x = range(len(df))
    axes[0].bar([i - 0.2 for i in x], df.e2e_p50_s, 0.4, label="p50")
    axes[0].bar([i + 0.2 for i in x], df.e2e_p99_s, 0.4, label="p99")
    axes[0].set_ylabel("end-to-end latency (s)")
    axes[0].legend()
    axes[1].bar(x, 100 * df.slo_attainment, color="tab:green", label="all requests")
    axes[1].scatter(list(x), 100 * df.slo_model_mean.astype(float), color="black", marker="D", zorder=3,
                    label="unweighted mean over models")
    axes[1].set_ylabel("SLO attainment (%)")
    axes[1].legend(fontsize=7)
    axes[2].bar(x, df.gpu_s / 3600, color="tab:gray")
    axes[2].set_ylabel("GPU-hours allocated")
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("policies on the same arrivals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
