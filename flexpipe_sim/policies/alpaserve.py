"""AlpaServe (Li et al., OSDI '23) as a policy: placement and pipeline depth chosen offline from the
historical pattern by a simulator-guided greedy search, fixed for the whole run.

What it models (../shared/research/baselines.md §2):
- Inputs: each model's historical mean rate and inter-arrival CV (the whole trace: the operator's
  history), its SLO and the cost model.
- Layouts: one pipeline depth for the cluster, each of `depths` in turn (its group configurations;
  a model that cannot fit at that depth takes the smallest depth it fits).
- For each layout, greedy replica placement (Algorithm 1): start from one replica per model and
  repeatedly add the replica that most raises the rate-weighted SLO attainment on a synthetic
  Gamma(rate, CV) workload, until every model reaches `target_attainment` or the GPU budget
  (`budget_fraction` x the GPUs a peak-provisioned depth-1 deployment needs) is spent. Attainment
  comes from a fast request-level simulator: each replica is d x B lanes (d micro-batches of B
  sequences), a request takes the earliest free lane, and meets the SLO when its wait plus prefill
  fits the TTFT SLO (AlpaServe's own fast simulator is this, with batch 1).
- The best layout's replicas are placed once (topology-aware) and never change.
What it simplifies: beam search (width 3) is reduced to greedy (width 1); it does not drop requests
it predicts will miss the SLO (every policy's requests wait up to engine.max_queue_wait_s).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from flexpipe_core.work import BatchWork
from flexpipe_core.policyapi import Action, ClusterView, ModelView
from .placement import fitting_depth, place_pipeline
from .sizing import planned_batch, replica_rate


class AlpaServeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    depths: list[int] = Field([1, 2, 4, 8], description="pipeline depths tried as cluster layouts (code: pp <= 8)")
    budget_fraction: float = Field(0.75, gt=0, le=4, description="GPU budget as a share of a peak-provisioned depth-1 deployment (static systems: ~75%, FlexPipe §2.2)")
    target_attainment: float = Field(0.99, gt=0, le=1, description="stop adding replicas once every model reaches this (AlpaServe: 99%)")
    slo_headroom: float = Field(0.8, gt=0, le=1, description="share of the TPOT SLO a sized batch may use")
    sim_requests: int = Field(20000, ge=100, description="requests per model in the planning simulation (code: >= 30k total)")


def _gamma_arrivals(rate: float, cv: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if cv <= 0:
        return np.arange(1, n + 1) / rate
    shape = 1.0 / (cv * cv)
    return np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), n))


def lane_attainment(arrivals: np.ndarray, lanes: int, service_s: float, prefill_s: float, slo_s: float) -> float:
    """Share of requests whose wait for the earliest free lane plus prefill meets `slo_s`."""
    if lanes <= 0 or len(arrivals) == 0:
        return 0.0
    free = [0.0] * lanes
    ok = 0
    for t in arrivals:
        f = heapq.heappop(free)
        start = t if t > f else f
        if start - t + prefill_s <= slo_s:
            ok += 1
        heapq.heappush(free, start + service_s)
    return ok / len(arrivals)


class AlpaServePolicy:
    name = "alpaserve"

    def __init__(self, params: AlpaServeParams) -> None:
        self.p = params
        self.notes: list[str] = []
        self._placed = False
        self.plan: dict[str, tuple[int, int]] = {}  # model -> (depth, replicas): the offline plan

    def _profile(self, view: ClusterView, mv: ModelView, depth: int) -> tuple[int, float, float, float, int] | None:
        """(lanes per replica, service s, prefill s, replica rate, KV tokens) at this depth, None if it cannot fit."""
        spec = mv.spec
        ranges = spec.even_split(depth)
        if fitting_depth(view, mv.name, depth) != depth:
            return None
        shapes, b = planned_batch(view, mv, ranges, self.p.slo_headroom)  # SLO batch capped by KV fit
        ctx = int(mv.mean_prompt_tokens + mv.mean_output_tokens / 2)
        times = [mv.cost.stage_time(s, BatchWork(b, b, b * ctx, b * ctx, b)) for s in shapes]
        token = max(sum(times), depth * max(times))
        pr = int(mv.mean_prompt_tokens)
        prefill = sum(mv.cost.stage_time(s, BatchWork(pr, 1, pr * (pr + 1) // 2, 0, 0)) for s in shapes)
        kv = int(b * depth * (mv.mean_prompt_tokens + mv.mean_output_tokens))
        return depth * b, prefill + mv.mean_output_tokens * token, prefill, replica_rate(mv, shapes, b), kv

    def _search(self, view: ClusterView) -> dict[str, tuple[int, int, int]]:
        p = self.p
        models = [m for m in view.models.values() if m.mean_rate > 0]
        budget = 0
        for mv in models:
            first = next(((d, pr) for d in range(1, mv.spec.num_layers + 1) if (pr := self._profile(view, mv, d))), None)
            if first is None:
                self._note(f"alpaserve: {mv.name} fits no GPU layout")
                continue
            budget += first[0] * math.ceil(mv.peak_rate / first[1][3])
        budget = max(1, math.floor(p.budget_fraction * budget))
        total_rate = sum(m.mean_rate for m in models) or 1.0
        best: tuple[float, int, dict] | None = None
        for layout in sorted(set(p.depths)):
            profs, arr = {}, {}
            for i, mv in enumerate(models):
                prof = next(((d, pr) for d in range(layout, mv.spec.num_layers + 1)
                             if (pr := self._profile(view, mv, d))), None)
                if prof is None:
                    continue
                profs[mv.name] = prof
                arr[mv.name] = _gamma_arrivals(mv.mean_rate, mv.hist_cv, p.sim_requests, seed=i)
            if not profs:
                continue
            reps = {m: 1 for m in profs}
            used = sum(d for d, _ in profs.values())

            def att(name: str, n: int) -> float:
                d, (lanes, svc, pre, _, _) = profs[name]
                return lane_attainment(arr[name], n * lanes, svc, pre, view.models[name].ttft_slo_s)

            cur = {m: att(m, 1) for m in profs}
            while True:
                cands = [(view.models[m].mean_rate / total_rate * (att(m, reps[m] + 1) - cur[m]), m)
                         for m in profs if cur[m] < p.target_attainment and used + profs[m][0] <= budget]
                if not cands:
                    break
                gain, m = max(cands)
                if gain <= 0:
                    break
                reps[m] += 1
                used += profs[m][0]
                cur[m] = att(m, reps[m])
            score = sum(view.models[m].mean_rate / total_rate * cur[m] for m in profs)
            if best is None or score > best[0] + 1e-9 or (abs(score - best[0]) <= 1e-9 and used < best[1]):
                best = (score, used, {m: (profs[m][0], reps[m], profs[m][1][4]) for m in profs})
        return best[2] if best else {}

    def decide(self, view: ClusterView) -> list[Action]:
        if self._placed:
            return []
        self._placed = True
        acts: list[Action] = []
        taken: set[int] = set()
        plan = self._search(view)
        for name, (depth, reps, kv) in plan.items():
            self.plan[name] = (depth, reps)
            ranges = view.models[name].spec.even_split(depth)
            for placed in range(reps):
                launch = place_pipeline(view, name, ranges, taken, kv) or place_pipeline(view, name, ranges, taken)
                if launch is None:
                    self._note(f"alpaserve: placed {placed} of {reps} {name} replicas of depth {depth}")
                    break
                acts.append(launch)
        return acts

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
