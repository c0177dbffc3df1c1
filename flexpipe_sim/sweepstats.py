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


def terminal_tables(agg: pd.DataFrame, grid_keys: list[str], title: str) -> list:
    """One rich table per scenario (its name in the title), a row per grid point x policy."""
    from rich import box
    from rich.table import Table

    out = []
    for sc, d in agg.groupby("scenario", sort=False):
        t = Table(title=f"{title} ({sc}): mean ±half-width of the {CONFIDENCE:.0%} t interval over seeds "
                        "(all metrics in sweep.md)", box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1),
                  pad_edge=False, collapse_padding=True)
        for k in grid_keys:
            t.add_column(k.split(".")[-1], overflow="fold", max_width=24)
        t.add_column("policy", overflow="fold", min_width=8)
        t.add_column("n", justify="right", no_wrap=True)
        for _, head, _ in TERMINAL:
            t.add_column(head, justify="right", no_wrap=True)
        for _, r in d.iterrows():
            n = f"{r.seeds}" + (f" ({r.failed} failed)" if r.failed else "")
            t.add_row(*(str(r[k]) for k in grid_keys), str(r.policy), n, *(_cell(r, c, f) for c, _, f in TERMINAL),
                      style="red" if r.failed else None)
        out.append(t)
    return out


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


def _band(d: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high), the interval clipped to what the quantity can be: every metric here is
    non-negative and SLO attainment is a fraction, but a t interval on few seeds can pass either bound."""
    m, lo, hi = (d[f"{col}_{s}"].astype(float).to_numpy() for s in ("mean", "ci_lo", "ci_hi"))
    top = 1.0 if col == "slo_attainment" else np.inf
    return m, np.clip(lo, 0, top), np.clip(hi, 0, top)


def _short(label: str, width: int = 28) -> str:
    """A grid value as a tick or legend label: a long one (a mapping's JSON) would squeeze the panels."""
    return label if len(label) <= width else label[: width - 1] + "…"


LINESTYLES = ["-", "--", ":", "-."]  # one per combination of the other grid keys' values


def plot(agg: pd.DataFrame, grid_keys: list[str], path: Path, title: str) -> None:
    """A row of panels per scenario: each metric against the first numeric grid key, a line and CI band
    per policy (colour) and per value of the other grid keys (line style); without a numeric grid key,
    a point with its interval per policy and grid value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkey = next((k for k in grid_keys if pd.api.types.is_numeric_dtype(agg[k])), None)
    rest = [k for k in grid_keys if k != xkey]
    combo = (agg[rest].astype(str).agg(", ".join, axis=1) if rest else pd.Series("", index=agg.index))
    combos = list(dict.fromkeys(combo))
    scenarios = list(dict.fromkeys(agg.scenario))
    fig, axes = plt.subplots(len(scenarios), len(PLOTTED), figsize=(4.2 * len(PLOTTED), 3.6 * len(scenarios)),
                             squeeze=False, layout="constrained")
    labels = {c: label for c, label, _, _ in SHOWN} | {"slo_attainment": "SLO attainment (fraction)"}
    for r, (row, sc) in enumerate(zip(axes, scenarios)):
        here = agg[agg.scenario == sc]
        pols = list(dict.fromkeys(here.policy))
        for (pol, c), d in here.groupby([here.policy, combo[here.index]], sort=False):
            color, marker = policy_style(pol)
            name = (pol + (f", {_short(c)}" if c else "")) if r == 0 else "_nolegend_"
            if xkey:
                d = d.sort_values(xkey)
                x = d[xkey].astype(float).to_numpy()
            else:  # categories: the other grid values; policies side by side
                x = np.array([combos.index(c) + 0.1 * pols.index(pol)])
            for ax, col in zip(row, PLOTTED):
                m, lo, hi = _band(d, col)
                if xkey:
                    ax.plot(x, m, color=color, marker=marker, ls=LINESTYLES[combos.index(c) % 4], label=name)
                    ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
                else:
                    err = np.nan_to_num(np.vstack([m - lo, hi - m]))
                    ax.errorbar(x, m, yerr=err, color=color, fmt=marker, capsize=3, label=name)
        for ax, col in zip(row, PLOTTED):
            ax.set_title(sc, fontsize=9)
            ax.set_ylabel(labels[col])
            ax.grid(alpha=0.3)
            if xkey:
                ax.set_xlabel(xkey)
                ax.set_xticks(sorted(agg[xkey].astype(float).unique()))
            else:
                ax.set_xticks(range(len(combos)), [_short(c) or "all" for c in combos], fontsize=7)
                ax.set_xlim(-0.5, len(combos) - 0.5 + 0.1 * len(pols))
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title}: mean over seeds, band/bar = {CONFIDENCE:.0%} t interval (clipped to the metric's range)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
