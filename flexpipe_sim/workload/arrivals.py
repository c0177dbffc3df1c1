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
