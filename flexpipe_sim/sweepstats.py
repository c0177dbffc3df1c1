"""A sweep's runs aggregated over seeds: mean and 95% confidence interval per grid point x policy.

The interval is Student's t on the seeds' values (scipy.stats.t.interval at 95%, n-1 degrees of
freedom, the standard error of the mean as scale): seeds are independent replications of the same
configuration, and with a handful of them the normal interval would be too narrow. One seed gives
no interval (NaN); seeds that all agree give a zero-width one. Failed runs are counted, not averaged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .palette import policy_style

CONFIDENCE = 0.95  # the conventional level; the task asks for 95% intervals
# (column, label, format, scale): what the table and the plot show
SHOWN = [("slo_attainment", "SLO", "{:.1%}", 1.0), ("ttft_p50_s", "TTFT p50 s", "{:.3g}", 1.0),
         ("ttft_p99_s", "TTFT p99 s", "{:.3g}", 1.0), ("tpot_p50_s", "TPOT p50 s", "{:.3g}", 1.0),
         ("tpot_p99_s", "TPOT p99 s", "{:.3g}", 1.0), ("e2e_p50_s", "E2E p50 s", "{:.3g}", 1.0),
         ("e2e_p99_s", "E2E p99 s", "{:.3g}", 1.0), ("goodput_rps", "goodput req/s", "{:.3g}", 1.0),
         ("gpu_s", "GPU-s", "{:,.0f}", 1.0)]


def mean_ci(values: list[float] | np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of the t interval; NaN values (a metric a run could not measure) are dropped."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) == 1:
        return m, math.nan, math.nan
    sem = float(stats.sem(x))
    if sem == 0.0:
        return m, m, m
    lo, hi = stats.t.interval(confidence, len(x) - 1, loc=m, scale=sem)
    return m, float(lo), float(hi)


def runs_frame(rows: list[dict], grid_keys: list[str]) -> pd.DataFrame:
    """Manifest rows as a table, one column per grid key (a list or mapping value as its JSON text,
    so that it can be grouped on and shown)."""
    df = pd.DataFrame(rows)
    for k in grid_keys:
        df[k] = [_scalar(r["grid"].get(k)) for r in rows]
    return df


def _scalar(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def aggregate(runs: pd.DataFrame, grid_keys: list[str]) -> pd.DataFrame:
    """One row per (scenario, grid point, policy), in first-seen order: seeds, failed, mean/CI columns."""
    keys = ["scenario", *grid_keys, "policy"]
    out = []
    for k, d in runs.groupby(keys, sort=False, dropna=False):
        ok = d[d.status == "complete"]
        r = dict(zip(keys, k if isinstance(k, tuple) else (k,)))
        r.update(seeds=len(ok), failed=int((d.status != "complete").sum()))
        for col, *_ in SHOWN:
            m, lo, hi = mean_ci(ok[col].tolist() if col in ok else [])
            r.update({f"{col}_mean": m, f"{col}_ci_lo": lo, f"{col}_ci_hi": hi})
        out.append(r)
    return pd.DataFrame(out)


def _cell(r: pd.Series, col: str, fmt: str) -> str:
    m, lo, hi = r[f"{col}_mean"], r[f"{col}_ci_lo"], r[f"{col}_ci_hi"]
    if pd.isna(m):
        return "-"
    return fmt.format(m) if pd.isna(lo) else f"{fmt.format(m)} ±{fmt.format((hi - lo) / 2)}"


# The terminal table shows fewer columns than sweep.md so that it fits 100 columns: (column, header, format)
TERMINAL = [("slo_attainment", "SLO", "{:.0%}"), ("ttft_p99_s", "TTFT\np99 s", "{:.2f}"),
            ("e2e_p99_s", "E2E\np99 s", "{:.0f}"), ("goodput_rps", "good-\nput/s", "{:.1f}"),
            ("gpu_s", "GPU-s", "{:.0f}")]


def terminal_table(agg: pd.DataFrame, grid_keys: list[str], title: str):
    from rich import box
    from rich.table import Table

    if agg.scenario.nunique() == 1:
        title = f"{title} ({agg.scenario.iloc[0]})"
    t = Table(title=f"{title}: mean ±half-width of the {CONFIDENCE:.0%} t interval over seeds (all in sweep.md)",
              box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1), pad_edge=False, collapse_padding=True)
    several = agg.scenario.nunique() > 1  # one scenario: its name is in the title
    if several:
        t.add_column("scenario", overflow="fold")
    for k in grid_keys:
        t.add_column(k.split(".")[-1], overflow="fold", max_width=24)
    t.add_column("policy", overflow="fold")
    t.add_column("n", justify="right", no_wrap=True)
    for _, head, _ in TERMINAL:
        t.add_column(head, justify="right", no_wrap=True)
    for _, r in agg.iterrows():
        n = f"{r.seeds}" + (f" ({r.failed} failed)" if r.failed else "")
        t.add_row(*([str(r.scenario)] if several else []), *(str(r[k]) for k in grid_keys), str(r.policy), n,
                  *(_cell(r, c, f) for c, _, f in TERMINAL), style="red" if r.failed else None)
    return t


def write_table(agg: pd.DataFrame, grid_keys: list[str], out: Path, title: str) -> None:
    agg.to_csv(out / "sweep.csv", index=False)
    shown = agg[["scenario", *grid_keys, "policy", "seeds", "failed"]].copy()
    for c, label, f, _ in SHOWN:
        shown[label] = [_cell(r, c, f) for _, r in agg.iterrows()]
    md = [f"# Sweep: {title}", "", f"Mean ± half-width of the {CONFIDENCE:.0%} Student-t interval over seeds "
          "(scipy.stats.t.interval); `failed`: runs that raised (runs.jsonl has their errors). "
          "Bounds are in sweep.csv.", "", shown.to_markdown(index=False), "", "![sweep](sweep.png)"]
    (out / "sweep.md").write_text("\n".join(md) + "\n")


PLOTTED = ["slo_attainment", "e2e_p99_s", "goodput_rps", "gpu_s"]


def plot(agg: pd.DataFrame, grid_keys: list[str], path: Path, title: str) -> None:
    """Each metric against the first numeric grid key, a line per policy (and per scenario and other
    grid values) with its CI band; without a numeric grid key, one point per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkey = next((k for k in grid_keys if pd.api.types.is_numeric_dtype(agg[k])), None)
    others = ["scenario", *[k for k in grid_keys if k != xkey]]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.2 * len(PLOTTED), 4), layout="constrained")
    labels = {c: label for c, label, _, _ in SHOWN} | {"slo_attainment": "SLO attainment (fraction)"}
    for (pol, *rest), d in agg.groupby(["policy", *others], sort=False, dropna=False):
        color, marker = policy_style(pol)
        name = pol + "".join(f", {v}" for v in rest) if agg[others].drop_duplicates().shape[0] > 1 else pol
        x = d[xkey].astype(float).to_numpy() if xkey else np.arange(len(d))
        order = np.argsort(x)
        for ax, col in zip(axes, PLOTTED):
            m, lo, hi = (d[f"{col}_{s}"].astype(float).to_numpy()[order] for s in ("mean", "ci_lo", "ci_hi"))
            if col == "slo_attainment":  # a fraction: the t interval can pass 0 or 1, the quantity cannot
                lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
            ax.plot(x[order], m, color=color, marker=marker, label=name)
            ax.fill_between(x[order], lo, hi, color=color, alpha=0.18, lw=0)
    for ax, col in zip(axes, PLOTTED):
        ax.set_ylabel(labels[col])
        ax.set_xlabel(xkey or "scenario")
        ax.grid(alpha=0.3)
        if xkey:
            ax.set_xticks(sorted(agg[xkey].astype(float).unique()))
        else:
            ax.set_xticks(range(agg.scenario.nunique()), list(dict.fromkeys(agg.scenario)), fontsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: mean over seeds, band = {CONFIDENCE:.0%} t interval")
    fig.savefig(path, dpi=110)
    plt.close(fig)
