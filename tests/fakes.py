"""A pipeline cost with fixed stage and hop times, for closed-form checks of the engine."""

from __future__ import annotations

from flexpipe_core.work import BatchWork


class FixedCost:
    def __init__(self, stage_s: list[float], hop_s: float = 0.0, back_s: float = 0.0) -> None:
        self.stage_s = stage_s
        self.hop_s = hop_s
        self.back_s = back_s

    def stage_times(self, w: BatchWork) -> list[float]:
        return list(self.stage_s)

    def hop_times(self, n_tokens: int) -> list[float]:
        return [self.hop_s] * (len(self.stage_s) - 1)

    def return_time(self, n_seqs: int) -> float:
        return self.back_s
