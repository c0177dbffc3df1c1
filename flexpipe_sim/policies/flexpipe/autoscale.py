"""Adaptive pipeline scaling (FlexPipe §7, Eqs. 11-13).

Eq. 11, the depth of scale-out pipelines: m = floor(G_max / (1 + beta * exp(-gamma * cv * q))),
q = min(queue / Q_max, 1): the more bursty and backed-up, the finer the new pipelines, which load
faster (Table 2: 5.4 s at 32 stages against 47 s at 4).
Eq. 12, the SLO check: (T - S) * sum(mu) / Q >= r: the instances there are must clear the queue
before the deadline; if not, scale out. As printed, the left side is a fraction of the queue, so we
read r as the fraction that must finish within the deadline (1 = all of it).
Eq. 13, affinity: s* = argmax over servers that hosted the model of
w_t * exp(-lambda * (now - t_s)) + w_g * |free GPUs on s|: go where the host cache is warm.
"""

from __future__ import annotations

import math


def scale_depth(g_max: int, cv: float, queue: float, q_max: float, beta: float, gamma: float) -> int:
    """Eq. 11."""
    q = min(queue / q_max, 1.0) if q_max > 0 else 1.0
    return max(1, math.floor(g_max / (1 + beta * math.exp(-gamma * cv * q))))


def slo_ok(deadline_s: float, init_s: float, throughputs: list[float], queue: float, required: float = 1.0) -> bool:
    """Eq. 12 (queue = 0 is always fine)."""
    if queue <= 0:
        return True
    return (deadline_s - init_s) * sum(throughputs) / queue >= required


def affinity(now: float, last_hosted: float | None, free_gpus: int, w_t: float, w_g: float, decay: float) -> float:
    """Eq. 13 score of one server (never-hosted servers get only the free-GPU term)."""
    warm = 0.0 if last_hosted is None else w_t * math.exp(-decay * (now - last_hosted))
    return warm + w_g * free_gpus
