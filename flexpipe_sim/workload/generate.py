"""Turn a scenario's `workload:` block into arrays of requests (arrival, model, lengths)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..scenario import (FixedLengthConfig, GammaArrivals, MMPPArrivals, PhasedLengths, PoissonArrivals, Scenario,
                        ServeGenLengths, TraceArrivals, TraceLengths)
from .arrivals import (diurnal_warp, gamma_arrivals, mmpp_arrivals, mmpp_mean_rate, poisson_arrivals,
                       rescale_rate, reshape_cv)
from .lengths import TABLES, EmpiricalLengths, FixedLengths, SpeechLengths, load_servegen_lengths
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
    warnings: tuple[str, ...] = field(default=())  # what was changed to fit (clipped prompts), for the user

    def __len__(self) -> int:
        return len(self.arrival_s)

    def mean_output_of(self, idx: int) -> float:
        """Mean output of one model's requests (the stream's mean if it has none): an encoder's 1,
        a speech model's transcript, a chat model's reply differ by 50-200x."""
        sel = self.model_idx == idx
        return float(self.output_tokens[sel].mean()) if sel.any() else self.mean_output_tokens

    def peak_rate(self, window_s: float = 60.0) -> float:
        """Highest arrival rate over fixed windows (what static provisioning sizes for)."""
        if len(self) == 0:
            return 0.0
        counts = np.bincount((self.arrival_s // window_s).astype(np.int64))
        return float(counts.max() / window_s)


def trace_arrivals(cfg: TraceArrivals, horizon_s: float, rng: np.random.Generator) -> Trace:
    """Load, cut at start_s, reshape to a CV, time-scale to a rate, cut the run's window.

    The rate and CV are realised over a stream of `cfg.stream_s` seconds (default: the horizon):
    with a rate, the stream is exactly the first N = round(rate x stream_s) arrivals after start_s
    (the trace's own order and gaps), reshaped to the CV and time-scaled so that arrival N + 1
    lands at stream_s. The mean over the stream is then the stated rate (to 1/stream_s) and the IAT
    CV the stated one. The run replays [offset_s, offset_s + horizon_s) of that stream, so a window
    (the burst test) keeps its place in the stream whatever the horizon."""
    tr = load_trace(cfg.path, cfg.format, rng, expand=cfg.expand, top=cfg.top)
    keep = tr.arrival_s >= cfg.start_s
    t = tr.arrival_s[keep] - cfg.start_s

    def sub(a):
        return None if a is None else a[keep]

    prompt, output, key = sub(tr.prompt_tokens), sub(tr.output_tokens), sub(tr.key)
    stream_s = cfg.stream_s if cfg.stream_s is not None else horizon_s
    n_want = int(round(cfg.rate * stream_s)) if cfg.rate is not None else 0
    if cfg.rate is not None:
        # N arrivals inside the stream plus the one that closes it (sets the time scale).
        t, prompt, output, key = t[: n_want + 1], *(None if a is None else a[: n_want + 1] for a in (prompt, output, key))
    if len(t) < 3:
        raise TraceError(cfg.path, f"fewer than 3 arrivals after start_s={cfg.start_s}")
    if cfg.cv is not None:
        try:
            t = reshape_cv(t, cfg.cv)
        except ValueError as e:
            raise TraceError(cfg.path, str(e)) from None
    t = t - t[0]
    n = len(t)
    if cfg.rate is not None and n == n_want + 1:
        t = t[:-1] * (stream_s / t[-1])  # the closing arrival lands at stream_s and is not replayed
        n = n_want
    elif cfg.rate is not None:
        t = rescale_rate(t, cfg.rate)  # the trace is shorter than the stream: keep the rate, end early
    inside = (t >= cfg.offset_s) & (t < cfg.offset_s + horizon_s)
    prompt, output, key = (None if a is None else a[:n][inside] for a in (prompt, output, key))
    return Trace(tr.source, t[inside] - cfg.offset_s, prompt, output, key)


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
    if isinstance(spec, PhasedLengths):
        return phased_lengths(spec, tr.arrival_s, rng)
    assert isinstance(spec, ServeGenLengths)
    return load_servegen_lengths(spec.path).sample(n, rng)


def phase_of(spec: PhasedLengths, t: np.ndarray) -> np.ndarray:
    """Index of the phase each time falls in (the phases repeat in order)."""
    ends = np.cumsum([p.duration_s for p in spec.phases])
    return np.searchsorted(ends, np.mod(t, ends[-1]), side="right")


def phased_lengths(spec: PhasedLengths, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each request takes the lengths of its arrival's phase (one draw per phase, in phase order)."""
    prompt, output = np.zeros(len(t), np.int64), np.zeros(len(t), np.int64)
    idx = phase_of(spec, t)
    for j, ph in enumerate(spec.phases):
        sel = np.flatnonzero(idx == j)
        src = TABLES[ph.lengths] if isinstance(ph.lengths, str) else FixedLengths(ph.lengths.prompt_tokens,
                                                                                   ph.lengths.output_tokens)
        prompt[sel], output[sel] = src.sample(len(sel), rng)
    return prompt, output


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


def per_kind_lengths(specs: list, model_idx: np.ndarray, prompt: np.ndarray, output: np.ndarray,
                     rng: np.random.Generator) -> None:
    """Lengths by model kind (models.py), in place. Decoders keep the scenario's lengths. An
    encoder makes one forward pass over its prompt: 1 output token (it finishes at its first token,
    TTFT = E2E, and is judged on TTFT alone). An encoder-decoder reads its fixed encoder input and
    writes a short transcript (SpeechLengths). Draws come after the scenario's, so a scenario of
    decoders only gets exactly the lengths it had."""
    for j, spec in enumerate(specs):
        if spec.kind == "decoder":
            continue
        sel = np.flatnonzero(model_idx == j)
        if spec.kind == "encoder":
            output[sel] = 1
        else:
            prompt[sel], output[sel] = SpeechLengths(spec.encoder_tokens).sample(len(sel), rng)


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
    prompt, output = np.array(prompt, np.int64), np.array(output, np.int64)  # copies: edited below
    specs = [m.spec() for m in sc.models]
    per_kind_lengths(specs, model_idx, prompt, output, rng)
    # Clip to each model's context window: keep the output (capped at half the context and at the
    # decoder's positions), shorten the prompt (a server truncates prompts; outputs are what the
    # user asked for).
    ctx = np.array([s.max_context for s in specs])[model_idx]
    max_out = np.array([s.max_output_tokens or s.max_context for s in specs])[model_idx]
    output = np.minimum(output, np.minimum(ctx // 2, max_out))
    warnings = clip_warnings(prompt, ctx - output, model_idx, specs)
    prompt = np.clip(prompt, 1, ctx - output)
    mean_out = float(output.mean()) if n else 1.0
    return Workload(t, model_idx.astype(np.int64), prompt, output, tuple(names), mean_out, tuple(warnings))


def clip_warnings(prompt: np.ndarray, room: np.ndarray, model_idx: np.ndarray, specs: list) -> list[str]:
    """Say how many prompts each model truncates to its context (a 1e9-token prompt would otherwise
    run silently as a 4k one)."""
    out = []
    for j, spec in enumerate(specs):
        sel = (model_idx == j) & (prompt > room)
        if sel.any():
            n, total = int(sel.sum()), int((model_idx == j).sum())
            out.append(f"{spec.name}: {n:,} of {total:,} prompts ({n / total:.1%}) were longer than the context "
                       f"leaves room for ({spec.max_context:,} tokens less the output) and were truncated; "
                       f"the longest had {int(prompt[sel].max()):,} tokens")
    return out
