"""The compact tables of docs/paper-evaluation.md from a report's runs.csv: one row per policy, one
column per scenario, each cell "SLO / per-model mean / goodput req/s / GPU-hours", plus E2E mean.

    python scripts/results_tables.py docs/results/paper_2h_paged/report/runs.csv
"""

from __future__ import annotations

import sys

import pandas as pd

ORDER = ["flexpipe", "static", "serverlessllm", "alpaserve", "muxserve", "tetris"]


def _pivot(df: pd.DataFrame, cell) -> pd.DataFrame:
    scen = sorted(df.scenario.unique(), key=lambda s: (s.startswith("paper_burst"), s))
    pols = [p for p in ORDER if p in set(df.policy)] + sorted(set(df.policy) - set(ORDER))
    rows = []
    for p in pols:
        r = {"policy": p}
        for s in scen:
            hit = df[(df.policy == p) & (df.scenario == s)]
            r[s] = cell(hit.iloc[0]) if len(hit) else "-"
        rows.append(r)
    return pd.DataFrame(rows)


def main(path: str) -> None:
    df = pd.read_csv(path)
    print("SLO attainment / per-model mean / goodput (req/s) / GPU-hours allocated:\n")
    print(_pivot(df, lambda r: f"{r.slo_attainment:.1%} / {r.slo_model_mean:.1%} / {r.goodput_rps:.1f} / "
                               f"{r.gpu_hours:.0f}").to_markdown(index=False))
    print("\nMean E2E of finished requests (s) / p99 / dropped / unserved models:\n")
    un = "unserved" if "unserved" in df.columns else None
    print(_pivot(df, lambda r: f"{r.e2e_mean_s:.1f} / {r.e2e_p99_s:.0f} / {int(r.dropped)} / "
                               f"{(r[un] if un and isinstance(r[un], str) else '-')}").to_markdown(index=False))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
