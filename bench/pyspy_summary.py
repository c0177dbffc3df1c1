"""Summarise a py-spy profile (`py-spy record -f raw`): the functions with the most samples,
inclusive (anywhere on the stack) and self (on top), as shares of all samples.

    py-spy record -r 200 -f raw -o run.raw -- flexpipe-sim run scenarios/paper/cv4.yaml \
        --set horizon_s=1800 --set "policy={name: flexpipe}" --quiet -o /tmp/run
    python bench/pyspy_summary.py run.raw --top 25 > profile.txt

py-spy samples without hooking calls, so (unlike pyinstrument) the profiled run keeps its speed.
Line numbers are dropped: a function's lines count together.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path


def summarise(path: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    if not total:
        raise SystemExit(f"{path}: no samples")
    out = [f"{path.name}: {total:,} samples", "", "inclusive (on the stack):"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    out += ["", "self (on top of the stack):"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="py-spy record -f raw output")
    ap.add_argument("--top", type=int, default=25, help="rows per table")
    args = ap.parse_args()
    print(summarise(args.raw, args.top))


if __name__ == "__main__":
    main()
