"""Turn a scenario's `workload:` block into arrays of requests (arrival, model, lengths)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scenario import (FixedLengthConfig, GammaArrivals, MMPPArrivals, PoissonArrivals, Scenario,
                        ServeGenLengths, TraceArrivals, TraceLengths)
from .arrivals import (diurnal_warp, gamma_arrivals, mmpp_arrivals, mmpp_mean_rate, poisson_arrivals,
                       rescale_rate, reshape_cv)
from .lengths import TABLES, EmpiricalLengths, FixedLengths, load_servegen_lengths
from .loaders import Trace, TraceError, load_trace


@dataclass(frozen=True)
class Workload:
    """Requests sorted by arrival. Prompts are clipped so prompt + output fits the model's context."""

    arrival_s: np.ndarray  # float64 [n]
    model_idx: np.ndarray  # int64 [n], index into scenario.models
    prompt_tokens: np.ndarray  # int64 [n]
    output_tokens: np.ndarray  # int64 [n]
    model_names: tuple[str, ...]
    mean_output_tokens: float  # what an operator expects from history (the stream's mean)

    def __len__(self) -> int:
        return len(self.arrival_s)

    def peak_rate(self, window_s: float = 60.0) -> float:
        """Highest arrival rate over fixed windows (what static provisioning sizes for)."""
        if len(self) == 0:
            return 0.0
        counts = np.bincount((self.arrival_s // window_s).astype(np.int64))
        return float(counts.max() / window_s)


def trace_arrivals(cfg: TraceArrivals, horizon_s: float, rng: np.random.Generator) -> Trace:
    """Load, cut at start_s, reshape to a CV, time-scale to a rate, truncate at the horizon."""
    tr = load_trace(cfg.path, cfg.format, rng, expand=cfg.expand, top=cfg.top)
    keep = tr.arrival_s >= cfg.start_s
    t = tr.arrival_s[keep] - cfg.start_s

    def sub(a):
        return None if a is None else a[keep]

    prompt, output, key = sub(tr.prompt_tokens), sub(tr.output_tokens), sub(tr.key)
    if cfg.rate is not None:
        # Only about horizon x rate arrivals can be replayed: reshape and scale the stretch that will
        # be used (twice that, for slack), not a whole day of a long trace.
        n_use = min(len(t), int(np.ceil(horizon_s * cfg.rate * 2)) + 100)
        t, prompt, output, key = t[:n_use], *(None if a is None else a[:n_use] for a in (prompt, output, key))
    if len(t) < 3:
        raise TraceError(cfg.path, f"fewer than 3 arrivals after start_s={cfg.start_s}")
    if cfg.cv is not None:
        try:
            t = reshape_cv(t, cfg.cv)
        except ValueError as e:
            raise TraceError(cfg.path, str(e)) from None
    if cfg.rate is not None:
        t = rescale_rate(t, cfg.rate)
    t = t - t[0]
    inside = t < horizon_s
    return Trace(tr.source, t[inside], None if prompt is None else prompt[inside],
                 None if output is None else output[inside], None if key is None else key[inside])


def _arrivals(sc: Scenario, rng: np.random.Generator) -> Trace:
    a = sc.workload.arrivals
    if isinstance(a, PoissonArrivals):
        t = poisson_arrivals(a.rate, sc.horizon_s, rng)
    elif isinstance(a, GammaArrivals):
        t = gamma_arrivals(a.rate, a.cv, sc.horizon_s, rng)
    elif isinstance(a, MMPPArrivals):
        scale = 1.0 if a.rate is None else mmpp_mean_rate(a.rates, a.mean_sojourn_s) / a.rate
        t = mmpp_arrivals(a.rates, a.mean_sojourn_s, sc.horizon_s / scale, rng) * scale
    else:
        return trace_arrivals(a, sc.horizon_s, rng)
    return Trace("generator", t, None, None, None)


def _lengths(sc: Scenario, tr: Trace, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    spec = sc.workload.lengths
    n = len(tr)
    if spec == "from-trace":
        if not tr.has_lengths:
            raise TraceError(tr.source, "lengths: from-trace, but this trace has no prompt/output lengths")
        return tr.prompt_tokens, tr.output_tokens
    if isinstance(spec, str):
        return TABLES[spec].sample(n, rng)
    if isinstance(spec, FixedLengthConfig):
        return FixedLengths(spec.prompt_tokens, spec.output_tokens).sample(n, rng)
    if isinstance(spec, TraceLengths):
        src = load_trace(spec.path, spec.format, rng)
        if not src.has_lengths:
            raise TraceError(spec.path, "this trace has no prompt/output lengths")
        return EmpiricalLengths(src.prompt_tokens, src.output_tokens).sample(n, rng)
    assert isinstance(spec, ServeGenLengths)
    return load_servegen_lengths(spec.path).sample(n, rng)


def assign_by_key(keys: np.ndarray, names: list[str], shares: np.ndarray) -> np.ndarray:
    """Map whole keys (functions, clients) to models. Keys that are model names go to that model;
    the rest, busiest first, go to the model whose load / share is lowest (greedy balancing)."""
    uniq, inverse, counts = np.unique(keys.astype(str), return_inverse=True, return_counts=True)
    target = np.empty(len(uniq), np.int64)
    load = np.zeros(len(names))
    share = shares / shares.sum()
    for u in np.argsort(-counts, kind="stable"):
        if uniq[u] in names:
            target[u] = names.index(uniq[u])
        else:
            target[u] = int(np.argmin(load / share))
        load[target[u]] += counts[u]
    return target[inverse]


def build_workload(sc: Scenario, rng: np.random.Generator) -> Workload:
    tr = _arrivals(sc, rng)
    t = tr.arrival_s
    if sc.workload.diurnal is not None:
        d = sc.workload.diurnal
        t = diurnal_warp(t, d.period_s, d.amplitude, d.phase)
        inside = t < sc.horizon_s
        tr = Trace(tr.source, t[inside], *(None if a is None else a[inside] for a in (tr.prompt_tokens, tr.output_tokens, tr.key)))
        t = tr.arrival_s
    n = len(t)
    shares = np.array([m.share for m in sc.models], dtype=float)
    names = [m.name for m in sc.models]
    if sc.workload.assign == "by-key" and tr.key is not None:
        model_idx = assign_by_key(tr.key, names, shares)
    else:
        model_idx = rng.choice(len(shares), size=n, p=shares / shares.sum())
    prompt, output = _lengths(sc, tr, rng)
    prompt, output = np.asarray(prompt, np.int64), np.asarray(output, np.int64)
    # Clip to each model's context window: keep the output (capped at half the context), shorten
    # the prompt (a server truncates prompts; outputs are what the user asked for).
    ctx = np.array([m.spec().max_context for m in sc.models])[model_idx]
    output = np.minimum(output, ctx // 2)
    prompt = np.clip(prompt, 1, ctx - output)
    mean_out = float(output.mean()) if n else 1.0
    return Workload(t, model_idx.astype(np.int64), prompt, output, tuple(names), mean_out)
