"""The evaluation report's tables as people read them (evaluation.md / .html): human headers,
fractions shown as percentages like the values already in percent, '-' for no value, and the
HTML's CSS (wide tables scroll in their box). runs.csv and paper_vs_ours.csv keep the column names.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# column -> (header, format); "%" marks a fraction shown as a percentage, "%%" a value already in percent.
RUN_COLUMNS = {
    "scenario": ("scenario", ""), "policy": ("policy", ""), "requests": ("requests", ",.0f"),
    "dropped": ("dropped", ",.0f"), "e2e_mean_s": ("E2E mean (s)", ".3g"),
    "e2e_common_mean_s": ("E2E mean, common requests (s)", ".3g"), "e2e_p99_s": ("E2E p99 (s)", ".3g"),
    "slo_attainment": ("SLO attainment", "%"), "slo_model_mean": ("SLO, mean over models", "%"),
    "goodput_rps": ("goodput (req/s)", ".3g"), "gpu_hours": ("GPU-hours", ".3g"), "peak_gpus": ("peak GPUs", ".0f"),
    "reservation_pct": ("GPU reservation (of peak)", "%%"), "gpu_busy_frac": ("GPU utilisation", "%"),
    "refactors": ("refactors", ".0f"), "refactor_pause_ms": ("refactor pause, mean (ms)", ".3g"),
    "stall_recovery_p50_ms": ("stall recovery p50 (ms)", ".3g"), "unserved": ("unserved models", "")}
CLAIM_COLUMNS = {"claim": ("claim", ""), "paper": ("paper", ".1f"), "ours": ("ours", ".1f"),
                 "difference": ("ours - paper", ".1f"), "holds": ("ordering holds", ""),
                 "holds_if": ("holds if", ""), "note": ("note", "")}


def _cell(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or (isinstance(v, str) and not v):
        return "-"
    if fmt == "%":
        return f"{100 * float(v):.1f}%"
    if fmt == "%%":
        return f"{float(v):.1f}%"
    return format(v, fmt) if fmt else str(v)


def display(t: pd.DataFrame, columns: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """`t` as text for the report: human headers, percentages as percentages, '-' for no value.
    Columns not in `columns` are SLO per model (`slo_<model>`, fractions shown as percentages)."""
    out = {}
    for c in t.columns:
        head, fmt = columns.get(c) or (f"SLO {c[4:]}", "%")
        out[head] = [_cell(v, fmt) for v in t[c]]
    return pd.DataFrame(out)


# Wide tables scroll inside their box (headers stay in view); headers wrap, numbers do not.
CSS = ("body{font-family:sans-serif;margin:2em;max-width:100%}"
       ".scroll{overflow:auto;max-width:100%;max-height:80vh;border:1px solid #ddd;margin-bottom:1em}"
       "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
       "th{position:sticky;top:0;background:#f4f4f4;white-space:normal;min-width:5em;max-width:10em;"
       "vertical-align:bottom;text-align:center}"
       "td{white-space:nowrap;text-align:right}table.runs td:nth-child(-n+2){text-align:left}"
       "table.claims td{white-space:normal;text-align:left;min-width:4em}pre{white-space:pre-wrap}")


def to_markdown(shown: pd.DataFrame) -> str:
    """A `display` table as markdown: numbers and percentages right-aligned, text left."""
    num = re.compile(r"-|-?[\d,.]+(e[+-]?\d+)?%?")
    align = ["right" if (shown[c] != "-").any() and all(num.fullmatch(v) for v in shown[c]) else "left"
             for c in shown.columns]
    return shown.to_markdown(index=False, colalign=align, disable_numparse=True)  # keep our formats
