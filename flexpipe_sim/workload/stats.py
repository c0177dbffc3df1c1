"""Statistics of a request stream, with the definitions of ../shared/traces/README.md:
IAT CV = sd/mean of inter-arrival times; burstiness B = (sd - mean)/(sd + mean) of IATs;
IDC(w) = variance/mean of arrival counts in windows of w seconds (1 for Poisson at every w);
peak/mean of per-minute counts; percentiles with numpy's linear interpolation.
Window CVs (the paper's Fig. 9 "CV per 15 s window", not defined there): the IAT CV of the arrivals
inside each full 15 s window with >= 3 of them (`window_iat_cvs`), and the CV of the window's
per-second counts (`window_count_cvs`; at most sqrt(14) = 3.74 with 15 bins)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def idc(times: np.ndarray, window_s: float) -> float:
    if len(times) == 0:
        return float("nan")
    counts = np.bincount((times // window_s).astype(np.int64))
    full = counts[: int(times[-1] // window_s)] if times[-1] >= window_s else counts  # drop the partial tail
    return float(full.var() / full.mean()) if full.mean() > 0 else float("nan")


def _full_windows(times: np.ndarray, window_s: float):
    t0 = times[0] if len(times) else 0.0
    n = int((times[-1] - t0) // window_s) if len(times) else 0
    idx = np.searchsorted(times, t0 + window_s * np.arange(n + 1))
    return [times[a:b] for a, b in zip(idx[:-1], idx[1:])], t0


def window_iat_cvs(times: np.ndarray, window_s: float = 15.0) -> np.ndarray:
    """IAT CV inside each full window (windows with fewer than 3 arrivals are skipped)."""
    out = []
    for w in _full_windows(times, window_s)[0]:
        if len(w) >= 3:
            d = np.diff(w)
            out.append(d.std() / d.mean() if d.mean() > 0 else np.nan)
    return np.array(out, float)


def window_count_cvs(times: np.ndarray, window_s: float = 15.0, bin_s: float = 1.0) -> np.ndarray:
    """CV of per-`bin_s` arrival counts inside each full window that has arrivals."""
    wins, t0 = _full_windows(times, window_s)
    out = []
    for k, w in enumerate(wins):
        if len(w):
            c = np.bincount(((w - t0 - k * window_s) // bin_s).astype(np.int64), minlength=int(window_s / bin_s))
            out.append(c.std() / c.mean())
    return np.array(out, float)


def _spread(v: np.ndarray) -> dict[str, float]:
    v = v[np.isfinite(v)]
    if not len(v):
        return {"windows": 0}
    q = np.percentile(v, [5, 50, 95])
    return {"windows": int(len(v)), "min": float(v.min()), "p5": float(q[0]), "p50": float(q[1]),
            "p95": float(q[2]), "max": float(v.max())}


def json_safe(obj: Any) -> Any:
    """NaN and infinities -> None: JSON has no NaN (json.dumps writes a bare NaN that parsers refuse)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def stream_stats(times: np.ndarray, prompt: np.ndarray | None, output: np.ndarray | None) -> dict[str, Any]:
    """The statistics above; undefined ones (one row, constant lengths, zero span) are NaN, silently."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _stream_stats(times, prompt, output)


def _stream_stats(times: np.ndarray, prompt: np.ndarray | None, output: np.ndarray | None) -> dict[str, Any]:
    iat = np.diff(times)
    span = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    sd, mean = (float(iat.std()), float(iat.mean())) if len(iat) else (float("nan"), float("nan"))
    per_min = np.bincount(((times - times[0]) // 60).astype(np.int64)) if len(times) else np.zeros(1)
    out: dict[str, Any] = {
        "rows": int(len(times)),
        "span_s": span,
        "mean_rate_per_s": (len(times) - 1) / span if span > 0 else float("nan"),
        "iat_mean_s": mean,
        "iat_p50_s": float(np.percentile(iat, 50)) if len(iat) else float("nan"),
        "iat_p99_s": float(np.percentile(iat, 99)) if len(iat) else float("nan"),
        "iat_cv": sd / mean if mean > 0 else float("nan"),
        "burstiness": (sd - mean) / (sd + mean) if sd + mean > 0 else float("nan"),
        "idc_1s": idc(times, 1.0),
        "idc_10s": idc(times, 10.0),
        "idc_60s": idc(times, 60.0),
        "peak_to_mean_per_minute": float(per_min.max() / per_min.mean()) if per_min.mean() > 0 else float("nan"),
        "window_15s_iat_cv": _spread(window_iat_cvs(times)),
        "window_15s_count_cv": _spread(window_count_cvs(times)),
        "first_300s_window_15s_iat_cv": _spread(window_iat_cvs(times[times < (times[0] if len(times) else 0) + 300])),
    }
    for name, v in (("prompt_tokens", prompt), ("output_tokens", output)):
        if v is not None and len(v):
            q = np.percentile(v, [50, 90, 99])
            out[name] = {"mean": float(v.mean()), "p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]),
                         "max": int(v.max())}
    if prompt is not None and output is not None and len(prompt) > 2:
        out["prompt_output_correlation"] = float(np.corrcoef(prompt, output)[0, 1])
    return out


def plot_stream(path: Path, title: str, times: np.ndarray, prompt: np.ndarray | None,
                output: np.ndarray | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_len = prompt is not None and output is not None
    fig, axes = plt.subplots(1, 3 if has_len else 1, figsize=(14 if has_len else 8, 3.8), squeeze=False)
    ax = axes[0][0]
    span = times[-1] - times[0] if len(times) > 1 else 1.0
    bin_s = 1.0 if span <= 1200 else 10.0 if span <= 4 * 3600 else 60.0
    counts = np.bincount(((times - times[0]) // bin_s).astype(np.int64))
    ax.plot(np.arange(len(counts)) * bin_s, counts / bin_s, lw=0.7)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"arrivals per second ({bin_s:g} s bins)")
    ax.set_title("arrivals over time")
    ax.grid(alpha=0.3)
    if has_len:
        for a, v, name in ((axes[0][1], prompt, "prompt tokens"), (axes[0][2], output, "output tokens")):
            bins = np.logspace(0, np.log10(max(2, v.max())), 60)
            a.hist(v, bins=bins, color="tab:orange" if "output" in name else "tab:blue")
            a.set_xscale("log")
            a.set_xlabel(f"{name} (log scale)")
            a.set_ylabel("requests")
            a.set_title(f"{name}: p50 {np.percentile(v, 50):.0f}, p99 {np.percentile(v, 99):.0f}")
            a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
