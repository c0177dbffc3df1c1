"""switches.png: token production around each pipeline switch (switchcost.py's downtime, seen).

One panel per switch (the first MAX_PANELS): the times at which the instance produced tokens
(refactor.watch_tokens, every WATCH_S) from 300 ms before the pause to 300 ms after the switch,
the pause shaded, the downtime and the 50 ms target in the title.
"""

from __future__ import annotations

from pathlib import Path

MAX_PANELS = 8  # constant: a readable grid; switches.csv has them all
AROUND_S = 0.3  # constant: several token gaps (6-60 ms in scenarios/hetero) either side


def write_switch_plot(out: Path, refactors: list[dict], rows: list[dict]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .switchcost import TARGET_DOWNTIME_S

    pairs = [(rf, row) for rf, row in zip(refactors, rows) if rf.get("_token_times")][:MAX_PANELS]
    if not pairs:
        return None
    cols = min(4, len(pairs))
    rows_n = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.4 * rows_n), squeeze=False)
    for ax in axes.flat[len(pairs):]:
        ax.axis("off")
    for ax, (rf, row) in zip(axes.flat, pairs):
        t0 = rf["switched_s"]
        lo, hi = rf["paused_s"] - AROUND_S, t0 + AROUND_S
        ts = [1e3 * (t - t0) for t in rf["_token_times"] if lo <= t <= hi]
        ax.vlines(ts, 0, 1, color="tab:blue", lw=0.8)
        ax.axvspan(1e3 * (rf["paused_s"] - t0), 0, color="tab:red", alpha=0.2, label="paused")
        ax.set_xlim(1e3 * (lo - t0), 1e3 * (hi - t0))
        ax.set_yticks([])
        ax.set_xlabel("ms from the switch")
        met = "met" if row["downtime_target_met"] else "missed"
        ax.set_title(f"#{row['switch']} at {t0:.0f} s: {1e3 * row['downtime_s']:.0f} ms "
                     f"({met} < {1e3 * TARGET_DOWNTIME_S:.0f} ms)", fontsize=8)
    fig.suptitle("tokens produced around each switch (ticks); pause shaded", fontsize=9)
    fig.tight_layout()
    path = out / "switches.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
