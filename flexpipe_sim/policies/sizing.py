"""How many requests per second one pipeline replica serves: a steady-state estimate for
policies that size capacity ahead of time (static provisioning, AlpaServe-style planning).

With S micro-batches in flight the pipeline's throughput is set by its slowest stage: each stage
step of a micro-batch of B decoding sequences yields B tokens. A request costs its share of a
prefill step plus `mean_output` decode steps. Pure arithmetic on the cost model; charges nothing.
"""

from __future__ import annotations

from ..costmodel import BatchWork, StageShape, slowdown
from .base import ClusterView, ModelView


def replica_rate(mv: ModelView, stages: list[StageShape], batch: int) -> float:
    """Requests per second one replica sustains at a decode batch of `batch` per micro-batch."""
    ctx = int(mv.mean_prompt_tokens + mv.mean_output_tokens / 2)
    decode = BatchWork(n_tokens=batch, n_seqs=batch, attn_pairs=batch * ctx, kv_tokens=batch * ctx, n_decode=batch)
    p = int(mv.mean_prompt_tokens)
    prefill = BatchWork(n_tokens=p, n_seqs=1, attn_pairs=p * (p + 1) // 2, kv_tokens=0)
    t_decode = max(mv.cost.stage_time(s, decode) for s in stages)  # bottleneck stage, per B tokens
    t_prefill = max(mv.cost.stage_time(s, prefill) for s in stages)
    seconds_per_request = t_prefill + mv.mean_output_tokens * t_decode / batch
    return 1.0 / seconds_per_request


def slo_batch(mv: ModelView, stages: list[StageShape], max_seqs: int, headroom: float) -> int:
    """Largest decode batch per micro-batch whose token time meets `headroom` x the TPOT SLO.

    A sequence's token takes one pass through every stage: with S micro-batches in flight the pass
    is max(sum of stage times, S x slowest stage). Returns at least 1.
    """
    ctx = int(mv.mean_prompt_tokens + mv.mean_output_tokens / 2)
    best = 1
    for b in range(1, max_seqs + 1):
        w = BatchWork(n_tokens=b, n_seqs=b, attn_pairs=b * ctx, kv_tokens=b * ctx, n_decode=b)
        times = [mv.cost.stage_time(s, w) for s in stages]
        if max(sum(times), len(times) * max(times)) > headroom * mv.tpot_slo_s:
            break
        best = b
    return best


def typical_shapes(view: ClusterView, mv: ModelView, ranges: list[tuple[int, int]]) -> list[StageShape]:
    """The stages of `ranges` on the cluster's GPU kind, slowed by the mean tenant SM load: what a
    planner assumes before it knows which GPUs it will get."""
    mean_sm = sum(g.tenant_sm_frac for g in view.gpus) / len(view.gpus)
    slow = slowdown(mean_sm, mv.cost.roofline)
    return [StageShape(e - f, f == 0, e == mv.spec.num_layers, view.gpu_kind, slow) for f, e in ranges]
