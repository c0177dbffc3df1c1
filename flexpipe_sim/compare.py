"""`flexpipe-sim compare`: every policy on the same arrivals (same scenario, same seed), one table.

Each run keeps its own results folder (<out>/<scenario>/<policy label>/); the comparison is written
as comparison.csv, comparison.md and comparison.png in <out>, and the paper-style evaluation report
(evaluation.py: markdown, HTML, Figs. 8-12) in <out>/report. A policy takes the scenario's params
when the scenario names that policy, else its defaults; a variant names its own params:
`flexpipe:refactor=false+use_affinity=false` (values are YAML: numbers, true/false, lists).
The folder is written beside <out> and moved into place when done (outdir.py); Ctrl-C keeps the
finished runs, marked `interrupted` in run_info.json with the runs that are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from .engine.simulator import ProgressFn
from .evaluation import write_report
from .metrics import UNSERVED_BELOW, model_slo_columns
from .outdir import ResultsFolder, results_folder
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


class RunsInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a set of runs: the finished ones are kept in `out`; `missing` names the others."""

    def __init__(self, out: Path, done: list[str], missing: list[str]) -> None:
        super().__init__("interrupted")
        self.out, self.done, self.missing = out, done, missing


def run_all(plan: list[tuple[str, Scenario]], rf: ResultsFolder, on_row: Callable[[str, Scenario, dict], None],
            on_run: Callable[[int, str], None] | None = None, progress: ProgressFn | None = None) -> None:
    """Run each (folder label, scenario) into the staged folder, calling on_row after each. run_info.json
    lists the runs done and missing; Ctrl-C raises RunsInterrupted (the caller's folder keeps the
    finished runs and is marked interrupted), any other error leaves it marked failed."""
    done: list[str] = []
    rf.info.update(runs_done=done, runs_missing=[label for label, _ in plan])
    try:
        for i, (label, sc) in enumerate(plan):
            if on_run:
                on_run(i, label)
            res = run_scenario(sc, rf.path / label, staged=False, progress=progress)
            done.append(label)
            rf.info["runs_missing"] = [lb for lb, _ in plan[i + 1:]]
            on_row(label, sc, res.summary)
    except KeyboardInterrupt:
        raise RunsInterrupted(rf.target, done, rf.info["runs_missing"]) from None


def _run_one(sc: Scenario, folder: str) -> dict | None:
    """One run in a worker process: its results folder is written there; the summary comes back
    (None: the compare was interrupted before this run started)."""
    from .sweeppool import stopped

    return None if stopped() else run_scenario(sc, Path(folder), staged=False).summary


def run_parallel(plan: list[tuple[str, Scenario]], rf: ResultsFolder, on_row: Callable[[str, Scenario, dict], None],
                 workers: int, on_run: Callable[[int, str], None] | None = None) -> None:
    """run_all's contract on a process pool: the runs are independent (each builds its own arrivals
    from its scenario and seed), so the numbers are those of the sequential run. on_row is called in
    plan order (a run that finishes early waits for those before it), so comparison.csv's rows are
    too; on_run is called as each run is submitted. The pool: sweeppool.py."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from .sweeppool import stoppable_pool

    done: list[str] = []
    rf.info.update(runs_done=done, runs_missing=[label for label, _ in plan])
    results: dict[int, dict] = {}
    nxt = 0
    try:
        with stoppable_pool(workers) as pool:  # on leaving by an error, no queued run starts
            futs = {}
            for i, (label, sc) in enumerate(plan):
                if on_run:
                    on_run(i, label)
                futs[pool.submit(_run_one, sc, str(rf.path / label))] = i
            while futs:
                finished, _ = wait(futs, return_when=FIRST_COMPLETED)
                for f in finished:
                    results[futs.pop(f)] = f.result()  # a run's error stops the compare, as in run_all
                while nxt in results:
                    label, sc = plan[nxt]
                    done.append(label)
                    rf.info["runs_missing"] = [lb for j, (lb, _) in enumerate(plan) if j > nxt and j not in results]
                    on_row(label, sc, results.pop(nxt))
                    nxt += 1
    except KeyboardInterrupt:
        raise RunsInterrupted(rf.target, done, [lb for lb, _ in plan[nxt:]]) from None


def compare(scenarios: list[Scenario], policies: list[str], out: Path,
            on_run: Callable[[str, str], None] | None = None, *, force: bool = False,
            progress: ProgressFn | None = None, workers: int = 1) -> pd.DataFrame:
    """Every policy on every scenario, written as one results folder (staged beside `out`, moved into
    place when done or interrupted: outdir.py). Raises RunsInterrupted on Ctrl-C. `workers` > 1 runs
    them in that many processes (run_parallel; `progress` is then not called: the runs are elsewhere)."""
    plan = [(f"{sc.name}/{pol.replace('/', '_')}", sc, pol) for sc in scenarios for pol in policies]
    rows: list[dict] = []
    with results_folder(out, "compare", force=force) as rf:
        def on_row(label: str, run: Scenario, summary: dict) -> None:
            pol = next(p for lb, _, p in plan if lb == label)
            rows.append({**row(run, summary), "policy": pol})
            pd.DataFrame(rows).to_csv(rf.path / "comparison.csv", index=False)  # what is done, as it is done

        runs = [(lb, with_policy(sc, pol)) for lb, sc, pol in plan]
        announce = (lambda i, lb: on_run(plan[i][1].name, plan[i][2])) if on_run else None
        try:
            if workers > 1 and len(runs) > 1:
                run_parallel(runs, rf, on_row, min(workers, len(runs)), on_run=announce)
            else:
                run_all(runs, rf, on_row, on_run=announce, progress=progress)
        except KeyboardInterrupt:
            if rows:  # the finished runs' table, as readable as a complete one
                (rf.path / "comparison.md").write_text(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g") + "\n")
            raise
        df = pd.DataFrame(rows)
        (rf.path / "comparison.md").write_text(df.to_markdown(index=False, floatfmt=".3g") + "\n")
        plot(df, rf.path / "comparison.png")
        write_report([rf.path], rf.path / "report", shown=[str(out)])
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


# The terminal table: (header, column, format). Headers are short and break where given; cells never
# wrap, so an 80-column terminal shows whole numbers (a long policy label folds instead).
TERMINAL_COLUMNS = [("E2E\np50 s", "e2e_p50_s", "{:.2f}"), ("E2E\np99 s", "e2e_p99_s", "{:.2f}"),
                    ("TTFT\np99 s", "ttft_p99_s", "{:.2f}"), ("SLO", "slo_attainment", "{:.1%}"),
                    ("SLO\nmodel\nmean", "slo_model_mean", "{:.1%}"), ("good-\nput\nreq/s", "goodput_rps", "{:.2f}"),
                    ("GPU-h", "gpu_h", "{:.1f}"), ("peak\nGPUs", "peak_gpus", "{:.0f}"),
                    ("refac-\ntors", "refactors", "{:.0f}")]


def terminal_tables(df: pd.DataFrame) -> list:
    """One rich table per scenario (its name as the title), policies as rows; then a red line per
    unserved model (a column for them would not fit)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    df = df.assign(gpu_h=df.gpu_s / 3600)
    out: list = []
    for scenario, d in df.groupby("scenario", sort=False):
        cells = [[("-" if pd.isna(r[k]) else fmt.format(r[k])) for _, k, fmt in TERMINAL_COLUMNS]
                 for _, r in d.iterrows()]
        t = Table(title=f"{scenario}: policies on the same arrivals", box=box.SIMPLE_HEAD, padding=(0, 1),
                  pad_edge=False, collapse_padding=True,
                  title_justify="left")
        t.add_column("policy", overflow="fold", min_width=8)
        for i, (head, _, _) in enumerate(TERMINAL_COLUMNS):
            width = max(max(len(x) for x in head.split("\n")), *(len(c[i]) for c in cells))
            t.add_column(head, justify="right", no_wrap=True, min_width=width)
        for (_, r), c in zip(d.iterrows(), cells):
            t.add_row(str(r["policy"]), *c, style="red" if r["unserved"] else None)
        out.append(t)
        for _, r in d[d.unserved.astype(bool)].iterrows():
            out.append(Text(f"unserved: {scenario} / {r['policy']}: {r['unserved']} (under "
                            f"{UNSERVED_BELOW:.0%} of its requests met the SLO)", style="bold red"))
    return out
