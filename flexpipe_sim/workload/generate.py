"""Turn a scenario's `workload:` block into arrays of requests (arrival, model, lengths)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scenario import FixedLengthConfig, Scenario
from .arrivals import gamma_arrivals, poisson_arrivals
from .lengths import TABLES, FixedLengths, LengthTable


@dataclass(frozen=True)
class Workload:
    """Requests sorted by arrival. Prompts are clipped so prompt + output fits the model's context."""

    arrival_s: np.ndarray  # float64 [n]
    model_idx: np.ndarray  # int64 [n], index into scenario.models
    prompt_tokens: np.ndarray  # int64 [n]
    output_tokens: np.ndarray  # int64 [n]
    model_names: tuple[str, ...]
    mean_output_tokens: float

    def __len__(self) -> int:
        return len(self.arrival_s)

    def peak_rate(self, window_s: float = 60.0) -> float:
        """Highest arrival rate over fixed windows (what static provisioning sizes for)."""
        if len(self) == 0:
            return 0.0
        counts = np.bincount((self.arrival_s // window_s).astype(np.int64))
        return float(counts.max() / window_s)


def length_model(cfg) -> LengthTable | FixedLengths:
    if isinstance(cfg, FixedLengthConfig):
        return FixedLengths(cfg.prompt_tokens, cfg.output_tokens)
    return TABLES[cfg]


def build_workload(sc: Scenario, rng: np.random.Generator) -> Workload:
    w = sc.workload
    if w.arrivals == "poisson":
        t = poisson_arrivals(w.rate, sc.horizon_s, rng)
    else:
        t = gamma_arrivals(w.rate, w.cv, sc.horizon_s, rng)
    n = len(t)
    shares = np.array([m.share for m in sc.models], dtype=float)
    model_idx = rng.choice(len(shares), size=n, p=shares / shares.sum())
    lengths = length_model(w.lengths)
    prompt, output = lengths.sample(n, rng)
    # Clip to each model's context window: keep the output, shorten the prompt (a server truncates
    # the prompt; output lengths are what the user asked for).
    ctx = np.array([m.spec().max_context for m in sc.models])[model_idx]
    output = np.minimum(output, ctx // 2)
    prompt = np.clip(prompt, 1, ctx - output)
    return Workload(t, model_idx, prompt, output, tuple(m.name for m in sc.models), lengths.mean_output)
