"""Pipeline configurations on a mixed cluster (issue 15): for a request shape (mean prompt P,
mean output O), which GPU kinds in which order, cut where, serve how many requests per second.

A candidate is a sequence of GPU kinds (A100s first, then L40Ss: the kinds in catalogue order; order
changes only hops). Its cut is `hetero_partition` in bottleneck mode over per-layer times of the
shape's decode step on each kind (the cost model prices an L40S layer by its own profile or spec
sheet), with each GPU's memory after weights bounding its layers. Its capacity is the steady-state
estimate of sizing.py on these kinds and this shape: S micro-batches of B sequences, B the largest
whose token cycle meets `slo_headroom` x the TPOT SLO and whose KV every stage holds (S x B
sequences at full length over its own layers); a request costs its prefill on the bottleneck stage
plus O tokens of the cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flexpipe_core.policyapi import ClusterView, ModelView
from flexpipe_core.work import BatchWork

from ..costmodel import StageShape
from ..hardware import GPUSpec, LinkKind, get_gpu, link_spec
from .flexpipe.partition import hetero_partition
from .sizing import replica_rate, slo_batch


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


def plan(view: ClusterView, mv: ModelView, kinds: tuple[str, ...], prompt: float, output: float,
         cuts: tuple[tuple[int, int], ...] | None = None, slo_headroom: float = 0.8) -> Plan | None:
    """The best cut of `kinds` for this shape (or the given `cuts`) and its capacity; None where no
    cut fits memory or leaves room for one sequence per micro-batch."""
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
    if cuts is None:
        try:
            cuts = tuple(hetero_partition(t, [0.0] * n, [1.0] * depth, usable, mem, mode="bottleneck"))
        except ValueError:
            return None
    fits = [(u - spec.layer_bytes * (e - f)) / (length * kvb * (e - f)) for u, (f, e) in zip(usable, cuts)]
    kv_fit = int(min(fits) // depth)
    if kv_fit < 1:
        return None
    # the sizing every planner uses (sizing.py: SLO batch capped by KV fit, token cycle with hops
    # and bubbles, prefill on the bottleneck stage), for this phase's shape on these kinds
    shaped = dataclasses.replace(mv, mean_prompt_tokens=float(p), mean_output_tokens=float(o))
    shapes = [StageShape(e - f, k == 0, k == depth - 1, g) for k, ((f, e), g) in enumerate(zip(cuts, gpus))]
    hop = cost.hop_time(link_spec(LinkKind.RDMA, gpus[0]), 1) if depth > 1 else 0.0
    batch = slo_batch(shaped, shapes, eng.max_seqs, slo_headroom, kv_fit, hop)
    stage_s = tuple(cost.stage_time(s, _work_decode(batch, ctx)) for s in shapes)
    prefill_s = tuple(cost.stage_time(s, _work_prefill(p)) for s in shapes)
    return Plan(tuple(kinds), tuple(cuts), batch, stage_s, prefill_s, replica_rate(shaped, shapes, batch, hop))


def candidates(view: ClusterView, mv: ModelView, kinds: list[str], max_depth: int, prompt: float,
               output: float) -> list[Plan]:
    """Every mix of the kinds up to `max_depth` stages that fits (kinds in the given order)."""
    out: list[Plan] = []
    avail = {k: sum(1 for g in view.gpus if (g.kind or view.gpu_kind.name) == k) for k in kinds}

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
