"""FlexPipe's 'cached performance profiles' (§6.1): per model, the finest partition (Eq. 2), its
merges (Fig. 7), and per candidate depth the throughput T_k, latency L_k and Eq. 5 capacity mu_k.

T_k and L_k know depth: the SLO batch per micro-batch is capped by the KV that fits each stage
(S micro-batches share a stage's KV room), the token cycle is max(pass with hops, S x slowest
stage) (bottleneck stage and bubbles, sizing.token_cycle), and L_k is a typical request's latency
at that operating point (prefill pass through every stage and hop + outputs x cycle).
"""

from __future__ import annotations

import dataclasses

from flexpipe_core.work import BatchWork
from ...hardware import LinkKind, link_spec
from flexpipe_core.policyapi import ClusterView, ModelView
from ..sizing import kv_batch, replica_rate, slo_batch, token_cycle, typical_shapes
from .granularity import Candidate
from .partition import merge, partition


class ModelProfile:
    def __init__(self, mv: ModelView, view: ClusterView, p) -> None:
        spec, cost, gpu = mv.spec, mv.cost, view.gpu_kind
        ctx = int(mv.mean_prompt_tokens + mv.mean_output_tokens / 2)
        b0 = 8  # profiling batch for per-layer cost (b_base of Eq. 3)
        layer_t = cost.layer_time(gpu, BatchWork(b0, b0, b0 * ctx, b0 * ctx, b0))
        self.link = link_spec(LinkKind.RDMA, gpu)
        self.t_c = [layer_t] * spec.num_layers
        self.s_p = [float(spec.layer_bytes)] * spec.num_layers
        mem = gpu.memory_bytes * view.engine.gpu_memory_utilization
        finest = partition(self.t_c, self.s_p, max(p.granularities), self.link.bytes_per_s, mem)
        self.ranges: dict[int, list[tuple[int, int]]] = {}
        for g in p.granularities:
            try:
                self.ranges[g] = merge(finest, self.t_c, self.s_p, g, self.link.bytes_per_s, mem)
            except ValueError:
                continue  # too coarse: a stage would not fit one GPU (OPT-66B in one stage)
        self.cands: list[Candidate] = []
        self.by_depth: dict[int, Candidate] = {}
        self.kv_tokens: dict[int, int] = {}
        self.mu: dict[int, float] = {}  # Eq. 5: req/s one replica contributes, net of coordination overhead
        self._sized: dict[int, tuple] = {}  # depth -> (typical shapes, hop s, batch per micro-batch)
        self._mv, self._p, self._length = mv, p, mv.mean_prompt_tokens + mv.mean_output_tokens
        length = mv.mean_prompt_tokens + mv.mean_output_tokens
        eta_min = None
        for g in sorted(self.ranges):
            fit = kv_batch(view, mv, self.ranges[g])
            if fit < 1:
                del self.ranges[g]  # the weights leave no KV room for one sequence per micro-batch
                continue
            shapes = typical_shapes(view, mv, self.ranges[g])
            hop = cost.hop_time(self.link, 1)
            batch = slo_batch(mv, shapes, view.engine.max_seqs, p.slo_headroom, fit, hop)
            eta_min = eta_min or g
            thr = replica_rate(mv, shapes, batch, hop)
            pr = int(mv.mean_prompt_tokens)
            pre = sum(cost.stage_time(s, BatchWork(pr, 1, pr * (pr + 1) // 2, 0, 0)) for s in shapes)
            lat = pre + (g - 1) * cost.hop_time(self.link, pr) + mv.mean_output_tokens * token_cycle(mv, shapes, batch, hop)
            c = Candidate(g, thr, lat, p.nu0 * (g / eta_min) ** 2)
            self.cands.append(c)
            self.by_depth[g] = c
            self.mu[g] = thr / (p.beta1 + p.beta2 * g)
            self._sized[g] = (shapes, hop, batch)
            # Tokens each stage holds: all S x B sequences of the pipeline, over the stage's L/S
            # layers; in bytes that is B x length x L layers whatever S is (sizing.py).
            self.kv_tokens[g] = int(p.kv_headroom * batch * g * length)
        if not self.ranges:
            raise ValueError(f"policy.params.granularities: no candidate depth of {mv.name} fits a GPU")
        # A depth whose throughput per GPU is under `min_kv_share` of the model's best is not worth
        # its GPUs (OPT-66B in two 66 GB stages holds a few sequences per micro-batch); the best stays.
        best = max(c.throughput / c.stages for c in self.cands)
        for c in [c for c in self.cands if c.throughput / c.stages < p.min_kv_share * best]:
            self.cands.remove(c)
            for d in (self.ranges, self.by_depth, self.kv_tokens, self.mu, self._sized):
                del d[c.stages]
        # nu_k is anchored at the coarsest candidate that remains (params.nu0: "nu_k of the coarsest
        # candidate"); anchored at a dropped depth, OPT-66B's 4 and 8 stages had nu 4 and 16, not 1 and 4.
        eta_min = min(c.stages for c in self.cands)
        self.cands = [dataclasses.replace(c, nu=p.nu0 * (c.stages / eta_min) ** 2) for c in self.cands]
        self.by_depth = {c.stages: c for c in self.cands}

    def capacity(self, depth: int, kv_tokens: int | None = None) -> float:
        """Eq. 5 capacity of a replica of `depth` stages (a depth not among the candidates: the nearest
        one). `kv_tokens`: what its stages actually hold, where placement found less than the sized
        KV on fragments: the batch is then what fits, and so is the capacity. Memoised: asked for
        every pipeline every control step, and a function of (depth, kv_tokens) alone."""
        memo = self.__dict__.setdefault("_capacity_memo", {})
        c = memo.get((depth, kv_tokens))
        if c is None:
            c = memo[(depth, kv_tokens)] = self._capacity(depth, kv_tokens)
        return c

    def _capacity(self, depth: int, kv_tokens: int | None) -> float:
        if depth in self.mu and kv_tokens is not None:
            shapes, hop, batch = self._sized[depth]
            fit = int(kv_tokens // (depth * self._length))
            if fit < batch:
                rate = replica_rate(self._mv, shapes, max(1, fit), hop)
                return rate / (self._p.beta1 + self._p.beta2 * depth)
        if depth in self.mu:
            return self.mu[depth]
        return self.mu[min(self.mu, key=lambda d: (abs(d - depth), d))]
