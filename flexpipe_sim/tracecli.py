"""`flexpipe-sim trace stats|convert`: look at a trace (or a scenario's workload) and convert traces
to the generic CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from rich.table import Table

from .workload.loaders import Trace, TraceError, load_trace
from .workload.stats import plot_stream, stream_stats


def scenario_stream(path: Path, overrides: list[str], seed: int | None = None,
                    warn: Callable[[str], None] | None = None) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    from .scenario import load_scenario
    from .workload import build_workload

    sc = load_scenario(path, [*overrides, *([f"seed={seed}"] if seed is not None else [])])
    rng = np.random.default_rng(np.random.SeedSequence(sc.seed).spawn(3)[1])  # the simulator's workload stream
    w = build_workload(sc, rng)
    for text in w.warnings:
        if warn:
            warn(text)
    m = w.arrival_s >= sc.warmup_s  # what the run measures (a warm-up is not)
    return sc.name, w.arrival_s[m], w.prompt_tokens[m], w.output_tokens[m]


def stats_table(name: str, st: dict) -> Table:
    t = Table(title=f"trace stats: {name}", show_header=False)
    t.add_column("statistic")
    t.add_column("value", justify="right")
    t.add_row("rows", f"{st['rows']:,}")
    t.add_row("span", f"{st['span_s']:,.0f} s")
    t.add_row("mean rate", f"{st['mean_rate_per_s']:.3f} req/s")
    t.add_row("IAT mean / p50 / p99", f"{st['iat_mean_s']:.3f} / {st['iat_p50_s']:.3f} / {st['iat_p99_s']:.3f} s")
    t.add_row("IAT CV", f"{st['iat_cv']:.2f}")
    t.add_row("burstiness B", f"{st['burstiness']:.2f}")
    t.add_row("IDC at 1 s / 10 s / 60 s", f"{st['idc_1s']:.2f} / {st['idc_10s']:.2f} / {st['idc_60s']:.2f}")
    t.add_row("peak/mean of per-minute counts", f"{st['peak_to_mean_per_minute']:.2f}")
    for key, label in (("window_15s_iat_cv", "15 s windows: IAT CV"), ("window_15s_count_cv", "15 s windows: CV of 1 s counts"),
                       ("first_300s_window_15s_iat_cv", "first 300 s, 15 s windows: IAT CV")):
        w = st.get(key, {})
        if w.get("windows"):
            t.add_row(f"{label} min · p5 · p50 · p95 · max",
                      f"{w['min']:.2f} · {w['p5']:.2f} · {w['p50']:.2f} · {w['p95']:.2f} · {w['max']:.2f} ({w['windows']} windows)")
    for name_, label in (("prompt_tokens", "prompt tokens"), ("output_tokens", "output tokens")):
        if name_ in st:
            v = st[name_]
            t.add_row(f"{label}: mean, p50, p90, p99, max",
                      f"{v['mean']:,.1f} · {v['p50']:,.0f} · {v['p90']:,.0f} · {v['p99']:,.0f} · {v['max']:,}")
    if "prompt_output_correlation" in st:
        t.add_row("prompt/output correlation", f"{st['prompt_output_correlation']:.2f}")
    return t


def trace_stats(path: Path, fmt: str, overrides: list[str], plot_dir: Path, seed: int | None,
                warn: Callable[[str], None] | None = None) -> tuple[str, dict, Path]:
    """`seed`: the scenario's seed if None (for a scenario), else overrides it; a trace's expansion seed (0)."""
    if path.suffix in (".yaml", ".yml"):
        name, t, p, o = scenario_stream(path, overrides, seed, warn)
    else:
        if overrides:
            raise TraceError(path, "--set applies to a scenario file, not to a trace")
        tr = load_trace(path, fmt, np.random.default_rng(seed or 0))
        name, t, p, o = path.name, tr.arrival_s, tr.prompt_tokens, tr.output_tokens
    if len(t) == 0:
        raise TraceError(path, "no arrivals to analyse (the horizon or window holds none)")
    st = stream_stats(t, p, o)
    plot_dir.mkdir(parents=True, exist_ok=True)
    stem = name.replace(".gz", "").replace(".", "_")
    png = plot_stream(plot_dir / f"{stem}.png", name, t, p, o)
    return name, st, png


def convert(src: Path, dst: Path, fmt: str, lengths: str, seed: int) -> int:
    """Write the generic CSV. Traces without lengths get them from a built-in table (`lengths`)."""
    from .workload.lengths import TABLES

    rng = np.random.default_rng(seed)
    tr: Trace = load_trace(src, fmt, rng)
    if tr.has_lengths:
        prompt, output = tr.prompt_tokens, tr.output_tokens
    else:
        prompt, output = TABLES[lengths].sample(len(tr), rng)
    df = pd.DataFrame({"timestamp": np.round(tr.arrival_s, 6), "prompt_tokens": prompt, "output_tokens": output})
    if tr.key is not None:
        df["model"] = tr.key
    dst.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(dst, index=False, compression="gzip" if dst.suffix == ".gz" else None)
    return len(df)
