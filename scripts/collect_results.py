"""Copy the light artefacts of a results folder into the repository (docs/results/...): every
summary, table, report and report figure, not a run's own plots nor the per-request parquet/CSV files (tens of MB per 2 h run).

    python scripts/collect_results.py results/paper_2h_paged docs/results/paper_2h_paged
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

KEEP = {".json", ".md", ".html", ".png", ".yaml"}
KEEP_CSV_EXCEPT = {"requests.csv", "timeseries.csv"}  # per-request rows / per-second samples: too large


def main(src: str, dst: str) -> None:
    s, d = Path(src), Path(dst)
    if not s.is_dir():
        sys.exit(f"error: {s} is not a results folder")
    n = 0
    for f in sorted(s.rglob("*")):
        if not f.is_file():
            continue
        if f.suffix == ".png" and (f.parent / "summary.json").exists():
            continue  # a run's own plots: the report's figures cover them (~250 KB a run)
        rel = f.relative_to(s).parts
        if "report" in rel[1:-1] and (s / "report").is_dir():
            continue  # each compare's own report: the combined report (<src>/report) covers its runs
        if f.suffix in KEEP or (f.suffix == ".csv" and f.name not in KEEP_CSV_EXCEPT):
            t = d / f.relative_to(s)
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, t)
            n += 1
    print(f"copied {n} files to {d}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
