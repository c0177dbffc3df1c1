"""How many requests per second one pipeline replica serves: a steady-state estimate for
policies that size capacity ahead of time (static provisioning, AlpaServe-style planning, FlexPipe's
candidate profiles).

An S-stage replica runs S micro-batches of B decoding sequences. A token of one micro-batch takes
one pass through every stage and hop; the S micro-batches share each stage, so a cycle (every
micro-batch advancing one token) takes max(pass, S x slowest stage): the slowest stage sets the
pace, and where hops make the pass longer than S stage steps the stages idle (pipeline bubbles).
A request costs its share of a prefill step on the bottleneck stage plus `mean_output` tokens.

B is bounded twice: by the TPOT SLO (the cycle is the token time) and by KV memory. Each stage
holds the KV of all S x B sequences for its own L_s layers, in what its GPU has left:
memory x gpu_memory_utilization - weights - workspace. So per stage
S x B x length x kv_bytes_per_token_layer x L_s must fit, B per micro-batch = fit / S. For even
stages L_s = L/S, so the per-stage bytes of a given B do not depend on S. Pure arithmetic on the
cost model; charges nothing.
"""

from __future__ import annotations

from flexpipe_core.work import BatchWork

from ..costmodel import StageShape, slowdown
from flexpipe_core.policyapi import ClusterView, ModelView


def _ctx(mv: ModelView) -> int:
    return int(mv.mean_prompt_tokens + mv.mean_output_tokens / 2)


def token_cycle(mv: ModelView, stages: list[StageShape], batch: int, hop_s: float = 0.0) -> float:
    """Seconds for every one of the S micro-batches (of `batch` decoding sequences each) to advance
    one token: max(sum of stage times + S hops, S x slowest stage). `hop_s`: one hop's time."""
    ctx = _ctx(mv)
    w = BatchWork(n_tokens=batch, n_seqs=batch, attn_pairs=batch * ctx, kv_tokens=batch * ctx, n_decode=batch)
    times = [mv.cost.stage_time(s, w) for s in stages]
    hops = len(times) * hop_s if len(times) > 1 else 0.0  # S-1 forward hops and the return to stage 1
    return max(sum(times) + hops, len(times) * max(times))


def typical_free_bytes(view: ClusterView) -> float:
    """Free memory of the median GPU (other tenants' memory taken): what a policy that reserves a
    fixed KV quota per instance can expect to find on a GPU it did not choose for its emptiness."""
    free = sorted(g.free_bytes for g in view.gpus)
    return float(free[len(free) // 2])


def kv_batch(view: ClusterView, mv: ModelView, ranges: list[tuple[int, int]], free_bytes: float | None = None) -> int:
    """Most decoding sequences per micro-batch whose KV (at the mean full length, so a sized batch
    never preempts) fits every stage on an otherwise empty GPU of the cluster's kind (or one with
    `free_bytes` free), S micro-batches sharing each stage. 0 if a stage's weights leave no room."""
    spec, eng = mv.spec, view.engine
    length = mv.mean_prompt_tokens + mv.mean_output_tokens
    usable = (view.gpu_kind.memory_bytes if free_bytes is None else free_bytes) * eng.gpu_memory_utilization
    fits = []
    for f, e in ranges:
        room = usable - spec.stage_weight_bytes(f, e) - eng.workspace_bytes
        fits.append(max(0.0, room) / (length * spec.kv_bytes_per_token_layer * (e - f)))
    return int(min(fits) // len(ranges))


def replica_rate(mv: ModelView, stages: list[StageShape], batch: int, hop_s: float = 0.0) -> float:
    """Requests per second one replica sustains at a decode batch of `batch` per micro-batch."""
    p = int(mv.mean_prompt_tokens)
    prefill = BatchWork(n_tokens=p, n_seqs=1, attn_pairs=p * (p + 1) // 2, kv_tokens=0)
    t_prefill = max(mv.cost.stage_time(s, prefill) for s in stages)  # bottleneck stage
    per_token = token_cycle(mv, stages, batch, hop_s) / (len(stages) * batch)  # S x B tokens per cycle
    return 1.0 / (t_prefill + mv.mean_output_tokens * per_token)


def slo_batch(mv: ModelView, stages: list[StageShape], max_seqs: int, headroom: float,
              kv_limit: int | None = None, hop_s: float = 0.0) -> int:
    """Largest decode batch per micro-batch whose token cycle meets `headroom` x the TPOT SLO and,
    given `kv_limit` (from kv_batch), whose KV fits. Returns at least 1."""
    cap = max_seqs if kv_limit is None else min(max_seqs, kv_limit)
    best = 1
    for b in range(1, cap + 1):
        if token_cycle(mv, stages, b, hop_s) > headroom * mv.tpot_slo_s:
            break
        best = b
    return best


def typical_shapes(view: ClusterView, mv: ModelView, ranges: list[tuple[int, int]]) -> list[StageShape]:
    """The stages of `ranges` on the cluster's GPU kind, slowed by the mean tenant SM load: what a
    planner assumes before it knows which GPUs it will get."""
    mean_sm = sum(g.tenant_sm_frac for g in view.gpus) / len(view.gpus)
    slow = slowdown(mean_sm, mv.cost.roofline)
    return [StageShape(e - f, f == 0, e == mv.spec.num_layers, view.gpu_kind, slow) for f, e in ranges]


def planned_batch(view: ClusterView, mv: ModelView, ranges: list[tuple[int, int]], headroom: float,
                  hop_s: float = 0.0, typical_gpu: bool = False) -> tuple[list[StageShape], int]:
    """(typical stage shapes, decode batch per micro-batch) of `ranges`: the SLO batch capped by KV fit
    on an empty GPU, or with `typical_gpu` on the median GPU's free memory (for a policy that turns the
    batch into a fixed KV quota: sized on an empty GPU, the quota would fit only empty GPUs)."""
    shapes = typical_shapes(view, mv, ranges)
    free = typical_free_bytes(view) if typical_gpu else None
    return shapes, slo_batch(mv, shapes, view.engine.max_seqs, headroom, kv_batch(view, mv, ranges, free), hop_s)
