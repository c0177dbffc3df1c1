"""The FlexPipe policy: granularity from the arrival CV (Eq. 4, Algorithm 1), replicas per
granularity (Eq. 5), inflight refactoring of running pipelines to the chosen granularity,
scale-out pipelines whose depth follows Eq. 11, the SLO check of Eq. 12, affinity placement
(Eq. 13) on the topology avoiding servers busy loading, 30% of peak always ready and 5-minute
reclamation (§7, §9).

What it models: the decisions. The backend pays for them (weight loads with the host cache,
KV pre-copy, pauses). Placement (§6.2): a stage needs memory for its weights and at least
`min_kv_share` of its sized batch's KV; the largest models are placed first; where the chosen depth
finds no room a finer one is tried (fine stages fit fragments); Eq. 9: GPUs running our other
models' stages are never used for a bursty model (CV >= isolate_cv) and come last otherwise;
Eq. 8: GPUs are ranked by their tenants' SM load. What it simplifies: γ_0 and α of Eq. 9 are not
modelled as numbers. Every parameter the paper leaves out is a field below with its default and
reason (also docs/parameters.md).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ...costmodel import BatchWork, StageShape, slowdown
from ...hardware import LinkKind, link_spec
from ..base import Action, ClusterView, Launch, ModelView, Refactor, Retire, StagePlan
from ..placement import place_pipeline
from ..sizing import replica_rate, slo_batch
from .autoscale import affinity, scale_depth, slo_ok
from .granularity import Candidate, Chooser, replicas
from .partition import merge, partition


class FlexPipeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    granularities: list[int] = Field([1, 2, 4, 8], description="candidate stage counts (paper: 2-32; 4/8/16/32 for OPT-66B)")
    alpha: float = Field(0.5, ge=0, le=1, description="Eq. 4 throughput vs latency weight: equal (not given)")
    sigma: float = Field(1.0, gt=0, description="Eq. 4 sensitivity to |nu_t - nu_k| (not given): one unit of CV")
    nu0: float = Field(1.0, gt=0, description="nu_k of the coarsest candidate; finer ones nu0 * (eta_k/eta_min)^2 (S ~ sqrt CV, §3.3)")
    beta1: float = Field(1.0, gt=0, description="Eq. 5 fixed coordination overhead (not given)")
    beta2: float = Field(0.05, ge=0, description="Eq. 5 overhead per stage: 5% (not given)")
    hysteresis: float = Field(0.2, ge=0, description="a new granularity must score 20% higher ...")
    patience: int = Field(15, ge=1, description="... for this many decisions in a row: one 15 s stats window at 1 s control steps (anti-oscillation)")
    dwell_s: float = Field(120.0, ge=0, description="a granularity is held this long before it may change back "
                           "(not given; anti-oscillation: refactors take ~10 s and pay weight loads)")
    surge: float = Field(0.1, ge=0, description="relative rate rise per second that triggers a finer pipeline at once "
                         "(0.1: the rate doubling within ~10 s; smaller values fire on the noise of a 15 s window)")
    always_ready: float = Field(0.3, ge=0, le=1, description="share of peak capacity always on (paper: 30%)")
    reclaim_s: float = Field(300.0, ge=0, description="excess capacity is released after this long (paper: 5 minutes)")
    headroom: float = Field(1.2, ge=1, description="capacity over the observed rate (not given)")
    slo_headroom: float = Field(0.8, gt=0, le=1, description="share of the TPOT SLO a sized batch may use")
    q_max: float = Field(64.0, gt=0, description="Eq. 11 queue capacity Q_max (not given)")
    scale_beta: float = Field(4.0, ge=0, description="Eq. 11 sigmoid beta (not given)")
    scale_gamma: float = Field(1.0, ge=0, description="Eq. 11 sigmoid gamma (not given)")
    w_t: float = Field(1.0, ge=0, description="Eq. 13 weight of recent hosting (not given)")
    w_g: float = Field(0.25, ge=0, description="Eq. 13 weight per free GPU (not given)")
    w_busy: float = Field(0.5, ge=0, description="score lost per stage still loading on a server: avoid paths with recent "
                          "scaling activity (§7; not given: two loading stages outweigh a warm cache)")
    affinity_decay: float = Field(1 / 300, ge=0, description="Eq. 13 lambda: warmth halves in ~3.5 min (not given)")
    refactor: bool = Field(True, description="refactor running pipelines (off: only new ones get the new depth)")
    use_affinity: bool = Field(True, description="Eq. 13 server choice (off: ablation)")
    isolate_cv: float = Field(1.0, ge=0, description="Eq. 9: at or above this arrival CV a stage never shares a GPU with "
                              "our other models' stages (not given: CV 1 is Poisson, the paper's 'stable' boundary)")
    balance: bool = Field(True, description="Eq. 8 stage balance on unequal GPUs: prefer GPUs whose tenants leave more "
                          "SM time (off: ablation)")
    topology: bool = Field(True, description="topology-aware stage placement (off: ablation)")
    stage_kv: Literal["all", "sized"] = Field("all", description="KV a stage reserves: all the GPU's free memory allows "
                                              "(vLLM's way) or its sized batch's (leaves room to co-locate)")
    kv_headroom: float = Field(1.0, ge=1, description="sized KV = batch x micro-batches x mean length x this: room for "
                               "the length tail (Azure conversation P90 total length is ~2x its mean)")
    min_kv_share: float = Field(0.25, gt=0, le=1, description="a pipeline whose stages cannot hold this share of its "
                                "sized batch's KV is not worth its GPUs (not given)")
    refactor_cooldown_s: float = Field(30.0, ge=0, description="at most one refactor per instance in this long")

    def check_scenario(self, sc) -> None:
        for m in sc.models:
            n = m.spec().num_layers
            bad = [g for g in self.granularities if not 1 <= g <= min(n, sc.cluster.gpus)]
            if bad:
                raise ValueError(f"policy.params.granularities: {bad} impossible for {m.name} ({n} layers, {sc.cluster.gpus} GPUs)")


class FlexPipePolicy:
    name = "flexpipe"

    def __init__(self, params: FlexPipeParams) -> None:
        self.p = params
        self.notes: list[str] = []
        self._models: dict[str, _ModelState] = {}
        self._hosted: dict[tuple[str, int], float] = {}  # (model, server) -> last time it hosted the model
        self._last_refactor: dict[int, float] = {}

    def decide(self, view: ClusterView) -> list[Action]:
        for g in view.gpus:
            for m in g.models:
                self._hosted[(m, g.server)] = view.now
        actions: list[Action] = []
        taken: set[int] = set()
        # largest models first: their stages need the largest fragments (first-fit decreasing)
        order = sorted(view.models.values(), key=lambda m: (-m.spec.stage_weight_bytes(0, m.spec.num_layers), m.name))
        for mv in order:
            name = mv.name
            st = self._models.get(name)
            if st is None:
                st = self._models[name] = _ModelState(mv, view, self.p)
            actions += self._decide_model(view, mv, st, taken)
        return actions

    # --- one model ------------------------------------------------------------------------------
    def _decide_model(self, view: ClusterView, mv: ModelView, st: "_ModelState", taken: set[int]) -> list[Action]:
        p = self.p
        g = st.chooser.update(mv.arrival_cv, mv.rate_slope, view.now)
        insts = [i for i in view.instances_of(mv.name) if i.state != "draining"]
        # always-ready floor: 30% of the replicas the historical peak needs at the coarsest depth
        floor = math.ceil(p.always_ready * replicas(st.cands[0], mv.peak_rate, p.beta1, p.beta2))
        need = replicas(g, mv.arrival_rate * p.headroom, p.beta1, p.beta2)
        ready = [i for i in insts if i.state == "ready"]
        serving = [i for i in insts if i.state in ("ready", "refactoring")]  # a refactoring pipeline still serves
        mus = [st.by_depth[len(i.gpus)].throughput for i in serving if len(i.gpus) in st.by_depth]
        loading = any(i.state == "loading" for i in insts)
        if not loading and not slo_ok(mv.ttft_slo_s, 0.0, mus, mv.queued, 1.0):
            # Eq. 12: the queue would not clear within the SLO. One more pipeline at a time, and
            # not while one is still loading (its capacity is on its way, not yet in mu).
            need = max(need, len(insts) + 1)
        target = max(floor, need, 1 if mv.queued else 0)
        acts: list[Action] = []
        if len(insts) < target:
            st.excess_since = None
            depth = g.stages
            if mv.queued:  # Eq. 11: bursty and backed up -> finer scale-out pipelines (faster to load)
                eq11 = scale_depth(max(st.by_depth), mv.arrival_cv, mv.queued, p.q_max, p.scale_beta, p.scale_gamma)
                depth = max(depth, max((d for d in st.by_depth if d <= eq11), default=depth))
            for _ in range(target - len(insts)):
                # where the chosen depth finds no room, finer stages may still fit the fragments
                launch = next((lc for d in sorted(st.ranges) if d >= depth
                               if (lc := self._place(view, mv, st.ranges[d], taken, st)) is not None), None)
                if launch is None:
                    self._note(f"flexpipe: no room for another {mv.name} pipeline of {depth} or more stages")
                    break
                acts.append(launch)
        elif len(insts) > target:
            st.excess_since = view.now if st.excess_since is None else st.excess_since
            if view.now - st.excess_since >= p.reclaim_s and ready:
                victim = min(ready, key=lambda i: (i.running + i.queued, -i.id))
                acts.append(Retire(victim.id))
                st.excess_since = view.now
        else:
            st.excess_since = None
        if p.refactor and not any(isinstance(a, Retire) for a in acts):
            # Eq. 5: M(g) replicas at the chosen granularity; refactor only until that many
            # pipelines have it (deepening every replica would multiply its GPUs by the depth).
            at_depth = sum(len(i.gpus) == g.stages for i in insts) + sum(i.state == "refactoring" for i in insts)
            if at_depth < max(floor, need, 1):
                acts += self._refactor_one(view, mv, st, ready, g.stages, taken)
        return acts

    def _refactor_one(self, view, mv, st, ready, depth: int, taken: set[int]) -> list[Action]:
        for inst in sorted(ready, key=lambda i: i.id):
            if len(inst.gpus) == depth:
                continue
            if view.now - self._last_refactor.get(inst.id, -1e18) < self.p.refactor_cooldown_s:
                continue
            launch = self._place(view, mv, st.ranges[depth], taken, st)
            if launch is None:
                return []
            self._last_refactor[inst.id] = view.now
            return [Refactor(inst.id, launch.stages)]  # one per decision: refactors cost GPUs for a while
        return []

    def _place(self, view: ClusterView, mv: ModelView, ranges, taken: set[int], st) -> Launch | None:
        scores = None
        if self.p.use_affinity:
            free: dict[int, int] = {}
            for g in view.gpus:
                if not g.models and g.id not in taken:
                    free[g.server] = free.get(g.server, 0) + 1
            servers = {g.server for g in view.gpus}
            # §7: "avoiding paths with recent scaling activities": a server whose GPUs are still loading
            # weights has its PCIe and NIC busy, so each loading stage there costs `w_busy`.
            by_id = {g.id: g for g in view.gpus}
            loading: dict[int, int] = {}
            for inst in view.instances:
                if inst.state in ("loading", "refactoring"):
                    for gid in inst.gpus:
                        loading[by_id[gid].server] = loading.get(by_id[gid].server, 0) + 1
            scores = {s: affinity(view.now, self._hosted.get((mv.name, s)), free.get(s, 0), self.p.w_t, self.p.w_g,
                                  self.p.affinity_decay) - self.p.w_busy * loading.get(s, 0) for s in servers}
        # A stage must hold the KV of its sized batch or, where no GPU set has that much, the
        # largest KV that fits, down to `min_kv_share` of it (§5: fit stages into free memory).
        # Eq. 9: "isolation for bursty patterns": at or above `isolate_cv` never share a GPU's
        # compute with our other models' stages; below, only as a last resort (consolidation).
        isolate = 2 if mv.arrival_cv >= self.p.isolate_cv else 1

        def place(kv_tokens: int, promised: set[int]) -> Launch | None:
            return place_pipeline(view, mv.name, ranges, promised, kv_tokens, scores, self.p.topology, isolate,
                                  self.p.balance)

        want = st.kv_tokens[len(ranges)]
        kv = want
        if place(want, set(taken)) is None:
            lo, hi = max(mv.spec.max_context, int(self.p.min_kv_share * want)), want
            if place(lo, set(taken)) is None:
                return None
            while hi - lo > max(1, want // 64):  # invariant: lo fits, hi does not
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if place(mid, set(taken)) is None else (mid, hi)
            kv = lo
        launch = place(kv, taken)
        if launch is None:
            return None
        # "all": like vLLM, a stage then takes the KV its GPU's free memory allows; "sized": it
        # reserves only the amount checked above, leaving room to co-locate other stages.
        return Launch(launch.model, launch.stages, kv if self.p.stage_kv == "sized" else None)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


class _ModelState:
    """Per-model plans, computed once: the finest partition (Eq. 2), its merges, and each
    granularity's throughput, latency and nu (the 'cached performance profiles' of Eq. 4)."""

    def __init__(self, mv: ModelView, view: ClusterView, p: FlexPipeParams) -> None:
        spec, cost, gpu = mv.spec, mv.cost, view.gpu_kind
        mean_sm = sum(g.tenant_sm_frac for g in view.gpus) / len(view.gpus)
        slow = slowdown(mean_sm, cost.roofline)
        ctx = int(mv.mean_prompt_tokens + mv.mean_output_tokens / 2)
        b0 = 8  # profiling batch for per-layer cost (b_base of Eq. 3)
        layer_t = cost.layer_time(gpu, BatchWork(b0, b0, b0 * ctx, b0 * ctx, b0))
        link = link_spec(LinkKind.RDMA, gpu)
        t_c = [layer_t] * spec.num_layers
        s_p = [float(spec.layer_bytes)] * spec.num_layers
        mem = gpu.memory_bytes * view.engine.gpu_memory_utilization
        finest = partition(t_c, s_p, max(p.granularities), link.bytes_per_s, mem)
        self.ranges = {}
        for g in p.granularities:
            try:
                self.ranges[g] = merge(finest, t_c, s_p, g, link.bytes_per_s, mem)
            except ValueError:
                continue  # too coarse: a stage would not fit one GPU (OPT-66B in one stage)
        if not self.ranges:
            raise ValueError(f"policy.params.granularities: no candidate depth of {mv.name} fits a GPU")
        self.cands, self.by_depth, self.kv_tokens = [], {}, {}
        eta_min = min(self.ranges)
        for g in sorted(self.ranges):
            shapes = [StageShape(e - f, f == 0, e == spec.num_layers, gpu, slow) for f, e in self.ranges[g]]
            batch = slo_batch(mv, shapes, view.engine.max_seqs, p.slo_headroom)
            thr = replica_rate(mv, shapes, batch)
            dec = BatchWork(1, 1, ctx, ctx, 1)
            token = sum(cost.stage_time(s, dec) for s in shapes) + (g - 1) * cost.hop_time(link, 1)
            pr = int(mv.mean_prompt_tokens)
            pre = sum(cost.stage_time(s, BatchWork(pr, 1, pr * (pr + 1) // 2, 0, 0)) for s in shapes)
            lat = pre + (g - 1) * cost.hop_time(link, pr) + mv.mean_output_tokens * token
            c = Candidate(g, thr, lat, p.nu0 * (g / eta_min) ** 2)
            self.cands.append(c)
            self.by_depth[g] = c
            self.kv_tokens[g] = int(p.kv_headroom * batch * g * (mv.mean_prompt_tokens + mv.mean_output_tokens))
        self.chooser = Chooser(self.cands, p.alpha, p.sigma, p.hysteresis, p.patience, p.surge, p.dwell_s)
        self.excess_since: float | None = None
