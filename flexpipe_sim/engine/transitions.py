"""Carrying out policy actions with their costs: launch (allocate GPU memory, load weights), retire.

Loading tiers (DESIGN.md): a stage whose layer range is in its server's host cache loads over
pinned PCIe only (warm start); otherwise it reads from storage first (cold start). Stages load in
parallel; the instance serves when its slowest stage is loaded. Concurrent loads share server
storage, the cluster's storage and the servers' PCIe uplinks (engine/loads.py). With `engine.prewarm`, the launches
of the first control step are ready at t=0 (always-on capacity exists before the trace starts).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import simpy

from ..cluster import Cluster
from ..costmodel import CostModel, LoadRates, PipelineCost, StageShape, slowdown
from ..models import ModelSpec
from flexpipe_core.policyapi import Launch, Refactor, Retire, StagePlan
from .gateway import Gateway
from .gputime import GpuTimeline
from .loads import LoadFabric
from .instance import Instance, StageInfo
from flexpipe_core.request import Request


@dataclass
class Transitions:
    env: simpy.Environment
    cluster: Cluster
    specs: dict[str, ModelSpec]
    costs: dict[str, CostModel]
    gateway: Gateway
    on_finish: Callable[[Request], None]
    block_size: int
    token_budget: int
    max_seqs: int
    gpu_memory_utilization: float
    workspace_bytes: int
    expected_output: dict[str, float]  # model -> mean output tokens (an operator's history; kinds differ 50-200x)
    prewarm: bool
    load_rates: LoadRates = field(default_factory=LoadRates)
    fast_forward: bool = False  # steady decode steps in O(what changed) (engine/fastbatch.py)
    compiled: bool = False  # run-ahead windows in the numba loop (engine/stepkernel.py)
    horizon: Callable[[Instance, float, bool], float] | None = None  # run-ahead bound (engine/runahead.py), from the backend
    finish_ahead: Callable[[int], bool] | None = None  # may a run-ahead finish this many requests (engine/runahead.py)
    joining: Counter[int] = field(default_factory=Counter)  # GPU -> stages loading onto it (launches, refactors)
    watch_switches: bool = False  # record token times around refactors (heterosim; turns run-ahead off)
    instances: dict[int, Instance] = field(default_factory=dict)
    launches: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    refactors: list[dict] = field(default_factory=list)
    retired_busy_s: float = 0.0  # busy GPU-seconds of instances already retired (own work)
    retired_interference_s: float = 0.0  # and the extra GPU-seconds tenant interference added
    gpu_stages: dict[int, int] = field(default_factory=dict)  # GPU id -> our stages on it
    gpu_time: GpuTimeline = field(default_factory=GpuTimeline)  # stage steps booked per GPU (shared by co-located stages)
    weight_refs: dict[tuple[int, str], int] = field(default_factory=dict)  # (GPU, shared weights entry) -> users
    weights_ready: dict[tuple[int, str], simpy.Event] = field(default_factory=dict)  # fires when a shared copy is loaded
    _fabric: LoadFabric | None = None
    _reading: dict[tuple[int, tuple[str, int, int]], simpy.Event] = field(default_factory=dict)  # host-cache fills under way
    _ids: itertools.count = field(default_factory=itertools.count)

    @property
    def gpus_allocated(self) -> int:
        return len(self.gpu_stages)

    def joined(self, gpus: Iterable[int]) -> None:
        """Stages that were loading onto these GPUs now run there. A GPU leaves `joining` when its
        count reaches 0, so an empty `joining` says at once that no stage is on its way anywhere."""
        j = self.joining
        for g in gpus:
            j[g] -= 1
            if not j[g]:
                del j[g]

    def apply(self, action: Launch | Retire | Refactor) -> None:
        if isinstance(action, Launch):
            self.launch(action)
        elif isinstance(action, Retire):
            self.retire(action.instance_id)
        elif isinstance(action, Refactor):
            self.refactor(action)
        else:
            raise TypeError(f"unknown action {action!r}")

    def _reject(self, action: object, reason: str) -> None:
        self.rejected.append({"time_s": self.env.now, "action": repr(action), "reason": reason})

    @staticmethod
    def weights_key(model: str, first: int, end: int) -> str:
        return f"{model}/weights/{first}-{end}"

    def _check(self, model: str, stages: tuple[StagePlan, ...], spec: ModelSpec,
               own: dict[int, StageInfo] | None = None, share: bool = False) -> str | None:
        """Plan sanity; `own`: the refactored instance's stages, whose GPUs a stage may keep with the
        same layers or a subset of them (Fig. 6: the stage that stays)."""
        gpus = [p.gpu for p in stages]
        if len(set(gpus)) != len(gpus):
            return "two stages of one model on one GPU"
        if stages[0].first_layer != 0 or stages[-1].end_layer != spec.num_layers:
            return "stages do not cover the model"
        if any(p.end_layer != q.first_layer or p.first_layer >= p.end_layer for p, q in zip(stages, stages[1:])):
            return "stages are not contiguous"
        for p in stages:
            if not 0 <= p.gpu < len(self.cluster.gpus):
                return f"no GPU {p.gpu}"
            o = own.get(p.gpu) if own is not None else None
            kept = o is not None and ((o.first_layer, o.end_layer) == (p.first_layer, p.end_layer) or (
                o.weights is None and o.first_layer <= p.first_layer and p.end_layer <= o.end_layer))
            allocs = self.cluster.gpus[p.gpu].allocations
            mapped = share and self.weights_key(model, p.first_layer, p.end_layer) in allocs
            if not kept and not mapped and any(o.startswith(f"{model}/") for o in allocs):
                return f"GPU {p.gpu} already holds a stage of {model}"
        return None

    def _alloc_stages(self, model: str, iid: int, stages: tuple[StagePlan, ...],
                      own: dict[int, StageInfo] | None = None, kv_tokens: int | None = None,
                      share: bool = False) -> list[StageInfo] | str:
        """GPU memory for each stage: weights (own copy, or a shared copy mapped by reference),
        workspace, and KV (`kv_tokens` tokens if given, else what is left within
        gpu_memory_utilization of the free memory); unchanged own stages are reused. All or nothing."""
        spec = self.specs[model]
        infos: list[StageInfo] = []
        fresh: list[StageInfo] = []

        def undo(reason: str) -> str:
            for s in fresh:
                self.free_stage(model, iid, s)
            return reason

        for p in stages:
            o = own.get(p.gpu) if own is not None else None
            if o is not None and (o.first_layer, o.end_layer) == (p.first_layer, p.end_layer):
                infos.append(o)
                continue
            if o is not None and o.weights is None and o.first_layer <= p.first_layer and p.end_layer <= o.end_layer:
                # Fig. 6: the stage stays and keeps a subset of its layers: no load, same memory
                # allocation; the dropped layers' weights become KV room at the switch (refactor.py).
                n_layers = p.end_layer - p.first_layer
                kept_bytes = o.alloc_bytes - spec.stage_weight_bytes(p.first_layer, p.end_layer) - self.workspace_bytes
                blocks = kept_bytes // (self.block_size * spec.kv_bytes_per_token_layer * n_layers)
                infos.append(StageInfo(p.gpu, p.first_layer, p.end_layer, int(blocks), o.alloc_bytes, o.weights))
                continue
            g = self.cluster.gpus[p.gpu]
            n_layers = p.end_layer - p.first_layer
            per_block = self.block_size * spec.kv_bytes_per_token_layer * n_layers
            weight_bytes = spec.stage_weight_bytes(p.first_layer, p.end_layer)
            wkey = self.weights_key(model, p.first_layer, p.end_layer) if share else None
            mapped = wkey is not None and wkey in g.allocations
            fixed = (0 if mapped else weight_bytes) + self.workspace_bytes
            usable = int(g.free_bytes * self.gpu_memory_utilization)
            if kv_tokens is None:
                alloc = usable
                blocks = (alloc - fixed) // per_block
            else:
                blocks = -(-max(kv_tokens, spec.max_context) // self.block_size)
                alloc = fixed + blocks * per_block
                if alloc > usable:
                    return undo(f"GPU {p.gpu}: not enough free memory for stage layers {p.first_layer}-{p.end_layer} "
                                f"with {kv_tokens} KV tokens")
            if blocks * self.block_size < spec.max_context:
                return undo(f"GPU {p.gpu}: not enough free memory for stage layers {p.first_layer}-{p.end_layer}")
            if wkey is not None:
                if not mapped:
                    g.allocate(wkey, weight_bytes)
                self.weight_refs[(p.gpu, wkey)] = self.weight_refs.get((p.gpu, wkey), 0) + 1
            g.allocate(f"{model}/{iid}", alloc - (0 if wkey is None else fixed - self.workspace_bytes))
            self.gpu_stages[p.gpu] = self.gpu_stages.get(p.gpu, 0) + 1
            info = StageInfo(p.gpu, p.first_layer, p.end_layer, int(blocks), alloc, wkey)
            fresh.append(info)
            infos.append(info)
        return infos

    def pipeline_cost(self, model: str, infos: list[StageInfo]) -> PipelineCost:
        spec, cost = self.specs[model], self.costs[model]
        shapes = [
            StageShape(s.end_layer - s.first_layer, s.first_layer == 0, s.end_layer == spec.num_layers,
                       self.cluster.gpus[s.gpu].spec, slowdown(self.cluster.gpus[s.gpu].tenant_sm_frac, cost.roofline))
            for s in infos
        ]
        hops = [self.cluster.link_between(x.gpu, y.gpu) for x, y in zip(infos, infos[1:])]
        back = self.cluster.link_between(infos[-1].gpu, infos[0].gpu) if len(infos) > 1 else None
        return PipelineCost(cost, shapes, hops, back)

    def launch(self, a: Launch) -> Instance | None:
        spec = self.specs[a.model]
        reason = self._check(a.model, a.stages, spec, share=a.share_weights)
        if reason:
            self._reject(a, reason)
            return None
        iid = next(self._ids)
        infos = self._alloc_stages(a.model, iid, a.stages, kv_tokens=a.kv_tokens, share=a.share_weights)
        if isinstance(infos, str):
            self._reject(a, infos)
            return None
        inst = Instance(
            self.env, iid, a.model, infos, self.pipeline_cost(a.model, infos),
            block_size=self.block_size, token_budget=self.token_budget, max_seqs=self.max_seqs,
            expected_output=self.expected_output[a.model], on_finish=self.on_finish, gpu_time=self.gpu_time,
            fast_forward=self.fast_forward, compiled=self.compiled, horizon=self.horizon,
            finish_ahead=self.finish_ahead,
        )
        self.instances[iid] = inst
        self.joining.update(s.gpu for s in infos)  # until they start: no run-ahead on these GPUs
        self.env.process(self._load(inst, spec))
        return inst

    @property
    def fabric(self) -> LoadFabric:
        if self._fabric is None:
            self._fabric = LoadFabric(self.env, self.cluster, self.load_rates)
        return self._fabric

    def load_stages(self, model: str, stages: list[StageInfo], free: bool = False):
        """A SimPy process loading stages in parallel over the shared load fabric (engine/loads.py);
        its value is (cold stages, bytes). A stage whose layers are in its server's host cache
        comes over PCIe only; else from storage first. `free`: record cache use, move nothing (the
        prewarmed capacity at t=0)."""
        spec = self.specs[model]
        waits, cold, total = [], 0, 0
        for s in stages:
            g = self.cluster.gpus[s.gpu]
            nbytes = spec.stage_weight_bytes(s.first_layer, s.end_layer)
            if s.weights is not None and (s.gpu, s.weights) in self.weights_ready:
                # a shared copy is there (or on its way): attaching costs nothing but the wait for it
                waits.append(self.weights_ready[(s.gpu, s.weights)])
                continue
            cache = self.cluster.servers[g.server].host_cache
            key = (spec.name, s.first_layer, s.end_layer)
            miss = not cache.contains(key)
            cold += miss
            cache.touch(key, nbytes)
            if free:
                done = self.env.event().succeed()
            else:
                if miss:
                    self._reading[(g.server, key)] = self.fabric.read(g.server, nbytes)
                reading = self._reading.get((g.server, key))
                if reading is not None and reading.processed:
                    del self._reading[(g.server, key)]
                    reading = None
                rate = self.costs[model].host_to_gpu_bytes_per_s(g.spec)
                done = self.env.process(self.fabric.copy(s.gpu, nbytes, rate, after=reading))
            if s.weights is not None:
                self.weights_ready[(s.gpu, s.weights)] = done
            waits.append(done)
            total += nbytes
        if waits:
            yield self.env.all_of(waits)
        return cold, total

    def _load(self, inst: Instance, spec: ModelSpec):
        requested = self.env.now
        free = self.prewarm and requested == 0.0
        cold, _ = yield self.env.process(self.load_stages(inst.model, inst.stages, free=free))
        load_s = self.env.now - requested
        self.launches.append(
            {"instance": inst.id, "model": inst.model, "stages": len(inst.stages), "requested_s": requested,
             "ready_s": self.env.now, "load_s": load_s, "cold_stages": cold,
             "gpus": " ".join(str(s.gpu) for s in inst.stages), "kv_tokens": inst.kv.capacity_tokens}
        )
        inst.start()
        self.joined(s.gpu for s in inst.stages)
        self.gateway.add(inst)

    def free_stage(self, model: str, iid: int, stage: StageInfo) -> None:
        """Give a stage's GPU memory back; shared weights go when their last user does."""
        gpu = stage.gpu
        self.cluster.gpus[gpu].release(f"{model}/{iid}")
        if stage.weights is not None:
            ref = (gpu, stage.weights)
            self.weight_refs[ref] -= 1
            if self.weight_refs[ref] == 0:
                del self.weight_refs[ref]
                self.weights_ready.pop(ref, None)
                self.cluster.gpus[gpu].release(stage.weights)
        self.gpu_stages[gpu] -= 1
        if self.gpu_stages[gpu] == 0:
            del self.gpu_stages[gpu]

    def refactor(self, a: Refactor) -> None:
        from .refactor import refactor_process

        inst = self.instances.get(a.instance_id)
        if inst is None or inst.state != "ready" or inst.refactoring:
            self._reject(a, "no ready instance with that id (or one already refactoring)")
            return
        own = {s.gpu: s for s in inst.stages}
        reason = self._check(inst.model, a.stages, self.specs[inst.model], own)
        if reason:
            self._reject(a, reason)
            return
        infos = self._alloc_stages(inst.model, inst.id, a.stages, own)
        if isinstance(infos, str):
            self._reject(a, infos)
            return
        inst.refactoring = True
        inst.refactor_next, inst.refactor_since = None, self.env.now  # loading (refactor_process)
        self.joining.update(s.gpu for s in infos)  # refactor_process subtracts them at the switch
        self.env.process(refactor_process(self, inst, infos))

    def retire(self, iid: int) -> None:
        inst = self.instances.get(iid)
        if inst is None or inst.state != "ready" or inst.refactoring:
            self._reject(Retire(iid), "no ready instance with that id (or it is refactoring)")
            return
        self.gateway.remove(inst)
        inst.retire()
        self.env.process(self._release_when_drained(inst))

    def _release_when_drained(self, inst: Instance):
        if inst.running or inst.waiting:
            yield inst.drained
        inst.release_gpus()
        for s in inst.stages:
            self.free_stage(inst.model, inst.id, s)
        self.retired_busy_s += inst.busy_total_s
        self.retired_interference_s += inst.interference_total_s
        inst.state = "retired"
        del self.instances[inst.id]
