"""Granularity choice (FlexPipe §6.1, Eq. 4, Algorithm 1) and replicas per granularity (Eq. 5).

    score(g_k) = [ alpha * T_k / T_max + (1 - alpha) * L_min / L_k ] * exp( -|nu_t - nu_k| / sigma )
    M(g_k)     = mu_total / mu_k,   mu_k = T_k / (beta_1 + beta_2 * eta_k)

nu_t is the CV of inter-arrival times over the recent window. The paper gives no nu_k; we set
nu_k = nu_0 * (eta_k / eta_min)^2, its own rule of thumb S ~ sqrt(CV) (§3.3) turned around. The
intensity-gradient trigger of Algorithm 1 (nu_t = d lambda / dt) is combined as an early switch:
when the arrival rate rises faster than `surge` (relative per second), the next finer granularity
is taken without waiting for the hysteresis. Otherwise a new choice must win by `hysteresis` for
`patience` consecutive decisions, and a choice is held for `dwell` decisions before it may change
back, so the pipeline does not oscillate on the noise of a short window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    stages: int  # eta_k
    throughput: float  # T_k, requests/s of one replica
    latency: float  # L_k, seconds for a typical request at light load
    nu: float  # nu_k


def score(c: Candidate, cv: float, t_max: float, l_min: float, alpha: float, sigma: float) -> float:
    """Eq. 4."""
    return (alpha * c.throughput / t_max + (1 - alpha) * l_min / c.latency) * math.exp(-abs(cv - c.nu) / sigma)


def best(cands: list[Candidate], cv: float, alpha: float, sigma: float) -> Candidate:
    t_max = max(c.throughput for c in cands)
    l_min = min(c.latency for c in cands)
    return max(cands, key=lambda c: (score(c, cv, t_max, l_min, alpha, sigma), -c.stages))


def replicas(c: Candidate, demand: float, beta1: float, beta2: float) -> int:
    """Eq. 5 as a provisioning rule: ceil(demand / mu_k) (the paper floors; flooring would leave
    part of the demand unserved, so we round up)."""
    mu_k = c.throughput / (beta1 + beta2 * c.stages)
    return max(0, math.ceil(demand / mu_k)) if mu_k > 0 else 0


class Chooser:
    """Algorithm 1's decision with hysteresis and the intensity-gradient early trigger."""

    def __init__(self, cands: list[Candidate], alpha: float, sigma: float, hysteresis: float, patience: int,
                 surge: float, dwell_s: float = 0.0) -> None:
        self.cands = sorted(cands, key=lambda c: c.stages)
        self.alpha, self.sigma, self.hysteresis, self.patience, self.surge = alpha, sigma, hysteresis, patience, surge
        self.dwell_s = dwell_s  # seconds a new choice is held before it may change again
        self.current = self.cands[0]
        self._pending: Candidate | None = None
        self._streak = 0
        self._changed_at = -float("inf")  # the initial choice may change at once

    def _switch(self, c: Candidate, now: float) -> Candidate:
        self.current, self._pending, self._streak, self._changed_at = c, None, 0, now
        return c

    def update(self, cv: float, slope: float, now: float = 0.0) -> Candidate:
        t_max = max(c.throughput for c in self.cands)
        l_min = min(c.latency for c in self.cands)
        if slope > self.surge:  # traffic is ramping: go one step finer at once
            finer = [c for c in self.cands if c.stages > self.current.stages]
            if finer:
                return self._switch(finer[0], now)
        if now - self._changed_at < self.dwell_s:
            return self.current
        top = best(self.cands, cv, self.alpha, self.sigma)
        s_top = score(top, cv, t_max, l_min, self.alpha, self.sigma)
        s_cur = score(self.current, cv, t_max, l_min, self.alpha, self.sigma)
        if top is self.current or s_top <= s_cur * (1 + self.hysteresis):
            self._pending, self._streak = None, 0
            return self.current
        self._streak = self._streak + 1 if top is self._pending else 1
        self._pending = top
        if self._streak >= self.patience:
            return self._switch(top, now)
        return self.current
