"""Calibration profiles: the file format (docs/profiles.md), reading with clear errors, and the
interpolation the cost model uses. Torch-free: the kernel writes profiles, the simulator reads them.

Stage step time per layer is looked up from measured grids:
- prefill: one sequence of N new tokens from position 0, grid over N;
- decode: B sequences with one new token at context C each, grid over B x C.
Inside a grid: piecewise-linear in log N (prefill) and bilinear in (log B, log C) (decode) on log
times, which is monotone wherever the data is. Below a grid's smallest size, the smallest size's
time (a step never gets cheaper than its fixed weight read). Above the largest: a roofline-shaped
least-squares fit, t = a + b*N (prefill), t = a + b*B + c*B*C (decode), counted and warned once.
"""

from __future__ import annotations

import bisect
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .models import ModelSpec

FORMAT = "flexpipe-profile"
VERSION = 1
# measured: by our kernel (flexpipe-sim calibrate); anchors: DESIGN.md's H100 points; derived: scaled
# from another profile by spec-sheet ratios; external: timings measured by others (e.g. Vidur's
# authors), with "provenance" and "source" naming them.
KINDS = ("measured", "anchors", "derived", "external")
SHAPE_KEYS = ("hidden", "num_heads", "num_kv_heads", "intermediate", "vocab", "dtype_bytes")


class ProfileError(ValueError):
    """A profile that cannot be used, with the file and the reason."""


class ExtrapolationWarning(UserWarning):
    """A stage-time lookup fell beyond a profile's measured grid (the fitted roofline was used)."""


@dataclass
class Profile:
    raw: dict[str, Any]
    path: str = "<memory>"
    extrapolations: int = 0  # lookups outside the measured grid (each also warned once)
    _warned: set = field(default_factory=set)

    # --- identity --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def kind(self) -> str:
        return self.raw["kind"]  # measured | anchors | derived | external

    @property
    def gpu_kind(self) -> str:
        return self.raw["device"]["kind"]

    @property
    def model(self) -> dict[str, Any]:
        return self.raw["model"]

    def describe(self) -> str:
        if self.kind == "external":  # timings someone else measured: say who, never pass them off as ours
            return f"profile {self.name} (external: {self.raw['provenance']}; {self.raw['device']['name']})"
        src = self.raw.get("derived_from")
        extra = f" from {src}" if src else ""
        return f"profile {self.name} ({self.kind}{extra}; {self.raw['device']['name']})"

    def check_model(self, spec: ModelSpec) -> None:
        """The profile must be for this model's layer shape (the layer count may differ)."""
        bad = [k for k in SHAPE_KEYS if int(self.model.get(k, -1)) != int(getattr(spec, k))]
        if bad:
            have = ", ".join(f"{k}={self.model.get(k)}" for k in bad)
            want = ", ".join(f"{k}={getattr(spec, k)}" for k in bad)
            raise ProfileError(f"{self.path}: profile is for another model shape ({have}); {spec.name} has {want}")

    # --- lookups -----------------------------------------------------------------------------------
    def _warn(self, region: str, what: str) -> None:
        self.extrapolations += 1
        if region not in self._warned:
            self._warned.add(region)
            warnings.warn(f"{self.path}: {what} is beyond the measured grid; using the fitted roofline "
                          "(warned once; the run's notes count all such lookups)", ExtrapolationWarning, stacklevel=3)

    def _grids(self) -> tuple:
        """Log-space grids as plain lists, built once: the simulator looks a stage time up on every
        micro-batch step, and scalar numpy calls cost ~10x pure Python there (profiled)."""
        g = self.__dict__.get("_grid_cache")
        if g is None:
            p, d = self.raw["prefill"], self.raw["decode"]
            ln = [math.log(float(x)) for x in p["tokens"]]
            lt = [math.log(float(x)) for x in p["layer_s"]]
            lb = [math.log(float(x)) for x in d["batch"]]
            lc = [math.log(float(x)) for x in d["context"]]
            lz = [[math.log(float(x)) for x in row] for row in d["layer_s"]]
            g = self.__dict__["_grid_cache"] = (ln, lt, lb, lc, lz, float(p["tokens"][-1]), float(d["batch"][-1]),
                                                float(d["context"][-1]), min(map(float, p["layer_s"])),
                                                min(float(x) for row in d["layer_s"] for x in row))
        return g

    def prefill_layer_s(self, tokens: float) -> float:
        memo = self.__dict__.get("_prefill_memo")  # inside the grid, per token count: every prefill asks
        if memo is None:
            memo = self.__dict__["_prefill_memo"] = {}
        t = memo.get(tokens)
        if t is not None:
            return t
        ln, lt, _, _, _, n_max, _, _, t_min, _ = self._grids()
        if tokens <= n_max:
            lx = max(math.log(tokens), ln[0]) if tokens > 0 else ln[0]
            t = memo[tokens] = math.exp(_interp(lx, ln, lt))
            return t
        self._warn("prefill", f"prefill of {tokens:.0f} tokens")
        a, b = self._fit("prefill")
        return max(a + b * tokens, t_min)

    def decode_layer_s(self, batch: float, context: float) -> float:
        # Bilinear in (log batch, log context), interpolated along batch first: the row for a batch
        # size is cached (a simulation asks for a few hundred sizes, millions of times).
        lcs, row, c_max = self.decode_row(batch)
        if row is not None and context <= c_max:
            return row_at(lcs, row, context)
        t_min = self._grids()[9]
        self._warn("decode", f"decode batch {batch:.0f} at context {context:.0f}")
        a, b, c = self._fit("decode")
        return max(a + b * batch + c * batch * context, t_min)

    def decode_row(self, batch: float) -> tuple[list[float], list[float] | None, float]:
        """(log contexts, log layer times of `batch` along them, largest measured context), cached
        per batch size; the row is None beyond the measured batches (the fitted roofline answers)."""
        rows = self.__dict__.get("_row_cache")
        if rows is None:
            rows = self.__dict__["_row_cache"] = {}
        ent = rows.get(batch)
        if ent is None:
            _, _, lbs, lcs, lz, _, b_max, c_max, _, _ = self._grids()
            if batch <= b_max:
                lb = max(math.log(batch), lbs[0]) if batch > 0 else lbs[0]
                ent = rows[batch] = (lcs, _row(lbs, lz, lb), c_max)
            else:
                ent = (lcs, None, c_max)
        return ent

    def _fit(self, which: str) -> tuple[float, ...]:
        cache = self.raw.setdefault("_fit", {})
        if which in cache:
            return cache[which]
        if which == "prefill":
            g = self.raw["prefill"]
            n, t = np.asarray(g["tokens"], float), np.asarray(g["layer_s"], float)
            sol = np.linalg.lstsq(np.stack([np.ones_like(n), n], 1), t, rcond=None)[0]
        else:
            g = self.raw["decode"]
            B, C = np.meshgrid(np.asarray(g["batch"], float), np.asarray(g["context"], float), indexing="ij")
            t = np.asarray(g["layer_s"], float)
            X = np.stack([np.ones(B.size), B.ravel(), (B * C).ravel()], 1)
            sol = np.linalg.lstsq(X, t.ravel(), rcond=None)[0]
        cache[which] = tuple(float(x) for x in sol)
        return cache[which]

    def rate(self, key: str) -> float:
        return float(self.raw["links"][key])


def _cell(x: list[float], v: float) -> int:
    """Index i of the grid cell [x[i], x[i+1]] used for v (edge cells beyond the ends)."""
    if len(x) < 2:
        return 0
    return min(max(bisect.bisect_left(x, v) - 1, 0), len(x) - 2)


def _interp(v: float, x: list[float], y: list[float]) -> float:
    """np.interp for v inside [x[0], x[-1]] (callers clamp below; above is the fitted roofline)."""
    if len(x) == 1:
        return y[0]
    i = _cell(x, v)
    t = (v - x[i]) / (x[i + 1] - x[i])
    return y[i] + t * (y[i + 1] - y[i])


def row_at(lcs: list[float], row: list[float], context: float) -> float:
    """A decode_row interpolated at `context` (at most the row's largest context): _interp in log
    context, inline (it runs on every simulated step), then exp."""
    lc = math.log(context) if context > 0 else lcs[0]
    if lc < lcs[0]:
        lc = lcs[0]
    n = len(lcs)
    if n == 1:
        return math.exp(row[0])
    i = bisect.bisect_left(lcs, lc) - 1
    i = 0 if i < 0 else (n - 2 if i > n - 2 else i)
    x0 = lcs[i]
    t = (lc - x0) / (lcs[i + 1] - x0)
    y0 = row[i]
    return math.exp(y0 + t * (row[i + 1] - y0))


def _row(x: list[float], z: list[list[float]], xv: float) -> list[float]:
    """z interpolated along its first axis at xv: the row a bilinear lookup at xv uses for every y."""
    if len(x) == 1:
        return list(z[0])
    i = _cell(x, xv)
    tx = (xv - x[i]) / (x[i + 1] - x[i])
    return [(1 - tx) * a + tx * b for a, b in zip(z[i], z[i + 1])]


def _need(d: dict, key: str, path: str, where: str = "") -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ProfileError(f"{path}: missing {where}{key}")
    return d[key]


def validate(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ProfileError(f"{path}: not a flexpipe profile (no \"format\": \"{FORMAT}\")")
    if raw.get("version") != VERSION:
        raise ProfileError(f"{path}: profile version {raw.get('version')!r}; this flexpipe reads version {VERSION}")
    for key in ("name", "kind", "device", "model", "prefill", "decode", "links"):
        _need(raw, key, path)
    if raw["kind"] not in KINDS:
        raise ProfileError(f"{path}: kind must be one of {', '.join(KINDS)}, got {raw['kind']!r}")
    if raw["kind"] == "external":
        for key in ("provenance", "source"):  # who measured it and where the data is published
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise ProfileError(f"{path}: an external profile needs a non-empty \"{key}\" (who measured it, where)")
    _need(raw["device"], "kind", path, "device.")
    for k in SHAPE_KEYS:
        _need(raw["model"], k, path, "model.")
    p, d = raw["prefill"], raw["decode"]
    n = np.asarray(_need(p, "tokens", path, "prefill."), float)
    tp = np.asarray(_need(p, "layer_s", path, "prefill."), float)
    b = np.asarray(_need(d, "batch", path, "decode."), float)
    c = np.asarray(_need(d, "context", path, "decode."), float)
    td = np.asarray(_need(d, "layer_s", path, "decode."), float)
    if n.ndim != 1 or len(n) < 2 or tp.shape != n.shape:
        raise ProfileError(f"{path}: prefill.tokens and prefill.layer_s must be equal-length lists (>= 2 points)")
    if td.shape != (len(b), len(c)):
        raise ProfileError(f"{path}: decode.layer_s must be a {len(b)} x {len(c)} grid (batch x context)")
    for name, arr in (("prefill.tokens", n), ("decode.batch", b), ("decode.context", c)):
        if (arr <= 0).any() or (np.diff(arr) <= 0).any():
            raise ProfileError(f"{path}: {name} must be positive and increasing")
    if (tp <= 0).any() or (td <= 0).any() or not np.isfinite(tp).all() or not np.isfinite(td).all():
        raise ProfileError(f"{path}: times must be positive and finite")
    return raw


def load_profile(path: str | Path) -> Profile:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ProfileError(f"{p}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ProfileError(f"{p}: not a JSON profile (not UTF-8 text: {e.reason} at byte {e.start})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(f"{p}: corrupt or truncated JSON ({e.msg} at line {e.lineno})") from None
    return Profile(validate(raw, str(p)), str(p))


def save_profile(raw: dict[str, Any], path: str | Path) -> Path:
    validate(raw, str(path))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in raw.items() if not k.startswith("_")}
    p.write_text(json.dumps(clean, indent=1) + "\n")
    return p
