"""Trace loaders: real request traces -> `Trace` (arrival times, lengths where the source has them,
and a key: the function, client or model each request belongs to).

Formats (see traces/README.md for provenance and licences):
- azure-llm: Azure LLM inference trace 2023 (Splitwise), CSV `TIMESTAMP,ContextTokens,GeneratedTokens`.
- mooncake: Mooncake FAST'25 JSON Lines, `timestamp` in ms, `input_length`, `output_length`, `hash_ids`.
- azure-functions: Azure Functions 2019 per-minute invocation counts, `HashFunction,HashOwner,HashApp,
  1..1440`. Counts are expanded to times within each minute: `uniform` (default) places a minute's
  n arrivals at sorted uniform random offsets, which is a Poisson process conditioned on its count;
  `equidistant` spaces them evenly with a random phase (the least bursty reading of a count).
- servegen: ServeGen per-client tables `window_start_s,rate,iat_cv,family,shape,scale` (600 s windows):
  IATs drawn from the fitted Gamma/Weibull of each window and rescaled to the window's rate, as
  ServeGen's own generator does.
- generic: CSV with header `timestamp,prompt_tokens,output_tokens[,model]`, timestamps in seconds.
gzip is read transparently (by magic bytes). Every problem is a `TraceError` naming file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TraceError(ValueError):
    """A trace that cannot be read, with the file and line (1-based, counting the header)."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Trace:
    source: str
    arrival_s: np.ndarray  # float64, sorted, first arrival at 0
    prompt_tokens: np.ndarray | None  # int64, or None where the source has no lengths
    output_tokens: np.ndarray | None
    key: np.ndarray | None  # object array of str: function / client / model per request

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def has_lengths(self) -> bool:
        return self.prompt_tokens is not None and self.output_tokens is not None


MAX_TOKENS = 10**12  # beyond any context; larger values overflow int64 arithmetic downstream
MAX_ARRIVALS = 100_000_000  # a trace expanded beyond this (GBs per column) is a typo, not a workload

FORMATS = ("azure-llm", "mooncake", "azure-functions", "servegen", "generic")


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TraceError(path, f"cannot read: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, gzip.BadGzipFile) as e:
            raise TraceError(path, f"truncated or corrupt gzip ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise TraceError(path, "empty file")
    return text


def _finish(path: Path, t: np.ndarray, lines: np.ndarray, *cols, require_sorted: bool = True):
    if len(t) == 0:
        raise TraceError(path, "no requests in file")
    bad = np.flatnonzero(t < 0)
    if len(bad):
        raise TraceError(path, f"negative timestamp {t[bad[0]]}", int(lines[bad[0]]))
    if require_sorted:
        back = np.flatnonzero(np.diff(t) < 0)
        if len(back):
            i = back[0] + 1
            raise TraceError(path, f"timestamps go backwards ({t[i]} after {t[i - 1]})", int(lines[i]))
    order = np.argsort(t, kind="stable")
    t = t[order]
    return (t - t[0], *(None if c is None else c[order] for c in cols))


def _int_field(path: Path, value: str, name: str, line: int, minimum: int = 0) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TraceError(path, f"{name} is not a number: {value!r}", line) from None
    if not math.isfinite(v) or v != int(v) or v < minimum or v > MAX_TOKENS:
        raise TraceError(path, f"{name} must be an integer from {minimum} to {MAX_TOKENS:.0e}, got {value!r}", line)
    return int(v)


def _csv_rows(path: Path, text: str, required: list[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    missing = [c for c in required if c not in header]
    if missing:
        raise TraceError(path, f"missing column(s) {', '.join(missing)}; header is {','.join(header)}", 1)
    rows = []
    for i, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise TraceError(path, f"expected {len(header)} fields, got {len(row)}", i)
        rows.append((i, row))
    return header, rows


def load_azure_llm(path: Path) -> Trace:
    text = _read_text(path)
    header, rows = _csv_rows(path, text, ["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
    ts_i, p_i, o_i = (header.index(c) for c in ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    n = len(rows)
    t = np.empty(n)
    prompt = np.empty(n, np.int64)
    output = np.empty(n, np.int64)
    lines = np.empty(n, np.int64)
    for k, (line, row) in enumerate(rows):
        try:
            stamp = np.datetime64(row[ts_i].strip().replace(" ", "T"), "ns")
        except ValueError:
            raise TraceError(path, f"TIMESTAMP is not a date-time: {row[ts_i]!r}", line) from None
        t[k] = stamp.astype(np.int64) / 1e9
        prompt[k] = _int_field(path, row[p_i], "ContextTokens", line, 1)
        output[k] = _int_field(path, row[o_i], "GeneratedTokens", line, 1)
        lines[k] = line
    t, prompt, output = _finish(path, t, lines, prompt, output)
    return Trace(str(path), t, prompt, output, None)


def load_mooncake(path: Path) -> Trace:
    text = _read_text(path)
    t, prompt, output, lines = [], [], [], []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise TraceError(path, f"not JSON ({e.msg})", line) from None
        for field in ("timestamp", "input_length", "output_length"):
            if field not in rec:
                raise TraceError(path, f"missing field {field!r}", line)
        ts = rec["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise TraceError(path, f"timestamp must be a number of milliseconds, got {ts!r}", line)
        t.append(float(ts) / 1e3)
        prompt.append(_int_field(path, rec["input_length"], "input_length", line, 1))
        output.append(_int_field(path, rec["output_length"], "output_length", line, 1))
        lines.append(line)
    ta, p, o = _finish(path, np.array(t, float), np.array(lines), np.array(prompt, np.int64), np.array(output, np.int64))
    return Trace(str(path), ta, p, o, None)


def load_generic(path: Path) -> Trace:
    text = _read_text(path)
    header, rows = _csv_rows(path, text, ["timestamp", "prompt_tokens", "output_tokens"])
    ti, pi, oi = (header.index(c) for c in ("timestamp", "prompt_tokens", "output_tokens"))
    mi = header.index("model") if "model" in header else None
    n = len(rows)
    t, prompt, output, lines = np.empty(n), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    models = np.empty(n, object) if mi is not None else None
    for k, (line, row) in enumerate(rows):
        try:
            t[k] = float(row[ti])
        except ValueError:
            raise TraceError(path, f"timestamp is not a number: {row[ti]!r}", line) from None
        if not math.isfinite(t[k]):
            raise TraceError(path, f"timestamp is not finite: {row[ti]!r}", line)
        prompt[k] = _int_field(path, row[pi], "prompt_tokens", line, 1)
        output[k] = _int_field(path, row[oi], "output_tokens", line, 1)
        lines[k] = line
        if models is not None:
            models[k] = row[mi].strip()
    t, prompt, output, models = _finish(path, t, lines, prompt, output, models)
    return Trace(str(path), t, prompt, output, models)


def load_azure_functions(path: Path, rng: np.random.Generator, expand: str = "uniform",
                         top: int | None = None) -> Trace:
    """Per-minute counts -> arrivals. `top`: keep the `top` busiest functions (None = all)."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    if header[:1] != ["HashFunction"] or len(header) < 4:
        raise TraceError(path, "expected header HashFunction,HashOwner,HashApp,1,2,...", 1)
    fast = _counts_fast(text, len(header))
    names, m = fast if fast is not None else _counts_by_row(path, reader, header)  # m: [functions, minutes]
    if top is not None:
        keep = np.argsort(-m.sum(axis=1), kind="stable")[:top]
        m, names = m[keep], [names[i] for i in keep]
    if m.sum() > MAX_ARRIVALS:
        raise TraceError(path, f"{int(m.sum()):,} invocations to expand (limit {MAX_ARRIVALS:,}); "
                               "keep the busiest functions with top: N")
    f_idx, minute = np.nonzero(m)
    reps = m[f_idx, minute]
    starts = np.repeat(minute * 60.0, reps)
    fn = np.repeat(f_idx, reps)
    if expand == "uniform":
        offsets = rng.random(len(starts)) * 60.0
    elif expand == "equidistant":
        # k-th of n arrivals in a minute at (k + phase) * 60 / n
        n_per = np.repeat(reps, reps)
        k = np.arange(len(starts)) - np.repeat(np.cumsum(reps) - reps, reps)
        offsets = (k + np.repeat(rng.random(len(reps)), reps)) * 60.0 / n_per
    else:
        raise ValueError(f"unknown expand method {expand!r}; use uniform or equidistant")
    t = starts + offsets
    order = np.argsort(t, kind="stable")
    keys = np.array(names, dtype=object)[fn[order]]
    return Trace(str(path), t[order] - (t[order][0] if len(t) else 0.0), None, None, keys)


def _counts_by_row(path: Path, reader, header: list[str]) -> tuple[list[str], np.ndarray]:
    """The per-minute counts row by row, each row checked (an error names its line)."""
    names, counts = [], []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise TraceError(path, f"expected {len(header)} fields, got {len(row)}", line)
        try:
            c = np.array(row[3:], dtype=float)
        except ValueError:
            bad = next(v for v in row[3:] if not _is_number(v))
            raise TraceError(path, f"invocation count is not a number: {bad!r}", line) from None
        if (c < 0).any() or (c != np.floor(c)).any():
            raise TraceError(path, "invocation counts must be non-negative integers", line)
        names.append(row[0][:12])
        counts.append(c.astype(np.int64))
    if not counts:
        raise TraceError(path, "no functions in file")
    return names, np.vstack(counts)


def _counts_fast(text: str, n_fields: int) -> tuple[list[str], np.ndarray] | None:
    """The per-minute counts through pandas' parser (0.24 s against 0.53 s row by row for the
    bundled 1,350-function day, which every paper scenario loads); None where anything is off (a
    ragged row, a field that is not a non-negative integer, no rows), and the row-by-row parse
    then says which line."""
    import pandas as pd

    try:
        df = pd.read_csv(io.StringIO(text), header=0, index_col=False, dtype={"HashFunction": str},
                         float_precision="round_trip")
        c = df.iloc[:, 3:].to_numpy(dtype=float)
    except Exception:  # noqa: BLE001 - any parse problem: the row-by-row path reports it
        return None
    # every row exactly n_fields fields (pandas would drop a longer row's extra ones)
    if (text.count(",") != (n_fields - 1) * (len(df) + 1) or df.shape[1] != n_fields or len(df) == 0
            or np.isnan(c).any() or (c < 0).any()
            or (c != np.floor(c)).any() or df.iloc[:, 0].isna().any()):
        return None
    return [x[:12] for x in df.iloc[:, 0].tolist()], c.astype(np.int64)


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def load_servegen(paths: list[Path], rng: np.random.Generator, start_s: float = 0.0,
                  duration_s: float | None = None) -> Trace:
    """ServeGen client tables -> arrivals of all clients together, from `start_s` for `duration_s`."""
    from scipy import stats

    all_t, all_k = [], []
    for path in paths:
        text = _read_text(path)
        client = path.name.split("-")[1] if path.name.startswith("chunk-") else path.stem
        for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not row:
                continue
            if len(row) != 6:
                raise TraceError(path, f"expected 6 fields (window_start_s,rate,iat_cv,family,shape,scale), got {len(row)}", line)
            try:
                w0, rate = float(row[0]), float(row[1])
            except ValueError:
                raise TraceError(path, "window start and rate must be numbers", line) from None
            if not math.isfinite(rate) or rate < 0 or rate * 600 > MAX_ARRIVALS:
                raise TraceError(path, f"rate must be from 0 to {MAX_ARRIVALS / 600:,.0f} req/s "
                                       f"(at most {MAX_ARRIVALS:,} arrivals per 600 s window), got {row[1]!r}", line)
            end = start_s + duration_s if duration_s is not None else math.inf
            if rate == 0 or w0 + 600 <= start_s or w0 >= end:
                continue
            family = row[3].strip()
            try:
                shape, scale = float(row[4]), float(row[5])
            except ValueError:
                raise TraceError(path, "shape and scale must be numbers", line) from None
            if family == "Gamma":
                dist = stats.gamma(shape, scale=scale)
            elif family == "Weibull":
                dist = stats.weibull_min(shape, scale=scale)
            else:
                raise TraceError(path, f"unknown family {family!r} (expected Gamma or Weibull)", line)
            n = max(4, int(rate * 600 * 1.5) + 8)
            iat = dist.rvs(size=n, random_state=rng)
            iat *= (1.0 / rate) / iat.mean()  # ServeGen rescales samples to the window's rate
            t = w0 + rng.random() * iat[0] + np.cumsum(iat)
            t = t[(t < w0 + 600) & (t >= start_s) & (t < end)]
            all_t.append(t)
            all_k.append(np.full(len(t), client, dtype=object))
    if not all_t or sum(len(t) for t in all_t) == 0:
        raise TraceError(paths[0] if paths else "servegen", "no arrivals in the chosen window")
    t = np.concatenate(all_t)
    k = np.concatenate(all_k)
    order = np.argsort(t, kind="stable")
    t = t[order]
    return Trace(",".join(p.name for p in paths[:3]) + ("..." if len(paths) > 3 else ""), t - t[0], None, None, k[order])


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if "azurellminference" in name:
        return "azure-llm"
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "mooncake"
    if "_inv" in name or "invocations" in name:
        return "azure-functions"
    if name.startswith("chunk-") and "-trace" in name:
        return "servegen"
    if path.is_dir():
        return "servegen"
    return "generic"


def load_trace(path: str | Path, fmt: str = "auto", rng: np.random.Generator | None = None, *,
               expand: str = "uniform", top: int | None = None) -> Trace:
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "no such file")
    rng = rng if rng is not None else np.random.default_rng(0)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "azure-llm":
        return load_azure_llm(path)
    if fmt == "mooncake":
        return load_mooncake(path)
    if fmt == "generic":
        return load_generic(path)
    if fmt == "azure-functions":
        return load_azure_functions(path, rng, expand, top)
    if fmt == "servegen":
        files = sorted(path.glob("chunk-*-trace.csv*")) if path.is_dir() else [path]
        if not files:
            raise TraceError(path, "no ServeGen chunk-*-trace.csv files here")
        if top is not None:
            files = files[:top]
        return load_servegen(files, rng)
    raise TraceError(path, f"unknown trace format {fmt!r}; known: auto, {', '.join(FORMATS)}")
