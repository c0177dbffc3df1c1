"""Build a simulation from a Scenario, run it, and return the raw records.

Processes (one generator each): the workload feeder, the controller (asks the policy every
control interval and applies its actions), the monitor (samples queues and GPUs, expires stale
requests), and per instance one process per micro-batch slot. Randomness: one SeedSequence from
the scenario seed, spawned into independent streams for the cluster, the workload and the policy.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import simpy

from ..cluster import GPU, Cluster, HostCache, build_cluster
from ..costmodel import CostModel, LoadRates, ProfileCostModel
from ..hardware import LinkKind
from ..policies import registry
from flexpipe_core.policyapi import ClusterView, EngineLimits, GPUView, InstanceView, ModelView
from ..feasibility import GIB, describe_need, min_stage_bytes
from ..scenario import Scenario, ScenarioError
from ..workload import Workload, build_workload
from .gateway import Gateway
from flexpipe_core.request import Request
from ..records import RequestRecords
from .transitions import Transitions

_add_reduce = np.add.reduce
SLOPE_Z = 3.0  # constant: a 3-sigma difference between the stats window's halves counts as a trend

ProgressFn = Callable[[float, int], None]  # (simulated seconds, requests done)


@dataclass
class RawResults:
    scenario: Scenario
    requests: RequestRecords  # one record per request of the workload (records.py)
    samples: dict[str, list[float]]
    launches: list[dict]
    rejected: list[dict]
    notes: list[str]
    end_s: float
    wall_s: float
    cluster: Cluster
    decide_wall_s: list[float] = field(default_factory=list)
    cost_models: dict[str, str] = field(default_factory=dict)
    refactors: list[dict] = field(default_factory=list)
    interrupted: bool = False  # stopped early by KeyboardInterrupt (Ctrl-C): the results are partial
    warnings: list[str] = field(default_factory=list)  # changes to the input (run_info.json, not the summary)


class Simulation:
    def __init__(self, sc: Scenario, cost_models: dict[str, CostModel] | None = None,
                 records: RequestRecords | None = None) -> None:
        self.sc = sc
        seeds = np.random.SeedSequence(sc.seed).spawn(3)
        rng_cluster, rng_workload, _rng_policy = (np.random.default_rng(s) for s in seeds)
        c = sc.cluster
        self.cluster = build_cluster(
            servers=c.servers, gpus=c.gpus, gpu_kind=c.gpu, racks=c.racks, rdma_fraction=c.rdma_fraction,
            host_memory_bytes=int(c.host_memory_gb * 1e9), host_cache_fraction=c.host_cache_fraction,
            intra_link=LinkKind(c.intra_server_link), network_gbps=c.network_gbps, tenant_scale=c.tenant_scale,
            rng=rng_cluster,
        )
        self.workload: Workload = build_workload(sc, rng_workload)
        self.specs = {m.name: m.spec() for m in sc.models}
        self._check_fits()
        self.costs = cost_models or self._cost_models()
        self.env = simpy.Environment()
        # A request is a Python object only while in flight (`_live`, by id); when it ends its fields
        # go to `records` (numpy chunks streamed to Parquet) and nothing here keeps it.
        self.records = records if records is not None else RequestRecords()
        self._live: dict[int, Request] = {}
        self.n_released = 0
        self.n_done = 0
        self.all_done = self.env.event()
        self.gateway = Gateway(list(self.specs), self._drop)
        e = sc.engine
        self.transitions = Transitions(
            self.env, self.cluster, self.specs, self.costs, self.gateway, self._finish,
            block_size=e.block_size, token_budget=e.token_budget, max_seqs=e.max_seqs,
            gpu_memory_utilization=e.gpu_memory_utilization, workspace_bytes=int(e.workspace_gb * 2**30),
            expected_output={n: self.workload.mean_output_of(i) for i, n in enumerate(self.workload.model_names)},
            prewarm=e.prewarm, fast_forward=e.fast_forward, compiled=e.compiled, horizon=self._horizon,
            finish_ahead=self._may_finish_ahead,
            load_rates=LoadRates(c.storage_gb_s * 1e9, c.cluster_storage_gb_s * 1e9, c.gpus_per_pcie_uplink),
        )
        self.policy = registry.create(sc.policy.name, sc.policy.params, sc)
        self.samples: dict[str, list[float]] = {
            k: [] for k in ("time_s", "gpus_allocated", "busy_gpu_s", "interference_gpu_s", "gateway_queue",
                            "instance_queue", "running", "done")
        }
        self.decide_wall_s: list[float] = []
        self._gpu_views: dict[int, tuple[int, GPUView]] = {}
        self._gpus: tuple[GPUView, ...] | None = None  # the last view's GPUs, as of GPU.changes
        self._gpus_at = -1
        self._cached: dict[int, frozenset] = {}  # the last view's host caches, as of HostCache.changes
        self._cached_at = -1
        self._inst_views: dict[int, tuple[list, InstanceView]] = {}  # id -> (its stages, last view)
        self._model_views_static = self._static_model_facts()
        self.gateway.typical_prompt = {m: f[1] for m, f in self._model_views_static.items() if f[1] > 0}
        self._released_of: dict[str, int] = {m: 0 for m in self.specs}  # arrivals released so far, per model
        # run-ahead horizon (engine/runahead.py): each model's arrival times, the next ticks, the end
        w = self.workload
        # each model's arrival times, sorted (the horizon's next arrival; the policy view's recent window)
        self._arrivals_np = {name: w.arrival_s[w.model_idx == i].astype(float) for i, name in enumerate(w.model_names)}
        self._arrivals_of = {name: a.tolist() for name, a in self._arrivals_np.items()}
        self._next_control = self._next_sample = 0.0
        self._limit = sc.horizon_s + sc.drain_s

    def _check_fits(self) -> None:
        """Refuse before simulating a model no GPU of this cluster can hold once other tenants took
        their memory (every request of it would be dropped): the scenario check saw only empty GPUs."""
        e = self.sc.engine
        best = max(self.cluster.gpus, key=lambda g: g.free_bytes)
        usable = best.free_bytes * e.gpu_memory_utilization
        for name, spec in self.specs.items():
            need = min_stage_bytes(spec, e.block_size, e.workspace_gb * GIB)
            if need > usable:
                raise ScenarioError(
                    f"{self.sc.name}: {name} fits no GPU of this cluster: {describe_need(spec, need)}; the GPU with "
                    f"the most free memory after other tenants (cluster.tenant_scale {self.sc.cluster.tenant_scale:g}, "
                    f"seed {self.sc.seed}) offers {usable / GIB:,.1f} GiB ({best.free_bytes / GIB:,.1f} GiB free x "
                    f"engine.gpu_memory_utilization {e.gpu_memory_utilization:g})")

    def _cost_models(self) -> dict[str, CostModel]:
        """Per model: its `cost.profiles` entry, else `cost.engine` (eager: the H100-anchored roofline;
        paged: Vidur's A100 profile for a Llama-2-7B shape, the roofline fitted to it otherwise)."""
        from ..profiles import SHAPE_KEYS, ProfileError, load_profile

        costs: dict[str, CostModel] = {}
        paged = self.sc.cost.engine == "paged"
        if paged:
            from .. import vidur

            vprof = vidur.shipped_profile()  # shape and fit; each model below gets its own copy (own counters)
            vroof = vidur.roofline_from_fit(vprof.raw["roofline_fit"])
        for name, spec in self.specs.items():
            path = self.sc.cost.profiles.get(name)
            if path is None:
                if not paged:
                    costs[name] = CostModel(spec)
                elif all(int(vprof.model[k]) == int(getattr(spec, k)) for k in SHAPE_KEYS):
                    costs[name] = ProfileCostModel(spec, vidur.shipped_profile(), vroof)
                else:
                    costs[name] = CostModel(spec, vroof)
                continue
            prof = load_profile(path)
            if prof.gpu_kind != self.sc.cluster.gpu:
                raise ProfileError(
                    f"{path}: profile is for {prof.gpu_kind}, the cluster's GPUs are {self.sc.cluster.gpu}; derive one "
                    f"with: flexpipe-sim calibrate --derive {path} --gpu {self.sc.cluster.gpu}")
            costs[name] = ProfileCostModel(spec, prof)
        return costs

    # --- bookkeeping -----------------------------------------------------------------------
    def _count_done(self) -> None:
        self.n_done += 1
        if self.n_done == len(self.workload) and not self.all_done.triggered:
            self.all_done.succeed()

    def _finish(self, r: Request) -> None:
        del self._live[r.id]
        self.records.add(r)
        self._count_done()

    def _may_finish_ahead(self, n: int) -> bool:
        """Whether a run-ahead may finish n requests before their time (engine/runahead.py): not
        the run's last ones, whose finish ends the run at the time it is accounted."""
        return self.n_done + n < len(self.workload)

    def _drop(self, r: Request, reason: str) -> None:
        r.drop_reason = reason
        del self._live[r.id]
        self.records.add(r)
        self._count_done()

    # --- processes ---------------------------------------------------------------------------
    def _horizon(self, inst, now: float, arrivals: bool = True) -> float:
        """The earliest time at or after `now` when anything outside `inst` may touch or read it:
        an arrival of its model (routing), a controller or monitor tick, the end of the run, its
        refactor's next read (engine/refactor.py: a KV round's end, or the end of a load flow while
        its new stages load); now while a stage is loading onto one of its GPUs (it joins that
        GPU's timeline when ready, at a time nothing marks in advance). Instances run steady steps ahead up to it
        (engine/runahead.py); one that can take steps back past an arrival routed to it
        (Instance.settle) asks without arrivals."""
        model = inst.model
        if self.transitions.watch_switches or self.gateway.queues[model]:
            return now  # token watches poll instances every 0.5 ms; a queue goes out when one is ready
        joining = self.transitions.joining
        if joining and any(s.gpu in joining for s in inst.stages):  # (a GPU leaves it at count 0)
            return now
        h = self._limit
        if inst.refactoring:  # its refactor reads it (KV rounds) and pauses it at known times
            h = inst.refactor_next
            if h is None:  # its new stages load: done at a load flow's end at the earliest
                net = self.transitions.fabric.net  # (engine/loads.py next_at)
                if now <= inst.refactor_since or now <= net.changed_at:
                    return now  # its flows start, or flows ended now: the load may be done now
                h = net.next_at
        if arrivals:  # (without: the instance takes back what an arrival routed to it must not see)
            arr = self._arrivals_of[model]
            i = bisect_left(arr, now)
            released = self._released_of[model]
            if i < released:  # arrivals at now already routed (the one that woke this slot, say)
                i = released
            if i < len(arr) and arr[i] < h:
                h = arr[i]
        return min(h, self._next_control, self._next_sample, self._limit)

    def _feeder(self):
        w, env = self.workload, self.env
        names = w.model_names
        for i in range(len(w)):
            t = float(w.arrival_s[i])
            if t > env.now:
                yield env.timeout(t - env.now)
            r = Request(i, names[w.model_idx[i]], t, int(w.prompt_tokens[i]), int(w.output_tokens[i]))
            self._live[i] = r
            self.n_released = i + 1
            self._released_of[r.model] += 1
            self.gateway.arrive(r)

    def _controller(self):
        while True:
            t0 = time.perf_counter()
            actions = self.policy.decide(self.view())
            self.decide_wall_s.append(time.perf_counter() - t0)
            for a in actions:
                self.transitions.apply(a)
            self._next_control = self.env.now + self.sc.engine.control_interval_s
            yield self.env.timeout(self.sc.engine.control_interval_s)

    def _monitor(self, progress: ProgressFn | None):
        s, env = self.samples, self.env
        every = self.sc.outputs.sample_interval_s
        while True:
            self.gateway.expire(env.now, self.sc.engine.max_queue_wait_s)
            insts = list(self.transitions.instances.values())
            s["time_s"].append(env.now)
            s["gpus_allocated"].append(self.transitions.gpus_allocated)
            # own stage work, and apart from it the extra GPU time tenant interference cost
            totals = [i.busy_totals() for i in insts]
            s["busy_gpu_s"].append(self.transitions.retired_busy_s + sum(b for b, _ in totals))
            s["interference_gpu_s"].append(self.transitions.retired_interference_s + sum(x for _, x in totals))
            s["gateway_queue"].append(self.gateway.queued)
            s["instance_queue"].append(sum(len(i.waiting) for i in insts))
            s["running"].append(sum(i.running for i in insts))
            s["done"].append(self.n_done)
            if progress:
                progress(env.now, self.n_done)
            self._next_sample = env.now + every
            yield env.timeout(every)

    # --- the policy's view --------------------------------------------------------------------
    def _static_model_facts(self) -> dict[str, tuple[float, float, float, float, float]]:
        w = self.workload
        facts = {}
        for idx, name in enumerate(w.model_names):
            mask = w.model_idx == idx
            sub = Workload(w.arrival_s[mask], w.model_idx[mask], w.prompt_tokens[mask], w.output_tokens[mask],
                           w.model_names, w.mean_output_tokens)
            prompt = float(sub.prompt_tokens.mean()) if len(sub) else 0.0
            mean_rate = len(sub) / self.sc.horizon_s if self.sc.horizon_s > 0 else 0.0
            iat = np.diff(np.sort(sub.arrival_s))
            cv = float(iat.std() / iat.mean()) if len(iat) > 1 and iat.mean() > 0 else 0.0
            facts[name] = (sub.peak_rate(), prompt, w.mean_output_of(idx), mean_rate, cv)  # per model: kinds differ
        return facts

    def _arrival_stats(self, model: str) -> tuple[float, float, float]:
        """Rate, IAT CV and relative rate slope over the last stats window."""
        win = self.sc.engine.stats_window_s
        now, arr = self.env.now, self._arrivals_of[model]
        # the released arrivals at or after now - win: a slice of the model's sorted arrival times
        hi = self._released_of[model]
        lo = bisect_left(arr, now - win, 0, hi)
        n = hi - lo
        # Over the full window even while it fills: a rate from the first second alone would be
        # one burst's (policies scaled for it at t=1 s and kept the capacity for minutes).
        span = win
        rate = n / span
        if n < 3:
            return rate, 0.0, 0.0
        t = self._arrivals_np[model][lo:hi]
        # np.diff, ndarray.mean and ndarray.std (ddof 0) spelled out: the same float operations
        # (numpy's pairwise sum over the count; squared deviations from that mean), without
        # their per-call overheads (~50 us a tick per model; tests/test_arrival_stats.py)
        iat = t[1:] - t[:-1]
        m = n - 1
        mean = float(_add_reduce(iat)) / m
        if mean > 0:
            d = iat - mean
            cv = math.sqrt(float(_add_reduce(d * d)) / m) / mean
        else:
            cv = 0.0
        if now < win:  # the first window is still filling: no trend to speak of yet
            return rate, cv, 0.0
        half = now - span / 2
        late = hi - bisect_left(arr, half, lo, hi)  # (t >= half)
        early = n - late  # (t < half): the times are finite
        # A trend only when the halves differ beyond Poisson noise (|z| >= SLOPE_Z): at a few req/s
        # per model, a 15 s window's halves differ by ~0.07/s of relative slope by chance alone.
        z = (late - early) / math.sqrt(late + early)  # late + early = n >= 3
        slope = (late - early) / (span / 2) / max(rate, 1e-9) / (span / 2) if abs(z) >= SLOPE_Z else 0.0
        return rate, cv, float(slope)

    def _gpu_view(self, g) -> GPUView:
        """A GPU as policies see it, from its ledger (which includes stages still loading for a refactor)."""
        hosting: set[str] = set()
        shared: set[tuple[str, int, int]] = set()
        for owner in g.allocations:
            model, _, rest = owner.partition("/")
            hosting.add(model)
            if rest.startswith("weights/"):
                first, end = rest.removeprefix("weights/").split("-")
                shared.add((model, int(first), int(end)))
        return GPUView(g.id, g.server, g.rack, self.cluster.servers[g.server].rdma, g.capacity_bytes, g.free_bytes,
                       g.tenant_sm_frac, frozenset(hosting), frozenset(shared))

    def _instance_view(self, i) -> InstanceView:
        """An instance as policies see it; the last one given while nothing in it changed (views
        are immutable; a controller tick asks for every instance)."""
        state = "refactoring" if i.refactoring else i.state
        queued, running = len(i.waiting), i.running
        v = self._inst_views.get(i.id)
        if v is None or v[0] is not i.stages or v[1].state != state or v[1].queued != queued or v[1].running != running:
            st = i.stages
            v = self._inst_views[i.id] = (st, InstanceView(i.id, i.model, state, tuple(s.gpu for s in st),
                                                           tuple((s.first_layer, s.end_layer) for s in st),
                                                           queued, running))
        return v[1]

    def view(self) -> ClusterView:
        cl = self.cluster
        # GPU views are rebuilt only for GPUs whose ledger changed (1,000-GPU clusters, every
        # second), the tuple only when some GPU's did (the same tuple: policies may cache by it)
        gpus = self._gpus
        if gpus is None or self._gpus_at != GPU.changes:
            cache = self._gpu_views
            views = []
            for g in cl.gpus:
                c = cache.get(g.id)
                if c is None or c[0] != g.version:
                    c = cache[g.id] = (g.version, self._gpu_view(g))
                views.append(c[1])
            gpus = self._gpus = tuple(views)
            self._gpus_at = GPU.changes
        instances = tuple(self._instance_view(i) for i in self.transitions.instances.values())
        models = {}
        queued: dict[str, int] = {m: len(q) for m, q in self.gateway.queues.items()}
        for i in self.transitions.instances.values():
            queued[i.model] += len(i.waiting)
        for m in self.sc.models:
            peak, prompt, output, mean_rate, hist_cv = self._model_views_static[m.name]
            rate, cv, slope = self._arrival_stats(m.name)
            models[m.name] = ModelView(m.name, self.specs[m.name], self.costs[m.name], m.slo.ttft_s, m.slo.tpot_s,
                                       len(self.gateway.queues[m.name]), peak, prompt, output, rate, cv, slope,
                                       queued[m.name], mean_rate, hist_cv)
        e = self.sc.engine
        limits = EngineLimits(e.block_size, e.token_budget, e.max_seqs, e.gpu_memory_utilization,
                              int(e.workspace_gb * 2**30))
        if self._cached_at != HostCache.changes:
            self._cached = {s.id: s.host_cache.keys() for s in cl.servers}
            self._cached_at = HostCache.changes
        cached = self._cached
        return ClusterView(self.env.now, gpus, instances, models, limits, cl.gpus[0].spec, cached,
                           self.transitions.load_rates.storage_bytes_per_s)

    # --- run -----------------------------------------------------------------------------------
    def run(self, progress: ProgressFn | None = None) -> RawResults:
        t0 = time.perf_counter()
        env = self.env
        env.process(self._controller())
        env.process(self._feeder())
        env.process(self._monitor(progress))
        limit = self.sc.horizon_s + self.sc.drain_s
        end = env.any_of([self.all_done, env.timeout(limit)]) if len(self.workload) else env.timeout(0)
        interrupted = False
        try:
            env.run(until=end)
        except KeyboardInterrupt:  # Ctrl-C (raised at a clean point by runner.sigint_at_progress): keep what ran
            interrupted = True
        end_s = env.now if interrupted else max(env.now, self.sc.horizon_s)
        for r in self._live.values():
            r.drop_reason = "interrupted (run stopped early)" if interrupted else "unfinished at end of drain"
        for inst in self.transitions.instances.values():
            inst.abort_all()  # the run is over: in-flight requests give their KV back (and their fields settle)
        for i in sorted(self._live):
            self.records.add(self._live[i])
        self._live.clear()
        # Requests the feeder never released (only if the run stopped early) are accounted too.
        w = self.workload
        for i in range(self.n_released, len(w)):
            self.records.add(Request(i, w.model_names[w.model_idx[i]], float(w.arrival_s[i]), int(w.prompt_tokens[i]),
                                     int(w.output_tokens[i]), drop_reason="never released (run stopped)"))
        assert len(self.records) == len(w), f"{len(self.records)} records for {len(w)} requests"
        for g in self.cluster.gpus:
            assert g.used_bytes <= g.capacity_bytes, f"GPU {g.id} over-committed"
        if progress and not interrupted:
            progress(end_s, len(self.records))
        notes = list(getattr(self.policy, "notes", []))
        for name, cost in self.costs.items():
            prof = getattr(cost, "profile", None)
            if prof is not None and prof.extrapolations:
                notes.append(f"{name}: {prof.extrapolations:,} stage-time lookups fell outside {prof.name}'s grid "
                             "(fitted roofline used)")
        return RawResults(self.sc, self.records, self.samples, self.transitions.launches,
                          self.transitions.rejected, notes, end_s, time.perf_counter() - t0, self.cluster,
                          self.decide_wall_s, {n: c.describe() for n, c in self.costs.items()},
                          self.transitions.refactors, interrupted, list(self.workload.warnings))
