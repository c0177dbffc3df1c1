"""The FlexPipe policy: granularity from the arrival CV (Eq. 4, Algorithm 1), capacity per
granularity (Eq. 5), inflight refactoring of running pipelines to the chosen granularity (in place,
Fig. 6), scale-out pipelines whose depth follows Eq. 11, the SLO check of Eq. 12 with the
initialisation time, placement by Eqs. 6-9 with Eq. 2 re-run for the GPUs' speeds, affinity (Eq.
13) on the topology avoiding servers busy loading, 30% of peak always ready and 5-minute
reclamation (§7, §9).

Capacity is counted in requests/s, each pipeline at its own depth (Eq. 5's mu_k, profiles.py):
required = max(always_ready x peak rate, headroom x observed rate, Eq. 12's queue-clearing need);
a deficit launches pipelines, capacity idle for `reclaim_s` (above every requirement seen in that
window) is retired all at once. Launches across models follow Eq. 6: the always-ready floors first,
then the pipeline with the most useful throughput per GB of GPU memory, one at a time.

What it models: the decisions. The backend pays for them (weight loads with the host cache, KV
pre-copy, pauses). Every parameter the paper leaves out is a field below with its default and
reason in params.py (also docs/parameters.md).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ...costmodel import slowdown
from flexpipe_core.policyapi import Action, ClusterView, Launch, ModelView, Refactor, Retire, StagePlan
from ..placement import could_fit, place_pipeline, usable_bytes
from .autoscale import affinity, scale_depth, slo_ok
from .granularity import Chooser
from .params import FlexPipeParams
from .partition import rebalance, stage_times
from .profiles import ModelProfile


@dataclass
class _Want:
    """A model's capacity deficit this decision (req/s), and the depth new pipelines start at."""

    mv: ModelView
    st: "_ModelState"
    depth: int
    deficit: float
    floor_deficit: float


class _ModelState(ModelProfile):
    def __init__(self, mv: ModelView, view: ClusterView, p: FlexPipeParams) -> None:
        super().__init__(mv, view, p)
        self.chooser = Chooser(self.cands, p.alpha, p.sigma, p.hysteresis, p.patience, p.surge, p.dwell_s)
        self.excess_since: float | None = None
        # (time, required req/s) over the last reclaim_s, only those no later one exceeds (a
        # monotone queue: its head is the window's largest, each tick's value pushed and popped once)
        self.required: deque[tuple[float, float]] = deque()


def eq12_new(deadline_s: float, init_s: float, have: float, mu_new: float, queue: float) -> int:
    """Eq. 12 with initialisation time: the fewest new pipelines (mu_new req/s each, serving after
    init_s) such that deadline x have + (deadline - init) x n x mu_new >= queue. When init_s is
    not under the deadline no new pipeline helps this queue in time; one is still added for it."""
    short = queue - deadline_s * have
    if short <= 0:
        return 0
    if init_s >= deadline_s or mu_new <= 0:
        return 1
    return math.ceil(short / ((deadline_s - init_s) * mu_new))


class FlexPipePolicy:
    name = "flexpipe"

    def __init__(self, params: FlexPipeParams) -> None:
        self.p = params
        self.notes: list[str] = []
        self._models: dict[str, _ModelState] = {}
        self._hosted: dict[tuple[str, int], float] = {}  # (model, server) -> last time it hosted the model
        self._last_refactor: dict[int, float] = {}
        self._kv_at: dict[tuple[str, tuple[int, ...]], int] = {}  # (model, GPUs) -> KV tokens per stage placed
        # could_fit's answers while the GPUs' views stay the same objects (the backend rebuilds a
        # GPU's view only when its ledger changes): a refactor that finds no room is tried again
        # every tick, with the same question
        self._fits: dict[tuple, bool] = {}
        self._fits_gpus: tuple = ()
        self._hosting: list[tuple[str, int]] = []  # (model, server) of every stage, as of _hosting_gpus
        self._hosting_gpus: tuple | None = None

    def decide(self, view: ClusterView) -> list[Action]:
        if self._hosting_gpus is not view.gpus:  # (the backend gives the same tuple while no ledger changed)
            self._hosting = [(m, g.server) for g in view.gpus for m in g.models]
            self._hosting_gpus = view.gpus
        hosted, now = self._hosted, view.now
        for key in self._hosting:
            hosted[key] = now
        actions: list[Action] = []
        taken: set[int] = set()
        wants: list[_Want] = []
        for name in sorted(view.models):
            mv = view.models[name]
            st = self._models.get(name)
            if st is None:
                st = self._models[name] = _ModelState(mv, view, self.p)
            actions += self._decide_model(view, mv, st, taken, wants)
        return actions + self._launch(view, wants, taken)

    # --- one model ------------------------------------------------------------------------------
    def _decide_model(self, view: ClusterView, mv: ModelView, st: _ModelState, taken: set[int],
                      wants: list[_Want]) -> list[Action]:
        p = self.p
        g = st.chooser.update(mv.arrival_cv, mv.rate_slope, view.now)
        insts = [i for i in view.instances_of(mv.name) if i.state != "draining"]
        cap = {i.id: st.capacity(len(i.gpus), self._kv_at.get((mv.name, i.gpus))) for i in insts}
        have = sum(cap.values())
        floor = p.always_ready * mv.peak_rate  # 30% of peak capacity, in req/s
        required = max(floor, p.headroom * mv.arrival_rate)
        ready = [i for i in insts if i.state == "ready"]
        serving = [i for i in insts if i.state in ("ready", "refactoring")]  # a refactoring pipeline still serves
        loading = any(i.state == "loading" for i in insts)
        depth = g.stages
        if mv.queued:  # Eq. 11: bursty and backed up -> finer scale-out pipelines (faster to load)
            eq11 = scale_depth(max(st.by_depth), mv.arrival_cv, mv.queued, p.q_max, p.scale_beta, p.scale_gamma)
            depth = max(depth, max((d for d in st.by_depth if d <= eq11), default=depth))
            if not insts:
                required = max(required, st.mu[depth] / 2)  # requests wait: at least one pipeline
        serve_cap = sum(cap[i.id] for i in serving)
        if not loading and not slo_ok(mv.ttft_slo_s, 0.0, [serve_cap], mv.queued, 1.0):
            # Eq. 12: the queue would not clear within the SLO; new pipelines serve after their
            # initialisation. Not while one is still loading (its capacity is on its way).
            n = eq12_new(mv.ttft_slo_s, self._init_s(view, mv, st, depth), serve_cap, st.mu[depth], mv.queued)
            required = max(required, have + min(n, p.scale_step) * st.mu[depth])
        reqs = st.required
        while reqs and reqs[-1][1] <= required:
            reqs.pop()  # below this tick's value and older: never the window's largest again
        reqs.append((view.now, required))
        while reqs[0][0] < view.now - p.reclaim_s:
            reqs.popleft()
        acts: list[Action] = []
        if required - have > 1e-9:
            st.excess_since = None
            wants.append(_Want(mv, st, depth, required - have, max(0.0, floor - have)))
        else:
            # reclaim capacity idle for reclaim_s: above every requirement of the whole window
            peak_req = reqs[0][1]
            victims, left = [], have
            for i in sorted(ready, key=lambda i: (i.running + i.queued, -i.id)):
                if left - cap[i.id] >= peak_req - 1e-9:
                    victims.append(i)
                    left -= cap[i.id]
            if not victims:
                st.excess_since = None
            elif st.excess_since is None:
                st.excess_since = view.now
            elif view.now - st.excess_since >= p.reclaim_s:
                acts += [Retire(v.id) for v in victims]
                st.excess_since = None
        if p.refactor and not acts:
            # Eq. 5: M(g) replicas at the chosen granularity; refactor only until that many
            # pipelines have it (deepening every replica would multiply its GPUs by the depth).
            m_g = max(1, math.ceil(required / st.mu[g.stages]))
            at_depth = sum(len(i.gpus) == g.stages or i.state == "refactoring" for i in insts)  # each once
            if at_depth < m_g:
                acts += self._refactor_one(view, mv, st, ready, g.stages, taken)
        return acts

    def _init_s(self, view: ClusterView, mv: ModelView, st: _ModelState, depth: int) -> float:
        """S_j of Eq. 12: seconds until a new pipeline of `depth` stages serves (parallel stage
        loads; host-cache hit anywhere: PCIe only, else storage first)."""
        cached = set().union(*view.host_cached.values()) if view.host_cached else set()
        pcie = mv.cost.host_to_gpu_bytes_per_s(view.gpu_kind)
        worst = 0.0
        for f, e in st.ranges[depth]:
            nbytes = mv.spec.stage_weight_bytes(f, e)
            t = nbytes / pcie
            if (mv.name, f, e) not in cached and view.storage_bytes_per_s > 0:
                t += nbytes / view.storage_bytes_per_s
            worst = max(worst, t)
        return worst

    def _refactor_one(self, view, mv, st, ready, depth: int, taken: set[int]) -> list[Action]:
        new = st.ranges[depth]
        for inst in sorted(ready, key=lambda i: (-abs(len(i.gpus) - depth), i.id)):
            if len(inst.gpus) == depth:
                continue
            if view.now - self._last_refactor.get(inst.id, -1e18) < self.p.refactor_cooldown_s:
                continue
            # Fig. 6: a stage whose GPU holds all the layers of a new stage stays there (it keeps
            # that subset, no reload); only the other new stages need GPUs.
            fixed: dict[int, int] = {}
            for k, (f, e) in enumerate(new):
                for gpu, (of, oe) in zip(inst.gpus, inst.layer_ranges):
                    if of <= f and e <= oe and gpu not in fixed.values():
                        fixed[k] = gpu
                        break
            launch = self._place(view, mv, new, taken, st, fixed)
            if launch is None:
                return []
            self._last_refactor[inst.id] = view.now
            return [Refactor(inst.id, launch.stages)]  # one per decision: refactors cost GPUs for a while
        return []

    # --- launches across models (Eq. 6) ---------------------------------------------------------
    def _launch(self, view: ClusterView, wants: list[_Want], taken: set[int]) -> list[Action]:
        """Greedy Eq. 6: the always-ready floors first (largest model first: bin packing); then, one
        pipeline at a time, the model whose next pipeline adds the most useful throughput (capped at
        its deficit) per GB it occupies."""

        def value(w: _Want) -> tuple[bool, float]:
            # m_j: with stage_kv "all" a stage takes its whole GPU; "sized": weights + the sized KV
            # (every stage holds its L/S layers of all the pipeline's tokens: kv_tokens x L in all)
            spec = w.mv.spec
            if self.p.stage_kv == "all":
                nbytes = w.depth * view.gpu_kind.memory_bytes * view.engine.gpu_memory_utilization
            else:
                nbytes = spec.total_bytes + w.st.kv_tokens[w.depth] * spec.kv_bytes_per_token_layer * spec.num_layers
            floor = w.floor_deficit > 1e-9
            if self.p.launch_order == "largest" or floor:
                # the always-ready floors are packed first-fit decreasing: their big stages need
                # the big fragments, which the small models' pipelines would otherwise take
                return floor, float(spec.total_bytes)
            return False, min(w.st.mu[w.depth], w.deficit) / (nbytes / 1e9)

        acts: list[Action] = []
        pending = list(wants)
        while pending:
            w = max(pending, key=lambda w: (*value(w), w.mv.name))
            # where the chosen depth finds no room, finer stages may still fit the fragments
            launch = next((lc for d in sorted(w.st.ranges) if d >= w.depth
                           if (lc := self._place(view, w.mv, w.st.ranges[d], taken, w.st)) is not None), None)
            if launch is None:
                self._note(f"flexpipe: no room for another {w.mv.name} pipeline of {w.depth} or more stages")
                pending.remove(w)
                continue
            acts.append(launch)
            mu = w.st.capacity(len(launch.stages), self._kv_at.get((w.mv.name, tuple(s.gpu for s in launch.stages))))
            w.deficit -= mu
            w.floor_deficit -= mu
            if w.deficit <= 1e-9:
                pending.remove(w)
        return acts

    # --- placement ------------------------------------------------------------------------------
    def _scores(self, view: ClusterView, mv: ModelView, taken: set[int]) -> dict[int, float] | None:
        if not self.p.use_affinity:
            return None
        free: dict[int, int] = {}
        for g in view.gpus:
            if not g.models and g.id not in taken:
                free[g.server] = free.get(g.server, 0) + 1
        # §7: "avoiding paths with recent scaling activities": a server whose GPUs are still loading
        # weights has its PCIe and NIC busy, so each loading stage there costs `w_busy`.
        by_id = {g.id: g for g in view.gpus}
        loading: dict[int, int] = {}
        for inst in view.instances:
            if inst.state in ("loading", "refactoring"):
                for gid in inst.gpus:
                    loading[by_id[gid].server] = loading.get(by_id[gid].server, 0) + 1
        return {s: affinity(view.now, self._hosted.get((mv.name, s)), free.get(s, 0), self.p.w_t, self.p.w_g,
                            self.p.affinity_decay) - self.p.w_busy * loading.get(s, 0) for s in {g.server for g in view.gpus}}

    def _place(self, view: ClusterView, mv: ModelView, ranges, taken: set[int], st: _ModelState,
               fixed: dict[int, int] | None = None) -> Launch | None:
        p = self.p
        gamma = p.gamma0 * (1 + p.mux_alpha * mv.arrival_cv ** 2)  # Eq. 9
        # A stage must hold the KV of its sized batch or, where no GPU set has that much, the
        # largest KV that fits, down to `min_kv_share` of it (§5: fit stages into free memory).
        banned: set[int] = set()
        scores: list[dict[int, float] | None] = []  # the affinity scores, once a placement can fit

        if self._fits_gpus != view.gpus:  # (identical views compare in a pointer test each)
            self._fits.clear()
            self._fits_gpus = view.gpus
        fits, fixed_key = self._fits, tuple(fixed.items()) if fixed else ()

        def place(kv_tokens: int, promised: set[int]) -> Launch | None:
            key = (mv.name, tuple(ranges), frozenset(promised | banned), kv_tokens, fixed_key)
            ok = fits.get(key)
            if ok is None:
                ok = fits[key] = could_fit(view, mv.name, ranges, promised | banned, kv_tokens, fixed)
            if not ok:
                return None
            if not scores:
                scores.append(self._scores(view, mv, taken))
            return place_pipeline(view, mv.name, ranges, promised | banned, kv_tokens, scores[0], p.topology, 0,
                                  p.balance, gamma, fixed)

        want = st.kv_tokens[len(ranges)]
        for _ in range(len(ranges) + 1):
            kv = want
            if place(want, set(taken)) is None:
                lo, hi = max(mv.spec.max_context, int(p.min_kv_share * want)), want
                if place(lo, set(taken)) is None:
                    return None
                while hi - lo > max(1, want // 64):  # invariant: lo fits, hi does not
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if place(mid, set(taken)) is None else (mid, hi)
                kv = lo
            launch = place(kv, set(taken))
            if launch is None:
                return None
            if p.balance and not fixed:
                balanced, kv = self._balance(view, mv, st, launch, kv, max(mv.spec.max_context, int(p.min_kv_share * want)))
            else:
                balanced = launch
            if balanced is not None:
                break
            # Eq. 8 violated even with Eq. 2's rebalancing: drop the slowest GPU and try again
            by_id = {g.id: g for g in view.gpus}
            banned.add(max((s.gpu for s in launch.stages), key=lambda i: (by_id[i].tenant_sm_frac, i)))
        else:
            return None
        taken.update(s.gpu for s in balanced.stages if not fixed or s.gpu not in fixed.values())
        self._kv_at[(mv.name, tuple(s.gpu for s in balanced.stages))] = kv  # its capacity follows its KV
        # "all": like vLLM, a stage then takes the KV its GPU's free memory allows; "sized": it
        # reserves only the amount checked above, leaving room to co-locate other stages.
        return Launch(balanced.model, balanced.stages, kv if p.stage_kv == "sized" else None)

    def _balance(self, view: ClusterView, mv: ModelView, st: _ModelState, launch: Launch, kv: int,
                 kv_floor: int) -> tuple[Launch | None, int]:
        """Eq. 2 re-run with the chosen GPUs' speeds (a slow GPU gets fewer layers), then Eq. 8:
        None if the stage times still differ by more than `balance_eps`. A stage that gains layers
        needs more KV bytes for the same tokens: the cut must hold at least `kv_floor` tokens per
        stage; returned with the KV tokens every stage of it holds (at most `kv`)."""
        by_id = {g.id: g for g in view.gpus}
        gpus = [by_id[s.gpu] for s in launch.stages]
        speeds = [slowdown(g.tenant_sm_frac, mv.cost.roofline) for g in gpus]
        cuts = [(s.first_layer, s.end_layer) for s in launch.stages]
        if max(speeds) > min(speeds):
            eng, spec = view.engine, mv.spec
            mem = [float(spec.layer_bytes + kv_floor * spec.kv_bytes_per_token_layer)] * spec.num_layers
            limits = [usable_bytes(g.free_bytes, eng) - eng.workspace_bytes for g in gpus]
            limits[0] -= spec.embedding_bytes  # the embedding on the first stage, the LM head on the last
            limits[-1] -= spec.embedding_bytes
            try:
                # compute only: Eq. 2's s_p/B (36 ms a 7B layer over RDMA against 1.6 ms of compute)
                # is a one-off load, the same on every GPU; Eq. 8 bounds serving throughput
                new = rebalance(st.t_c, [0.0] * len(st.t_c), speeds, st.link.bytes_per_s, mem=mem, limits=limits)
                if new != cuts:  # the KV every stage of the new cut can hold, up to the sized amount
                    kv = min([kv] + [int((lim - spec.layer_bytes * (e - f)) // (spec.kv_bytes_per_token_layer * (e - f)))
                                     for lim, (f, e) in zip(limits, new)])
                    cuts = new
            except ValueError:
                pass  # no rebalanced cut fits: keep the even one and let Eq. 8 judge it
        times = stage_times(st.t_c, cuts, speeds)
        if max(times) > (1 + self.p.balance_eps) * min(times):
            return None, kv
        return Launch(launch.model, tuple(StagePlan(f, e, g.id) for (f, e), g in zip(cuts, gpus))), kv

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
