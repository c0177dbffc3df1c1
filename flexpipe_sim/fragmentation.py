"""Background tenants: how much of each GPU other services hold (the paper's Table 1).

The paper gives, for inference cluster C1: GPU memory use mean 43.48%, P50 28.78%, P95 99.09%,
38.44% of GPUs at 10-30%; SM use mean 16.91%, P50 9.16%, P95 80.53%, 31.26% of GPUs at 10-30%.
We turn each into a piecewise-linear quantile function through those anchors. Knots that the
table does not pin (where the 10-30% share puts the 10% and 30% points, and one interior knot
that sets the mean) were solved by hand so that the integral of the quantile function equals the
published mean; `tests/test_cluster.py` checks all anchors.

Draws are stratified (one draw per equal-probability stratum, then shuffled over GPUs) so that even
the 82-GPU cluster reproduces the table, not just a very large one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuantileCurve:
    """Inverse CDF as knots (u, value) with u from 0 to 1; linear in between."""

    u: tuple[float, ...]
    value: tuple[float, ...]

    def __post_init__(self) -> None:
        assert self.u[0] == 0.0 and self.u[-1] == 1.0 and len(self.u) == len(self.value)
        assert all(a < b for a, b in zip(self.u, self.u[1:])), "u knots must increase"
        assert all(a <= b for a, b in zip(self.value, self.value[1:])), "values must not decrease"

    def quantile(self, u: np.ndarray | float) -> np.ndarray:
        return np.interp(u, self.u, self.value)

    @property
    def mean(self) -> float:
        """Exact mean: the integral of the quantile function (trapezoids, since it is piecewise linear)."""
        return float(np.trapezoid(self.value, self.u))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n stratified draws in random order."""
        u = (np.arange(n) + rng.random(n)) / n
        return self.quantile(rng.permutation(u))


# Table 1, cluster C1 (inference-only): memory-use fraction. Knots: (0.126, 0.10) and (0.51, 0.30)
# follow from P50 = 28.78% and 38.44% of GPUs in 10-30%; (0.80, 0.839) sets the mean to 43.5%.
MEMORY_C1 = QuantileCurve(
    u=(0.0, 0.126, 0.5, 0.51, 0.80, 0.95, 1.0),
    value=(0.0, 0.10, 0.2878, 0.30, 0.839, 0.9909, 1.0),
)

# Table 1, cluster C1: SM-use fraction. (0.35, 0.0): idle tenants that hold memory but no SM time;
# (0.82, 0.30) from 31.26% of GPUs in 10-30%; (0.90, 0.40) and the 0.90 top set the mean to 17.0%.
SM_C1 = QuantileCurve(
    u=(0.0, 0.35, 0.5, 0.82, 0.90, 0.95, 1.0),
    value=(0.0, 0.0, 0.0916, 0.30, 0.40, 0.8053, 0.90),
)

TABLE1_C1 = {
    "memory": {"mean": 0.4348, "p50": 0.2878, "p95": 0.9909},
    "sm": {"mean": 0.1691, "p50": 0.0916, "p95": 0.8053},
}


def tenant_load(n_gpus: int, rng: np.random.Generator, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Memory-use and SM-use fractions of other tenants for n GPUs (independent draws).

    `scale` multiplies both (0 = an empty cluster, 1 = Table 1); results stay within [0, 1].
    """
    mem = np.clip(MEMORY_C1.sample(n_gpus, rng) * scale, 0.0, 1.0)
    sm = np.clip(SM_C1.sample(n_gpus, rng) * scale, 0.0, 1.0)
    return mem, sm
