"""Cost model: how long a stage step, an activation hop and a weight load take.

First version (issue 3): a roofline per decoder layer with efficiency factors, applied to the
GPU's spec sheet. The calibration issue replaces the factors with measured profiles.

Efficiency factors come from the measured H100 anchors in DESIGN.md (one Llama-2-7B layer, bf16,
torch eager, H100 with 3.35 TB/s HBM and 989 TFLOP/s dense bf16 on the spec sheet):
- compute: prefill 8x1024 tokens in 5.55 ms = 611 TFLOP/s, 1x2048 in 1.37 ms = 630 TFLOP/s
  -> 0.63 of peak.
- weight reads: decode batch 1 @ 512 context in 0.42 ms, almost all of it reading 405 MB of
  weights -> 1.03 TB/s = 0.31 of HBM peak.
- KV reads: decode time grows by 3.1-3.2 us per MB of KV read (batch 8 -> 32 -> 128 at 512-1024
  context), i.e. 0.32 TB/s = 0.096 of HBM peak (eager attention re-reads and materialises KV).
`tests/test_costmodel.py` checks the model against all seven anchors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from flexpipe_core.work import BatchWork

from .hardware import GPUSpec, LinkSpec
from .models import ModelSpec


@dataclass(frozen=True)
class Roofline:
    eff_compute: float = 0.63
    eff_weight_bw: float = 0.31
    eff_kv_bw: float = 0.096
    step_overhead_s: float = 0.0  # per stage step; eager launch overheads are inside the per-layer anchors
    sm_interference: float = 1.0  # slowdown per unit of tenant SM use (time-slicing, see `slowdown`)
    # Where the efficiencies come from, for the run's cost description (CostModel.describe).
    source: str = "spec sheet x efficiencies fitted to the H100 anchors"


def slowdown(tenant_sm_frac: float, roofline: Roofline) -> float:
    """A tenant busy a fraction u of the time delays our kernels by ~u when time-slicing the SMs
    (assumption: the GPU alternates whole kernels between contexts, no MPS partitioning)."""
    return 1.0 + roofline.sm_interference * tenant_sm_frac


@dataclass(frozen=True)
class StageShape:
    """What the cost model needs to know about one stage."""

    num_layers: int
    has_embedding: bool
    has_head: bool
    gpu: GPUSpec
    slowdown: float = 1.0


class CostModel:
    def __init__(self, model: ModelSpec, roofline: Roofline | None = None) -> None:
        self.model = model
        self.roofline = roofline or Roofline()
        # Shape constants, read on every step.
        self._flops_tok = model.flops_per_token_layer
        self._flops_pair = model.attn_flops_per_pair
        self._layer_bytes = model.layer_bytes
        self._kvb = model.kv_bytes_per_token_layer
        self._overhead = 0.0  # measured per-step overhead on top of the roofline's (profiles set it)

    def layer_time(self, gpu: GPUSpec, w: BatchWork) -> float:
        r = self.roofline
        flops = w.n_tokens * self._flops_tok + w.attn_pairs * self._flops_pair
        t_compute = flops / (gpu.peak_flops * r.eff_compute)
        streamed = self._layer_bytes + w.n_tokens * self._kvb  # weights + new KV written
        decode_kv = w.kv_tokens * self._kvb
        t_memory = streamed / (gpu.hbm_bytes_per_s * r.eff_weight_bw) + decode_kv / (gpu.hbm_bytes_per_s * r.eff_kv_bw)
        return t_compute if t_compute > t_memory else t_memory

    def decode_layer_fn(self, gpu: GPUSpec, n: int) -> Callable[[int], float]:
        """kv_tokens -> layer_time(gpu, BatchWork(n, n, kv, kv, n)): a layer's time for a batch of n
        decoding sequences with kv tokens of context in all. Run-ahead (engine/runahead.py) prices
        many steps of one batch size; a cost model may look up what depends on n once."""
        if type(self).layer_time is not CostModel.layer_time:  # a subclass prices otherwise: ask it
            layer_time = self.layer_time
            return lambda kv: layer_time(gpu, BatchWork(n, n, kv, kv, n))
        flops_n, flops_pair, kvb, compute_rate, streamed_s, kv_rate = self._decode_constants(gpu, n)

        def layer(kv: int) -> float:
            t_compute = (flops_n + kv * flops_pair) / compute_rate
            t_memory = streamed_s + kv * kvb / kv_rate
            return t_compute if t_compute > t_memory else t_memory

        return layer

    def _decode_constants(self, gpu: GPUSpec, n: int) -> tuple:
        """layer_time with n_tokens = n, attn_pairs = kv_tokens = kv: what depends on n computed
        once (flops of n tokens, FLOPs per pair, KV bytes per token, compute rate, streamed
        seconds, KV rate), every float operation the same and in the same order."""
        r = self.roofline
        return (n * self._flops_tok, self._flops_pair, self._kvb, gpu.peak_flops * r.eff_compute,
                (self._layer_bytes + n * self._kvb) / (gpu.hbm_bytes_per_s * r.eff_weight_bw),
                gpu.hbm_bytes_per_s * r.eff_kv_bw)

    def decode_table(self, gpu: GPUSpec, n: int) -> tuple | None:
        """decode_layer_fn as numbers, for the compiled run-ahead (engine/stepkernel.py `_price`):
        (1, per-n [flops of n tokens, streamed seconds], 0.0, shared [FLOPs per pair, compute rate,
        KV bytes per token, KV rate]). The compiled loop does the float operations of `layer`; the
        integer products there are exact in doubles below 2**53, which the shape constants keep to
        with contexts up to 2**31 tokens. None where a subclass prices a layer otherwise."""
        if (type(self).layer_time is not CostModel.layer_time or type(self).decode_layer_fn is not CostModel.decode_layer_fn
                or not all(isinstance(v, int) for v in (self._flops_tok, self._flops_pair, self._layer_bytes, self._kvb))
                or max(n * self._flops_tok + self._flops_pair * 2**31, self._kvb * 2**31) >= 2**53):
            return None
        flops_n, flops_pair, kvb, compute_rate, streamed_s, kv_rate = self._decode_constants(gpu, n)
        return (1, np.array([float(flops_n), streamed_s]), 0.0,
                np.array([float(flops_pair), compute_rate, float(kvb), kv_rate]))

    def head_time(self, gpu: GPUSpec, n_seqs: int) -> float:
        """LM head for the last token of each sequence: a vocab x hidden matmul."""
        m, r = self.model, self.roofline
        t_compute = 2 * n_seqs * m.vocab * m.hidden / (gpu.peak_flops * r.eff_compute)
        t_memory = m.embedding_bytes / (gpu.hbm_bytes_per_s * r.eff_weight_bw)
        return max(t_compute, t_memory)

    def stage_time(self, s: StageShape, w: BatchWork) -> float:
        t = s.num_layers * self.layer_time(s.gpu, w)
        if s.has_head:
            t += self.head_time(s.gpu, w.n_seqs)
        return (t + self.step_overhead_s) * s.slowdown

    @property
    def step_overhead_s(self) -> float:
        """Fixed time per stage step (the roofline's; a profile adds its measured one)."""
        return self.roofline.step_overhead_s + self._overhead

    def hop_time(self, link: LinkSpec, n_tokens: int) -> float:
        return link.latency_s + n_tokens * self.model.activation_bytes_per_token / link.bytes_per_s

    def return_time(self, link: LinkSpec, n_seqs: int) -> float:
        """Sampled token ids travelling from the last stage back to the first (8 bytes each)."""
        return link.latency_s + 8 * n_seqs / link.bytes_per_s

    def host_to_gpu_bytes_per_s(self, gpu: GPUSpec) -> float:
        return gpu.host_link_bytes_per_s

    def describe(self) -> str:
        return f"roofline ({self.model.name}: {self.roofline.source})"


class ProfileCostModel(CostModel):
    """Stage times from a calibration profile (flexpipe_sim/profiles.py) measured by our kernel.

    A mixed step of P prefill tokens and D decodes at mean context C costs, per layer,
    prefill(P + D) + [decode(D, C) - decode(D, C_min)]: the linear layers see all P + D tokens
    once, and the decodes add their attention over context (the part of a decode step that grows
    with C). A pure decode step is decode(D, C); a pure prefill, prefill(P)."""

    def __init__(self, model: ModelSpec, profile, roofline: Roofline | None = None) -> None:
        super().__init__(model, roofline)
        profile.check_model(model)
        self.profile = profile
        self._c_min = float(profile.raw["decode"]["context"][0])
        head = profile.raw.get("head")
        self._head = ([float(x) for x in head["batch"]], [float(x) for x in head["s"]]) if head else None
        self._head_memo: dict[int, float] = {}
        self._back_memo: dict[int, float] = {}
        self._overhead = float(profile.raw.get("overheads", {}).get("stage_step_s", 0.0))  # measured per stage step

    def layer_time(self, gpu: GPUSpec, w: BatchWork) -> float:
        pr = self.profile
        d = w.n_decode
        p = w.n_tokens - d
        if d == 0:
            return pr.prefill_layer_s(p)
        ctx = max(w.kv_tokens / d, 1.0)
        if p == 0:
            return pr.decode_layer_s(d, ctx)
        attn = max(0.0, pr.decode_layer_s(d, ctx) - pr.decode_layer_s(d, self._c_min))
        return pr.prefill_layer_s(p + d) + attn

    def decode_layer_fn(self, gpu: GPUSpec, n: int) -> Callable[[int], float]:
        """layer_time's decode branch for n sequences with the profile's row for n taken once: the
        same lookups and float operations (profiles.row_at is what decode_layer_s evaluates)."""
        if type(self).layer_time is not ProfileCostModel.layer_time or n < 1:
            return super().decode_layer_fn(gpu, n)
        from .profiles import row_at

        pr = self.profile
        lcs, row, c_max = pr.decode_row(n)

        def layer(kv: int) -> float:
            ctx = max(kv / n, 1.0)
            if row is not None and ctx <= c_max:
                return row_at(lcs, row, ctx)
            return pr.decode_layer_s(n, ctx)  # beyond the grid: the fitted roofline, counted

        return layer

    def decode_table(self, gpu: GPUSpec, n: int) -> tuple | None:
        """decode_layer_fn's lookups as arrays, for the compiled run-ahead (engine/stepkernel.py
        `_price`): (0, the profile's row for n (log layer times along its log contexts; zeros beyond
        the measured batches), the largest context on the row (-1.0 where none), [log contexts...,
        fitted roofline a, b, c, t_min]). None where a subclass prices a layer otherwise."""
        if (type(self).layer_time is not ProfileCostModel.layer_time
                or type(self).decode_layer_fn is not ProfileCostModel.decode_layer_fn or n < 1):
            return None
        pr = self.profile
        lcs, row, c_max = pr.decode_row(n)
        a, b, c = pr._fit("decode")
        return (0, np.zeros(len(lcs)) if row is None else np.array(row), -1.0 if row is None else c_max,
                np.array(list(lcs) + [a, b, c, pr._grids()[9]]))

    def head_time(self, gpu: GPUSpec, n_seqs: int) -> float:
        if self._head is None:
            return super().head_time(gpu, n_seqs)
        t = self._head_memo.get(n_seqs)  # called on every step of the last stage, for a few hundred sizes
        if t is None:
            from .profiles import _interp

            xs, ys = self._head
            t = self._head_memo[n_seqs] = _interp(min(max(float(n_seqs), xs[0]), xs[-1]), xs, ys)
        return t

    def host_to_gpu_bytes_per_s(self, gpu: GPUSpec) -> float:
        rate = self.profile.raw["links"].get("host_to_device_pinned_Bps")
        return float(rate) if rate else gpu.host_link_bytes_per_s

    def describe(self) -> str:
        return self.profile.describe()


@dataclass(frozen=True)
class LoadRates:
    """Weight-loading tiers (DESIGN.md): storage -> host memory -> GPU, or GPU <- peer GPU. Loads
    running at once share these bandwidths (engine/loads.py); the paper's resource graph names
    PCIe per server and storage I/O per cluster (§7) but gives no values.

    storage: 1.0 GB/s per server. Table 2 of the paper implies 0.64-1.15 GB/s per stage load for
    OPT-66B on A100 (30/15/7.5/3.75 GB in 47.14/13.05/9.19/5.43 s); we take the round middle, now
    shared by the concurrent loads of one server (Table 2 does not say how many stages shared a
    server, so its figures bound a per-server rate only loosely: 2 stages per server would be ~1.4 GB/s).
    cluster storage: 22 GB/s in all. Table 2's 32-stage load brings 120 GB in 5.43 s (22.1 GB/s
    together), the most the paper shows its storage delivering; we take that as the limit.
    gpus_per_pcie_uplink: 2. In HGX/DGX A100 servers GPUs sit in pairs behind PCIe switches with one
    Gen4 x16 uplink to the host each, so two GPUs loading at once share one host link's rate.
    """

    storage_bytes_per_s: float = 1.0e9
    cluster_storage_bytes_per_s: float = 22.0e9
    gpus_per_pcie_uplink: int = 2


class PipelineCost:
    """Per-instance pricing: stage times and hop times for a fixed placement."""

    def __init__(self, cost: CostModel, stages: list[StageShape], hops: list[LinkSpec], back: LinkSpec) -> None:
        self.cost = cost
        self.stages = stages
        self.hops = hops  # hops[k]: stage k -> k+1
        self.back = back  # last stage -> first stage (sampled tokens)
        self._hop_memo: dict[int, list[float]] = {}
        # The common case, priced with the per-stage constants taken out of the loop: every stage on
        # one GPU kind and the default stage_time (see stage_times).
        kinds = {s.gpu.name for s in stages}
        self._uniform = (type(cost).stage_time is CostModel.stage_time and len(kinds) == 1)
        self._shape = [(s.num_layers, s.has_head, s.slowdown) for s in stages]
        self._any_head = any(s.has_head for s in stages)
        self._head_memo: dict[int, float] = {}
        self._back_memo: dict[int, float] = {}
        self._decode_memo: dict[int, tuple[float, list[float], float]] = {}
        self._pricing_memo: dict[int, tuple[Callable[[int], float], float, float]] = {}
        self._kernel_memo: dict[int, tuple | None] = {}
        self._overhead = cost.step_overhead_s  # fixed once the cost model is built

    @property
    def uniform(self) -> bool:
        """Every stage on one GPU kind, default stage_time: a step's stage k takes
        (num_layers_k x layer + head [last stage] + overhead) x slowdown_k (see `layer_head`)."""
        return self._uniform

    def layer_head(self, w: BatchWork) -> tuple[float, float, float]:
        """(layer time, LM-head time, per-stage overhead) of a step, for a uniform pipeline: the
        instance prices its stages inline from these (engine/instance.py `_submit`)."""
        cost, gpu = self.cost, self.stages[0].gpu
        head = 0.0
        if self._any_head:
            head = self._head_memo.get(w.n_seqs)  # a run sees a few hundred batch sizes
            if head is None:
                head = self._head_memo[w.n_seqs] = cost.head_time(gpu, w.n_seqs)
        return cost.layer_time(gpu, w), head, self._overhead

    def decode_pricing(self, n: int) -> tuple[Callable[[int], float], float, float]:
        """For a uniform pipeline and a decode batch of n sequences: (kv_tokens -> layer time, LM-head
        time, per-stage overhead), the values layer_head gives for BatchWork(n, n, kv, kv, n).
        Memoised per n: run-ahead (engine/runahead.py) prices every step it takes from these."""
        t = self._pricing_memo.get(n)
        if t is None:
            cost, gpu = self.cost, self.stages[0].gpu
            head = 0.0
            if self._any_head:  # as layer_head (the same memo)
                head = self._head_memo.get(n)
                if head is None:
                    head = self._head_memo[n] = cost.head_time(gpu, n)
            t = self._pricing_memo[n] = (cost.decode_layer_fn(gpu, n), head, self._overhead)
        return t

    def stage_times(self, w: BatchWork) -> list[float]:
        # Same result as [cost.stage_time(s, w) for s in stages], pricing a layer once per GPU kind
        # (a profile lookup or a roofline: both depend on the stage only through its GPU kind).
        if self._uniform:
            cost, gpu = self.cost, self.stages[0].gpu
            lt, oh = cost.layer_time(gpu, w), cost.step_overhead_s
            head = cost.head_time(gpu, w.n_seqs) if self._any_head else 0.0
            return [(nl * lt + head + oh) * sd if hh else (nl * lt + oh) * sd for nl, hh, sd in self._shape]
        if type(self.cost).stage_time is not CostModel.stage_time:
            return [self.cost.stage_time(s, w) for s in self.stages]
        layer: dict[str, float] = {}
        out = []
        oh = self.cost.step_overhead_s
        for s in self.stages:
            t = layer.get(s.gpu.name)
            if t is None:
                t = layer[s.gpu.name] = self.cost.layer_time(s.gpu, w)
            t = s.num_layers * t
            if s.has_head:
                t += self.cost.head_time(s.gpu, w.n_seqs)
            out.append((t + oh) * s.slowdown)
        return out

    def hop_times(self, n_tokens: int) -> list[float]:
        """Activation transfer after each stage: stage k -> k+1, and 0.0 after the last (so the
        instance's stage loop adds one per stage)."""
        t = self._hop_memo.get(n_tokens)  # every step asks; a run sees a few thousand sizes
        if t is None:
            t = self._hop_memo[n_tokens] = [self.cost.hop_time(h, n_tokens) for h in self.hops] + [0.0]
        return t

    def decode_hops(self, n: int) -> tuple[float, list[float], float]:
        """(return_time(n), hop_times(n), sum(hop_times(n))) of a decode step of n sequences
        (n tokens), memoised: run-ahead (engine/runahead.py) asks on every step it takes."""
        t = self._decode_memo.get(n)
        if t is None:
            hops = self.hop_times(n)
            t = self._decode_memo[n] = (self.return_time(n), hops, sum(hops))
        return t

    def decode_kernel(self, n: int) -> tuple | None:
        """What the compiled run-ahead (engine/stepkernel.py) prices a decode step of n sequences
        from, memoised: the cost model's decode_table (kind, per-n numbers, shared numbers), then
        the LM-head time, return time, hop times (an array, as the kernel's plan holds them) and
        their sum (decode_pricing's and decode_hops's values). None where the cost model has no
        such table."""
        t = self._kernel_memo.get(n, False)
        if t is False:
            t = None
            table = getattr(self.cost, "decode_table", None)
            tab = table(self.stages[0].gpu, n) if table is not None and self._uniform else None
            if tab is not None:
                head = self.decode_pricing(n)[1]
                back, hops, hop_sum = self.decode_hops(n)
                t = tab + (head, back, np.array(hops), hop_sum)
            self._kernel_memo[n] = t
        return t

    def return_time(self, n_seqs: int) -> float:
        if not self.hops:
            return 0.0
        t = self._back_memo.get(n_seqs)  # every decode step of a pipeline asks
        if t is None:
            t = self._back_memo[n_seqs] = self.cost.return_time(self.back, n_seqs)
        return t
