"""`flexpipe-sim loadsweep`: `compare`'s runs at several total arrival rates, and where each paper
claim holds.

Each rate sets `workload.arrivals.rate` (the total over all models; every arrival kind takes it) and
renames the scenario `<name>_r<rate>`; every policy then runs on that rate's arrivals, as `compare`
runs them. Written in <out>:
  rate_<r>/<policy label>/     each run's results folder (as `flexpipe-sim run` writes them)
  loadsweep.csv, loadsweep.md  one row per (rate, policy): realised rate, SLO attainment, the
                               unweighted mean over models, each model's SLO, unserved models,
                               E2E p50/p99, GPU-hours, goodput, peak GPUs
  loadsweep.png                SLO attainment, GPU-hours and E2E p99 against the rate, one fixed
                               colour and marker per policy (palette.py)
  claims.csv, claims.md        each claim of the paper-vs-ours table (evaluation.CLAIMS) at every
                               rate: our value, whether its ordering holds (evaluation.HOLDS), and
                               the rates at which it holds and fails
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pandas as pd

from .compare import row, run_all, with_policy
from .evaluation import find_runs, paper_vs_ours, runs_table
from .metrics import UNSERVED_BELOW
from .outdir import results_folder
from .palette import policy_style
from .report import wrap_title
from .scenario import Scenario, parse_scenario

RATE_KEY = "workload.arrivals.rate"


def parse_rates(text: str) -> list[float]:
    """'5,10,15' -> [5.0, 10.0, 15.0]; ValueError naming the bad item (numbers > 0, no repeats)."""
    items = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in items):
        raise ValueError(f"--rates {text!r}: expected comma-separated request rates, e.g. 5,10,15")
    rates = []
    for x in items:
        try:
            r = float(x)
        except ValueError:
            raise ValueError(f"--rates {text!r}: {x!r} is not a number (requests per second)") from None
        if not math.isfinite(r) or r <= 0:
            raise ValueError(f"--rates {text!r}: {x!r} must be a rate above 0 requests per second")
        if r in rates:
            raise ValueError(f"--rates {text!r}: {x!r} appears twice")
        rates.append(r)
    return sorted(rates)


def at_rate(sc: Scenario, rate: float) -> Scenario:
    """The scenario with its total arrival rate set to `rate`, named `<name>_r<rate>`."""
    raw = sc.model_dump(mode="json")
    raw["workload"]["arrivals"]["rate"] = rate
    raw["name"] = f"{sc.name}_r{rate:g}".replace("+", "")  # 1e+12 -> 1e12: names allow [A-Za-z0-9_.-]
    return parse_scenario(raw, f"{sc.name} at {RATE_KEY}={rate:g}")


def rate_dir(out: Path, rate: float) -> Path:
    return out / f"rate_{rate:g}"


def sweep(sc: Scenario, rates: list[float], policies: list[str], out: Path,
          on_run: Callable[[float, str, int, int], None] | None = None,
          progress: Callable[[float, int], None] | None = None, *,
          force: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every policy at every rate; write the table, plot and claims. Returns (table, claims).
    `on_run(rate, policy, index, total)` before each run; `progress(sim_time, done)` inside it.
    The folder is staged and moved into place like compare's; Ctrl-C raises compare.RunsInterrupted."""
    scs = {r: at_rate(sc, r) for r in rates}  # every rate is checked before the first run starts
    keys = [(r, p) for r in rates for p in policies]
    plan = [(f"{rate_dir(Path(), r)}/{p.replace('/', '_')}", with_policy(scs[r], p)) for r, p in keys]
    rows: list[dict] = []
    with results_folder(out, "loadsweep", force=force) as rf:
        def on_row(label: str, run: Scenario, summary: dict) -> None:
            rate, pol = keys[len(rows)]
            rows.append(table_row(rate, pol, run, summary))
            pd.DataFrame(rows).to_csv(rf.path / "loadsweep.csv", index=False)  # results so far survive a failure

        run_all(plan, rf, on_row, progress=progress,
                on_run=(lambda i, lb: on_run(*keys[i], i, len(keys))) if on_run else None)
        table = pd.DataFrame(rows)
        claims = claims_by_rate(rf.path, rates)
        write_outputs(rf.path, sc, table, claims)
    return table, claims


def table_row(rate: float, policy: str, sc: Scenario, summary: dict) -> dict:
    r = row(sc, summary)
    models = {k: v for k, v in r.items() if k.startswith("slo_") and k not in ("slo_attainment", "slo_model_mean")}
    return {"rate": rate, "policy": policy, "realised_rps": r["requests"] / (sc.horizon_s - sc.warmup_s),
            "slo_attainment": r["slo_attainment"], "slo_model_mean": r["slo_model_mean"], "unserved": r["unserved"],
            "e2e_p50_s": r["e2e_p50_s"], "e2e_p99_s": r["e2e_p99_s"], "gpu_hours": r["gpu_s"] / 3600,
            "goodput_rps": r["goodput_rps"], "peak_gpus": r["peak_gpus"], "dropped": r["dropped"], **models}


def claims_by_rate(out: Path, rates: list[float]) -> pd.DataFrame:
    """The paper-vs-ours table at every rate, side by side, with the rates where each claim holds/fails."""
    wide: pd.DataFrame | None = None
    for r in rates:
        pv = paper_vs_ours(runs_table(find_runs([rate_dir(out, r)])))
        if wide is None:
            wide = pv[["claim", "paper", "holds_if"]].copy()
        wide[f"ours_r{r:g}"] = pv.ours.to_numpy()
        wide[f"holds_r{r:g}"] = pv.holds.to_numpy()
    assert wide is not None

    def where(row: pd.Series, verdict: str) -> str:
        return ", ".join(f"{r:g}" for r in rates if row[f"holds_r{r:g}"] == verdict)

    wide["holds_at_rps"] = wide.apply(where, axis=1, verdict="yes")
    wide["fails_at_rps"] = wide.apply(where, axis=1, verdict="no")
    return wide


def write_outputs(out: Path, sc: Scenario, table: pd.DataFrame, claims: pd.DataFrame) -> None:
    table.to_csv(out / "loadsweep.csv", index=False)
    claims.to_csv(out / "claims.csv", index=False)
    plot(table, out / "loadsweep.png", sc.name)
    rates = sorted(table.rate.unique())
    shown = claims[["claim", "paper", "holds_if"]].copy()
    for r in rates:  # one readable cell per rate: "yes (48.7)"
        shown[f"{r:g} req/s"] = [
            "-" if pd.isna(o) else f"{h} ({o:g})" for o, h in zip(claims[f"ours_r{r:g}"], claims[f"holds_r{r:g}"])]
    shown["holds at"] = claims.holds_at_rps
    shown["fails at"] = claims.fails_at_rps
    claims_md = ["## The paper's claims at each load", "",
                 "A claim holds when our value shows the paper's ordering (`holds_if`; magnitudes are not "
                 "comparable). '-': the runs at that load cannot test it (a policy or CV it needs was not run).",
                 "", shown.to_markdown(index=False)]
    md = [f"# Load sweep: {sc.name}", "",
          f"Total arrival rate ({RATE_KEY}) {', '.join(f'{r:g}' for r in rates)} req/s; policies "
          f"{', '.join(dict.fromkeys(table.policy))}. `slo_model_mean` is the unweighted mean of the models' "
          f"SLO attainment; `unserved` names models under {100 * UNSERVED_BELOW:.0f}% (metrics.UNSERVED_BELOW).", "",
          table.to_markdown(index=False, floatfmt=".3g"), "", *claims_md, "", "![loadsweep](loadsweep.png)"]
    (out / "loadsweep.md").write_text("\n".join(md) + "\n")
    (out / "claims.md").write_text(f"# {sc.name}: " + "\n".join(claims_md)[3:] + "\n")


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    for pol in dict.fromkeys(table.policy):
        d = table[table.policy == pol].sort_values("rate")
        color, marker = policy_style(pol)
        a.plot(d.rate, 100 * d.slo_attainment.astype(float), color=color, marker=marker, label=pol)
        a.plot(d.rate, 100 * d.slo_model_mean.astype(float), color=color, marker=marker, ls="--", mfc="none")
        b.plot(d.rate, d.gpu_hours, color=color, marker=marker, label=pol)
        c.plot(d.rate, d.e2e_p99_s.astype(float), color=color, marker=marker, label=pol)
    a.set_ylabel("SLO attainment (%): solid all requests,\ndashed unweighted mean over models")
    a.set_ylim(0, 102)
    b.set_ylabel("GPU-hours allocated")
    c.set_ylabel("E2E p99 (s)")
    p99 = table.e2e_p99_s.astype(float)
    if p99.notna().any() and p99.min() > 0:
        c.set_yscale("log")
    for ax in (a, b, c):
        ax.set_xticks(sorted(table.rate.unique()))
        ax.set_xlabel("total arrival rate (req/s)")
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle(wrap_title(f"{title}: policies against load", 15))
    fig.savefig(path, dpi=110)
    plt.close(fig)
