"""Pipeline configurations on a mixed cluster (issue 15): for a request shape (mean prompt P,
mean output O), which GPU kinds in which order, cut where, serve how many requests per second.

A candidate is a sequence of GPU kinds (A100s first, then L40Ss: the kinds in catalogue order; order
changes only hops). Its cut is `hetero_partition` in bottleneck mode over per-layer times of the
shape's decode step on each kind (the cost model prices an L40S layer by its own profile or spec
sheet), with each GPU's memory after weights bounding its layers. Its capacity is the steady-state
estimate of sizing.py made kind-aware: S micro-batches of B sequences, B bounded by the KV every
stage holds (S x B sequences at full length over its own layers) and by `max_seqs`; a request costs
its prefill on the bottleneck stage plus O decode steps of the bottleneck stage shared by B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flexpipe_core.policyapi import ClusterView, ModelView
from flexpipe_core.work import BatchWork

from ..costmodel import StageShape
from ..hardware import GPUSpec, get_gpu
from .flexpipe.partition import hetero_partition


@dataclass(frozen=True)
class Plan:
    kinds: tuple[str, ...]  # GPU kind of each stage, in pipeline order
    cuts: tuple[tuple[int, int], ...]  # layer range of each stage
    batch: int  # sequences per micro-batch the estimate assumes
    stage_s: tuple[float, ...]  # decode step time of each stage at that batch
    prefill_s: tuple[float, ...]  # prefill of one mean prompt, per stage
    capacity: float  # requests/s

    @property
    def depth(self) -> int:
        return len(self.kinds)


def _work_decode(batch: int, ctx: int) -> BatchWork:
    return BatchWork(n_tokens=batch, n_seqs=batch, attn_pairs=batch * ctx, kv_tokens=batch * ctx, n_decode=batch)


def _work_prefill(p: int) -> BatchWork:
    return BatchWork(n_tokens=p, n_seqs=1, attn_pairs=p * (p + 1) // 2, kv_tokens=0, n_decode=0)


def plan(view: ClusterView, mv: ModelView, kinds: tuple[str, ...], prompt: float, output: float) -> Plan | None:
    """The best cut of `kinds` for this shape and its capacity; None where no cut fits memory or
    leaves room for one sequence per micro-batch."""
    spec, cost, eng = mv.spec, mv.cost, view.engine
    n, depth = spec.num_layers, len(kinds)
    if depth > n:
        return None
    gpus: list[GPUSpec] = [get_gpu(k) for k in kinds]
    p, o = max(1, int(prompt)), max(1, int(output))
    length, ctx = p + o, p + o // 2
    kvb = spec.kv_bytes_per_token_layer
    usable = [g.memory_bytes * eng.gpu_memory_utilization - eng.workspace_bytes for g in gpus]
    usable[0] -= spec.embedding_bytes
    usable[-1] -= spec.embedding_bytes
    # cut on a request's work per layer on each kind: its prefill plus its O decode steps' share of
    # a batch of 8 (FlexPipe's profiling batch, profiles.py), so the cut follows the phase: an L40S
    # (more tensor FLOP/s, less bandwidth than an A100) takes more layers when prompts dominate.
    # Each layer needs its weights and the KV of one full-length sequence per stage.
    b0 = 8
    t = [[cost.layer_time(g, _work_prefill(p)) + o * cost.layer_time(g, _work_decode(b0, ctx)) / b0] * n
         for g in gpus]
    mem = [float(spec.layer_bytes + depth * length * kvb)] * n
    try:
        cuts = hetero_partition(t, [0.0] * n, [1.0] * depth, usable, mem, mode="bottleneck")
    except ValueError:
        return None
    fits = [(u - spec.layer_bytes * (e - f)) / (length * kvb * (e - f)) for u, (f, e) in zip(usable, cuts)]
    batch = min(eng.max_seqs, int(min(fits) // depth))
    if batch < 1:
        return None
    shapes = [StageShape(e - f, k == 0, k == depth - 1, g) for k, ((f, e), g) in enumerate(zip(cuts, gpus))]
    stage_s = tuple(cost.stage_time(s, _work_decode(batch, ctx)) for s in shapes)
    prefill_s = tuple(cost.stage_time(s, _work_prefill(p)) for s in shapes)
    # the bottleneck stage serves every micro-batch: per request, one prefill and O / B decode steps
    per_req = max(prefill_s) + o * max(stage_s) / batch
    return Plan(tuple(kinds), tuple(cuts), batch, stage_s, prefill_s, 1.0 / per_req if per_req > 0 else math.inf)


def candidates(view: ClusterView, mv: ModelView, kinds: list[str], max_depth: int, prompt: float,
               output: float) -> list[Plan]:
    """Every mix of the kinds up to `max_depth` stages that fits (kinds in the given order)."""
    out: list[Plan] = []
    avail = {k: sum(1 for g in view.gpus if g.kind == k) for k in kinds}

    def mixes(i: int, left: int) -> list[tuple[str, ...]]:
        if i == len(kinds):
            return [()]
        return [(kinds[i],) * c + rest for c in range(min(left, avail[kinds[i]]) + 1)
                for rest in mixes(i + 1, left - c)]

    for combo in mixes(0, max_depth):
        if combo:
            pl = plan(view, mv, combo, prompt, output)
            if pl is not None:
                out.append(pl)
    return out


def choose(plans: list[Plan], required: float, weight: dict[str, float] | None = None) -> Plan | None:
    """The cheapest plan that serves `required` req/s (sum of its GPUs' `weight`, 1 per GPU where
    not given), then the most capacity; if none does, the most capacity."""
    if not plans:
        return None
    w = weight or {}
    ok = [p for p in plans if p.capacity >= required]
    if ok:
        return min(ok, key=lambda p: (round(sum(w.get(k, 1.0) for k in p.kinds), 9), -p.capacity, p.kinds))
    return max(plans, key=lambda p: (p.capacity, -p.depth))
