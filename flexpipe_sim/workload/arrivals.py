"""Arrival processes: times in seconds from 0, sorted, generated from one numpy Generator.

- Poisson: exponential inter-arrival times (IAT CV = 1).
- Gamma renewal: IATs ~ Gamma(shape k, scale theta) with k = 1/CV^2 and theta = CV^2/rate, so the
  mean IAT is 1/rate and the IAT CV is the target. The paper sets a CV without saying how (§9); a
  Gamma renewal process is the standard way and is what ServeGen fits per window.
"""

from __future__ import annotations

import numpy as np


def _renewal(iat_sampler, rate: float, horizon_s: float) -> np.ndarray:
    """Draw IATs in chunks until the horizon is passed; keep arrivals < horizon."""
    chunks: list[np.ndarray] = []
    t_end = 0.0
    expected = max(16, int(rate * horizon_s * 1.1) + 16)
    while t_end < horizon_s:
        times = t_end + np.cumsum(iat_sampler(expected))
        chunks.append(times)
        t_end = float(times[-1])
    times = np.concatenate(chunks)
    return times[times < horizon_s]


def poisson_arrivals(rate: float, horizon_s: float, rng: np.random.Generator) -> np.ndarray:
    if rate <= 0 or horizon_s <= 0:
        raise ValueError("rate and horizon must be positive")
    return _renewal(lambda n: rng.exponential(1.0 / rate, n), rate, horizon_s)


def gamma_arrivals(rate: float, cv: float, horizon_s: float, rng: np.random.Generator) -> np.ndarray:
    if rate <= 0 or horizon_s <= 0 or cv <= 0:
        raise ValueError("rate, cv and horizon must be positive")
    shape = 1.0 / cv**2
    scale = cv**2 / rate
    return _renewal(lambda n: rng.gamma(shape, scale, n), rate, horizon_s)


def mmpp_arrivals(rates: list[float], mean_sojourn_s: list[float], horizon_s: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Markov-modulated Poisson process: a continuous-time Markov chain over states with Poisson
    rates `rates`; each visit to state i lasts Exp(mean_sojourn_s[i]) and then jumps to another state
    chosen uniformly. Starts in a state drawn from the stationary distribution (time share
    proportional to mean sojourn, since jumps are uniform). Mean rate = sum(r_i s_i) / sum(s_i)."""
    rates_a, soj = np.asarray(rates, float), np.asarray(mean_sojourn_s, float)
    if len(rates_a) < 2 or len(rates_a) != len(soj) or (rates_a < 0).any() or (soj <= 0).any():
        raise ValueError("mmpp needs >= 2 states, rates >= 0 and sojourns > 0 of equal length")
    k = len(rates_a)
    state = int(rng.choice(k, p=soj / soj.sum()))
    t, out = 0.0, []
    while t < horizon_s:
        dwell = rng.exponential(soj[state])
        end = min(t + dwell, horizon_s)
        n = rng.poisson(rates_a[state] * (end - t))
        out.append(np.sort(t + rng.random(n) * (end - t)))
        t = end
        state = int((state + 1 + rng.integers(k - 1)) % k)
    return np.concatenate(out) if out else np.empty(0)


def mmpp_mean_rate(rates: list[float], mean_sojourn_s: list[float]) -> float:
    r, s = np.asarray(rates, float), np.asarray(mean_sojourn_s, float)
    return float((r * s).sum() / s.sum())


def diurnal_warp(times: np.ndarray, period_s: float, amplitude: float, phase: float = 0.0) -> np.ndarray:
    """Modulate a stationary stream by rate factor 1 + amplitude * sin(2 pi t / period + phase),
    by time change: an arrival at operational time u moves to t = Lambda^-1(u), where
    Lambda(t) = integral of the factor. The mean rate over whole periods is unchanged, and the
    order and count of arrivals are kept."""
    if not 0 <= amplitude < 1:
        raise ValueError("amplitude must be in [0, 1)")
    if len(times) == 0 or amplitude == 0:
        return times
    t_max = float(times[-1]) * 1.2 + period_s
    grid = np.linspace(0.0, t_max, max(2048, int(t_max / period_s * 512)))
    w = 2 * np.pi / period_s
    lam = grid - amplitude / w * (np.cos(w * grid + phase) - np.cos(phase))
    return np.interp(times, lam, grid)


def rescale_rate(times: np.ndarray, target_rate: float) -> np.ndarray:
    """Time-scaling: multiply all times by (current rate / target rate). Keeps the IAT CV exactly."""
    if len(times) < 2:
        return times
    current = (len(times) - 1) / (times[-1] - times[0])
    return (times - times[0]) * (current / target_rate)


def iat_cv(times: np.ndarray) -> float:
    iat = np.diff(times)
    return float(iat.std() / iat.mean()) if len(iat) > 1 and iat.mean() > 0 else float("nan")


def reshape_cv(times: np.ndarray, target_cv: float, tol: float = 1e-3) -> np.ndarray:
    """Reshape a stream to a target IAT CV while keeping its structure: each IAT x becomes x**p
    (rank order of gaps, so where the bursts are, is kept), then all are scaled back to the
    original mean IAT. The CV of x**p grows with p; p is found by bisection. Zero gaps stay zero."""
    iat = np.diff(times)
    if len(iat) < 2 or target_cv <= 0:
        raise ValueError("need at least 3 arrivals and a positive target CV")
    mean = iat.mean()
    x = iat / mean
    pos = x > 0

    def cv_of(p: float) -> float:
        y = np.zeros_like(x)
        y[pos] = np.exp(p * np.log(x[pos]))
        return float(y.std() / y.mean())

    lo, hi = 0.0, 1.0
    while cv_of(hi) < target_cv and hi < 64:
        lo, hi = hi, hi * 2
    if cv_of(hi) < target_cv:
        raise ValueError(f"cannot reach CV {target_cv}: at most {cv_of(hi):.2f} by reshaping this trace")
    for _ in range(100):
        mid = (lo + hi) / 2
        if cv_of(mid) < target_cv:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol * 1e-3:
            break
    p = (lo + hi) / 2
    y = np.zeros_like(x)
    y[pos] = np.exp(p * np.log(x[pos]))
    y *= mean / y.mean()
    return times[0] + np.concatenate([[0.0], np.cumsum(y)])
