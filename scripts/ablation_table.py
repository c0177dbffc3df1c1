"""One markdown table from a folder of ablation runs (scripts/ablations.sh): a row per variant.

    python scripts/ablation_table.py results/ablations_cv4_paged_1800s
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> None:
    rows = []
    for run in sorted(Path(folder).iterdir()):
        f = run / "summary.json"
        if not f.is_file():
            continue
        s = json.loads(f.read_text())
        rows.append((run.name, s))
    print("| variant | SLO | per-model mean | unserved | E2E mean (s) | goodput (req/s) | GPU-hours | refactors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in rows:
        o, g = s["overall"], s["gpus"]
        print(f"| {name} | {o['slo_attainment']:.1%} | {o['slo_attainment_model_mean']:.1%} | "
              f"{', '.join(s.get('unserved_models') or []) or '-'} | {o['e2e_s']['mean']:.2f} | "
              f"{o['goodput_rps']:.2f} | {g['allocated_gpu_s'] / 3600:.1f} | {s['refactors']['count']} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
