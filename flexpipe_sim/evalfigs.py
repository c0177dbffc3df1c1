"""The evaluation report's figures (FlexPipe §9: Figs. 8-12 and GPUs reserved over time).

Each function draws one PNG and returns its figure, or returns None without writing anything when
its runs are missing (the report then says which figure was left out and why). Every policy has one
colour and marker in every figure (palette.py), whichever policies a panel holds. Units: latency in
seconds, stall recovery in milliseconds (as the paper's Fig. 11 and its claims), time axes in
minutes. Constrained layout and wrapped titles keep every title and legend inside the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .palette import policy_order, policy_style
from .report import wrap_title
from .stalls import BASELINE_Q, RECOVER_X, STALL_X, recoveries

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .evaluation import Run

MIN_S = 60.0  # time axes are in minutes: runs last minutes to hours
STALL_AXIS_MS = 1e-3  # Fig. 11 starts at 1 µs: shorter recoveries are same-instant arrivals


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_cv(n: int, **kw):
    """One row of panels, one per CV."""
    n = max(1, n)
    return _plt().subplots(1, n, figsize=(max(4.2 * n, 7), 4.4), squeeze=False, layout="constrained", **kw)


def _save(fig: Figure, path: Path, title: str) -> Figure:
    fig.suptitle(wrap_title(title, fig.get_figwidth()))  # wrapped rather than clipped
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return fig


def _policy_legend(fig: Figure, labels: list[str], line: bool = True, marker: bool = True) -> None:
    """One legend for the whole figure, under the panels: every policy drawn in any panel."""
    from matplotlib.lines import Line2D

    labels = sorted(dict.fromkeys(labels), key=policy_order)
    if not labels:
        return
    handles = [Line2D([], [], color=policy_style(lb)[0], marker=policy_style(lb)[1] if marker else None,
                      ls="-" if line else "none",
                      label=lb) for lb in labels]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)


def _main(t: pd.DataFrame) -> pd.DataFrame:
    return t[t.cv.notna() & ~t.scenario.str.contains("burst")]


def _cv_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Panel title -> its runs: one panel per CV, or per scenario where several scenarios share a CV
    (two scenarios' lines under one policy label would be mislabelled)."""
    by_cv: dict[float, dict[str, list[Run]]] = {}
    for r in runs:
        if r.cv is not None and not r.burst:
            by_cv.setdefault(r.cv, {}).setdefault(r.scenario, []).append(r)
    out: dict[str, list[Run]] = {}
    for cv, scs in sorted(by_cv.items()):
        for sc, rs in sorted(scs.items()):
            out[f"CV {cv:g}" if len(scs) == 1 else f"CV {cv:g}: {sc}"] = sorted(rs, key=lambda r: policy_order(r.policy))
    return out


# Fig. 8's parts (metrics.py): they sum to the mean E2E of finished requests.
BREAKDOWN = [("queue_s", "queue (arrival to admission)", "tab:red"),
             ("batch_wait_s", "batch wait (admitted, off the critical path)", "tab:orange"),
             ("compute_s", "compute", "tab:blue"), ("comm_s", "communication", "tab:green")]


def fig_breakdown(t: pd.DataFrame, path: Path) -> Figure | None:
    main = _main(t)
    if main.empty:
        return None
    cvs = sorted(main.cv.unique())
    fig, axes = _per_cv(len(cvs))
    for ax, cv in zip(axes[0], cvs):
        d = main[main.cv == cv]
        x = np.arange(len(d))
        bottom = np.zeros(len(d))
        for col, label, color in BREAKDOWN:
            v = d[col].fillna(0).to_numpy()
            ax.bar(x, v, 0.7, bottom=bottom, label=label, color=color)
            bottom += v
        ax.set_xticks(x)
        labels = d.policy if d.scenario.nunique() == 1 else d.policy + " · " + d.scenario
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"CV {cv:g}")
        ax.set_ylabel("mean E2E latency (s)")
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return _save(fig, path, "Fig. 8: latency breakdown per CV (mean over each policy's finished requests)")


def fig_burst(runs: list[Run], path: Path, bin_s: float = 5.0) -> Figure | None:
    burst = sorted([r for r in runs if r.burst], key=lambda r: policy_order(r.policy))
    if not burst:
        return None
    fig, ax = _plt().subplots(figsize=(9, 4.2), layout="constrained")
    for r in burst:
        d = r.requests[r.requests.drop_reason == ""]
        s = d.groupby((d.arrival_s // bin_s) * bin_s).e2e_s.mean()
        color, marker = policy_style(r.policy)
        ax.plot(s.index / MIN_S, s.values, label=r.policy, lw=1.3, color=color, marker=marker, ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("arrival time (min)")
    ax.set_ylabel(f"mean E2E latency per {bin_s:g} s bin (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    # the window measured (after the warm-up) and the CV, from the runs themselves
    start = min(r.warmup_s for r in burst)
    end = max(r.horizon_s if r.horizon_s is not None else float(r.requests.arrival_s.max()) for r in burst)
    cvs = sorted({r.cv for r in burst if r.cv is not None})
    cv = f"CV {', '.join(f'{c:g}' for c in cvs)}, " if cvs else ""
    return _save(fig, path, f"Fig. 9: latency over time in the burst test ({cv}arrivals "
                            f"{start / MIN_S:.3g}-{end / MIN_S:.3g} min)")


def fig_percentiles(runs: list[Run], path: Path) -> Figure | None:
    by_cv = _cv_runs(runs)
    if not by_cv:
        return None
    qs = [50, 75, 90, 95, 99]
    fig, axes = _per_cv(len(by_cv))
    drawn = []
    for ax, (title, rs) in zip(axes[0], by_cv.items()):
        for r in rs:
            e = r.requests.e2e_s[r.requests.drop_reason == ""].to_numpy()
            if len(e):
                color, marker = policy_style(r.policy)
                ax.plot(range(len(qs)), np.percentile(e, qs), marker=marker, color=color, label=r.policy)
                drawn.append(r.policy)
        ax.set_yscale("log")
        ax.set_xticks(range(len(qs)))
        ax.set_xticklabels([f"P{q}" for q in qs])
        ax.set_title(wrap_title(title, 4.2))  # a panel is ~4.2 in wide
        ax.set_ylabel("E2E latency (s)")
        ax.grid(alpha=0.3)
    _policy_legend(fig, drawn)
    return _save(fig, path, "Fig. 10: E2E latency percentiles of finished requests per CV")


def fig_stalls(runs: list[Run], path: Path) -> Figure | None:
    """CDF of stall recovery times on a log axis, every value at its place (0 ms has none: the curve
    starts at the share of those). The axis starts at 1 µs; the legend counts the recoveries below it
    (requests arriving at nearly the same instant), the curve enters at their share."""
    by_cv = _cv_runs(runs)
    if not by_cv:
        return None
    fig, axes = _per_cv(len(by_cv))
    for ax, (title, rs) in zip(axes[0], by_cv.items()):
        below = False
        for r in rs:
            rec, open_ = recoveries(r.requests)
            if not len(rec):
                continue
            ms = np.sort(rec) * 1e3
            pos, zeros, tiny = ms[ms > 0], int((ms <= 0).sum()), int((ms < STALL_AXIS_MS).sum())
            below |= tiny > 0
            label = f"{r.policy}: {len(ms)} recovered" + (f", {tiny} under 1 µs" if tiny else "") + (
                f", {open_} open at the end" if open_ else "")
            color, _ = policy_style(r.policy)
            if len(pos):
                y = (zeros + np.arange(1, len(pos) + 1)) / len(ms)
                ax.plot(np.r_[pos[0], pos], np.r_[zeros / len(ms), y], drawstyle="steps-post", color=color,
                        label=label)
            else:
                ax.plot([], [], color=color, label=label)  # all in 0 ms: only the legend says so
        ax.set_xscale("log")
        if below:
            ax.set_xlim(left=STALL_AXIS_MS)  # a view limit: the data is not moved
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("stall recovery time (ms, log scale)")
        ax.set_ylabel("fraction of recovered stalls")
        ax.set_title(wrap_title(title, 4.2))  # a panel is ~4.2 in wide
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no recovered stalls", ha="center", transform=ax.transAxes)
    return _save(fig, path, f"Fig. 11: stall recovery per CV (a stall: latency per output token above {STALL_X:g}x "
                            f"the run's P{BASELINE_Q}, until back within {RECOVER_X:g}x)")


def fig_efficiency(t: pd.DataFrame, path: Path) -> Figure | None:
    main = _main(t)
    if main.empty:
        return None
    fig, (a, b) = _plt().subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    pols = sorted(main.policy.unique(), key=policy_order)
    for pol in pols:
        d = main[main.policy == pol]
        color, marker = policy_style(pol)
        a.scatter(100 * d.gpu_busy_frac.astype(float), d.goodput_rps, marker=marker, color=color, s=50, label=pol)
        for _, row in d.iterrows():
            a.annotate(f"CV{row.cv:g}", (100 * row.gpu_busy_frac, row.goodput_rps), fontsize=7, xytext=(3, 3),
                       textcoords="offset points")
    a.set_xlim(0, 100)
    a.set_ylim(bottom=0)  # magnitudes: a cut axis exaggerates differences
    a.set_xlabel("GPU utilisation: busy / allocated GPU-seconds (%)")
    a.set_ylabel("goodput (req/s meeting the SLO)")
    a.grid(alpha=0.3)
    cvs = sorted(main.cv.unique())
    w = 0.8 / max(1, len(pols))
    for i, pol in enumerate(pols):
        # mean over the scenarios at a CV (e.g. a load sweep's rates); no bar where the policy has no run
        d = main[main.policy == pol].groupby("cv").goodput_per_gpu.mean().reindex(cvs)
        x = np.arange(len(cvs)) + i * w
        ok = d.notna().to_numpy()
        b.bar(x[ok], d.to_numpy(dtype=float)[ok], w, label=pol, color=policy_style(pol)[0])
    b.set_xticks(np.arange(len(cvs)) + w * (len(pols) - 1) / 2)
    b.set_xticklabels([f"CV {c:g}" for c in cvs])
    b.set_ylim(bottom=0)
    b.set_ylabel("goodput per allocated GPU (req/s)")
    b.grid(alpha=0.3, axis="y")
    _policy_legend(fig, pols, line=False)
    return _save(fig, path, "Fig. 12: goodput against GPU utilisation (left) and goodput per allocated GPU (right)")


def fig_gpus(runs: list[Run], path: Path) -> Figure | None:
    by_cv = _cv_runs(runs)
    if not by_cv:
        return None
    fig, axes = _per_cv(len(by_cv), sharey=True)
    drawn = []
    for ax, (title, rs) in zip(axes[0], by_cv.items()):
        for r in rs:
            ts = r.timeseries
            ax.step(ts.time_s / MIN_S, ts.gpus_allocated, where="post", label=r.policy, lw=1,
                    color=policy_style(r.policy)[0])
            drawn.append(r.policy)
        ends = {r.horizon_s for r in rs if r.horizon_s is not None}
        for h in ends:  # after it the runs drain their queues; each line ends when its run does
            ax.axvline(h / MIN_S, color="gray", ls=":", lw=1)
        ax.set_xlabel("simulated time (min); dotted: arrivals end" if ends else "simulated time (min)")
        ax.set_title(wrap_title(title, 4.2))  # a panel is ~4.2 in wide
        ax.grid(alpha=0.3)
    axes[0][0].set_ylim(bottom=0)  # once all panels are drawn: the shared axis then fits every panel
    axes[0][0].set_ylabel("GPUs allocated")
    _policy_legend(fig, drawn, marker=False)
    return _save(fig, path, "GPUs allocated over time per CV")


# file name -> the runs it needs (the report says so when it is left out)
NEEDS_CV = "runs of CV scenarios (workload.arrivals.cv set, not the burst test)"
FIGURES: dict[str, str] = {
    "fig08_breakdown.png": NEEDS_CV, "fig09_burst.png": "a burst-test run (a scenario named *burst*)",
    "fig10_percentiles.png": NEEDS_CV, "fig11_stall_cdf.png": NEEDS_CV, "fig12_efficiency.png": NEEDS_CV,
    "gpus_reserved.png": NEEDS_CV}


def draw_all(runs: list[Run], t: pd.DataFrame, out: Path) -> tuple[list[str], list[str]]:
    """Draw every figure that has data into `out`: (files drawn, a line per figure left out)."""
    made = {"fig08_breakdown.png": lambda p: fig_breakdown(t, p), "fig09_burst.png": lambda p: fig_burst(runs, p),
            "fig10_percentiles.png": lambda p: fig_percentiles(runs, p),
            "fig11_stall_cdf.png": lambda p: fig_stalls(runs, p),
            "fig12_efficiency.png": lambda p: fig_efficiency(t, p), "gpus_reserved.png": lambda p: fig_gpus(runs, p)}
    drawn, skipped = [], []
    for name, draw in made.items():
        if draw(out / name) is not None:
            drawn.append(name)
        else:
            (out / name).unlink(missing_ok=True)  # a figure from an earlier report would look current
            skipped.append(f"{name}: not drawn, these runs hold no {FIGURES[name]}")
    return drawn, skipped
