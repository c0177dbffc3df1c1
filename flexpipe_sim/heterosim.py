"""Mixed clusters (issue 15): servers of different GPU kinds (A100-80GB and L40S), each server
with its own GPU-GPU link (NVLink or PCIe) and NIC (RDMA or TCP), GPU-kind-aware cost models, and
the simulation that runs them.

A scenario asks for one with `cluster.mix` (scenario.ServerGroupConfig); runner.simulate then uses
`HeteroSimulation`. It is the ordinary `Simulation` with the cluster rebuilt group by group, stage
times priced per GPU kind (`cost.by_gpu`: a profile per kind; other kinds the roofline on their spec
sheet), and a view that tells policies each GPU's kind and the recent request shape (what a
phase-aware policy reads).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from .cluster import GPU, Cluster, HostCache, Server
from .costmodel import CostModel, ProfileCostModel
from .engine.simulator import Simulation
from .fragmentation import tenant_load
from .hardware import GPUS, GPUSpec, LinkKind, LinkSpec, get_gpu, link_spec

if TYPE_CHECKING:
    from flexpipe_core.policyapi import ClusterView
    from flexpipe_core.work import BatchWork

    from .scenario import ClusterConfig, Scenario


def check_mix(c: ClusterConfig) -> None:
    """ValueError naming the key when `cluster.mix` disagrees with itself or the other keys."""
    assert c.mix is not None
    for i, g in enumerate(c.mix):
        if g.gpu not in GPUS:
            raise ValueError(f"mix.{i}.gpu: unknown GPU kind {g.gpu!r}; known kinds: {', '.join(sorted(GPUS))}")
        if g.intra_server_link == "nvlink" and GPUS[g.gpu].nvlink_bytes_per_s <= 0:
            raise ValueError(f"mix.{i}.intra_server_link: {g.gpu} has no NVLink; use pcie")
        if g.gpus_per_server > c.max_gpus_per_server:
            raise ValueError(f"mix.{i}.gpus_per_server: {g.gpus_per_server} is over max_gpus_per_server={c.max_gpus_per_server}")
    kinds = [g.gpu for g in c.mix]
    if c.gpu not in kinds:
        raise ValueError(f"gpu: with a mix, name one of its kinds ({', '.join(kinds)}); it is the reference kind")
    servers = sum(g.servers for g in c.mix)
    gpus = sum(g.servers * g.gpus_per_server for g in c.mix)
    if c.servers != servers:
        raise ValueError(f"servers: {c.servers}, but the mix has {servers} servers")
    if c.gpus != gpus:
        raise ValueError(f"gpus: {c.gpus}, but the mix has {gpus} GPUs")


@dataclass
class MixedCluster(Cluster):
    """A Cluster whose servers differ: the link inside server s is `server_links[s]`."""

    server_links: list[LinkKind] = field(default_factory=list)

    def link_between(self, a: int, b: int) -> LinkSpec:
        ga, gb = self.gpus[a], self.gpus[b]
        if ga.server == gb.server:
            kind = self.server_links[ga.server]
        elif self.servers[ga.server].rdma and self.servers[gb.server].rdma:
            kind = LinkKind.RDMA
        else:
            kind = LinkKind.TCP
        return link_spec(kind, ga.spec, self.network_gbps)


def build_mixed_cluster(c: ClusterConfig, rng: np.random.Generator) -> MixedCluster:
    """GPU ids run group by group, server by server (the order of `cluster.mix`)."""
    assert c.mix is not None
    mem, sm = tenant_load(c.gpus, rng, c.tenant_scale)
    gpus: list[GPU] = []
    servers: list[Server] = []
    links: list[LinkKind] = []
    for g in c.mix:
        spec = get_gpu(g.gpu)
        for _ in range(g.servers):
            s = len(servers)
            rack = s * c.racks // c.servers
            ids = list(range(len(gpus), len(gpus) + g.gpus_per_server))
            gpus += [GPU(i, s, rack, spec, float(mem[i]), float(sm[i])) for i in ids]
            servers.append(Server(s, rack, g.rdma, ids, HostCache(int(c.host_memory_gb * 1e9 * c.host_cache_fraction))))
            links.append(LinkKind(g.intra_server_link))
    return MixedCluster(gpus, servers, LinkKind.PCIE, c.network_gbps, links)


class ByGpuCostModel(CostModel):
    """Stage times per GPU kind: `per_kind[gpu.name]` where given (a profile measured or derived for
    that kind), else `default` (the roofline, which scales by the GPU's own spec sheet)."""

    def __init__(self, default: CostModel, per_kind: dict[str, CostModel]) -> None:
        super().__init__(default.model, default.roofline)
        self.default, self.per_kind = default, per_kind
        self._overhead = default._overhead

    def _for(self, gpu: GPUSpec) -> CostModel:
        return self.per_kind.get(gpu.name, self.default)

    def layer_time(self, gpu: GPUSpec, w: BatchWork) -> float:
        return self._for(gpu).layer_time(gpu, w)

    def head_time(self, gpu: GPUSpec, n_seqs: int) -> float:
        return self._for(gpu).head_time(gpu, n_seqs)

    def host_to_gpu_bytes_per_s(self, gpu: GPUSpec) -> float:
        return self._for(gpu).host_to_gpu_bytes_per_s(gpu)

    def describe(self) -> str:
        kinds = "; ".join(f"{k}: {c.describe()}" for k, c in sorted(self.per_kind.items()))
        return f"by GPU kind ({kinds}; other kinds: {self.default.describe()})"


class HeteroSimulation(Simulation):
    def __init__(self, sc: Scenario, cost_models: dict[str, CostModel] | None = None) -> None:
        super().__init__(sc, cost_models)
        # the same stream the homogeneous cluster drew from: a mixed scenario is reproducible by its seed
        rng = np.random.default_rng(np.random.SeedSequence(sc.seed).spawn(3)[0])
        self.cluster = build_mixed_cluster(sc.cluster, rng)
        self.transitions.cluster = self.cluster
        self.transitions.watch_switches = True  # refactor.py records token times around each switch
        self._check_fits()
        if cost_models is None and sc.cost.by_gpu:
            self.costs = self._by_gpu_costs()
            self.transitions.costs = self.costs
        # per model, (arrival, finish, output tokens) of requests that finished lately (_recent_shape)
        self._finished_lately: dict[str, deque[tuple[float, float, int]]] = {m: deque() for m in self.specs}

    def _finish(self, r) -> None:
        self._finished_lately[r.model].append((r.arrival_s, r.finish_s, r.output_tokens))
        super()._finish(r)

    def _by_gpu_costs(self) -> dict[str, CostModel]:
        from .profiles import ProfileError, load_profile

        out = dict(self.costs)
        for name, kinds in self.sc.cost.by_gpu.items():
            spec = self.specs[name]
            per: dict[str, CostModel] = {}
            for kind, path in kinds.items():
                prof = load_profile(path)
                if prof.gpu_kind != kind:
                    raise ProfileError(f"{path}: profile is for {prof.gpu_kind}, listed under {kind}")
                per[kind] = ProfileCostModel(spec, prof)
            out[name] = ByGpuCostModel(self.costs[name], per)
        return out

    def run(self, progress=None):
        """The run, plus per-switch costs (switchcost.py: `raw.switches`) and the policy's plans
        (`raw.plans`). Where the policy can run without switching (hetero_phase), the same scenario
        and seed run again with `switch: false` for the in-flight requests' TTFT/TPOT baseline."""
        from .scenario import PolicyConfig
        from .switchcost import switch_rows

        raw = super().run(progress)
        raw.plans = list(getattr(self.policy, "decisions", []))
        baseline = None
        params = self.sc.policy.params
        if raw.refactors and not raw.interrupted and self.sc.policy.name == "hetero_phase" and params.get("switch", True):
            base_sc = self.sc.model_copy(update={"policy": PolicyConfig(name="hetero_phase",
                                                                        params={**params, "switch": False})})
            baseline = HeteroSimulation(base_sc).run().requests
        raw.switches = switch_rows(raw.refactors, raw.requests, baseline) if raw.refactors else []
        return raw

    def view(self) -> ClusterView:
        v = super().view()
        gpus = tuple(replace(g, kind=self.cluster.gpus[g.id].spec.name) for g in v.gpus)
        models = {n: replace(mv, **dict(zip(("recent_prompt_tokens", "recent_output_tokens"), self._recent_shape(n))))
                  for n, mv in v.models.items()}
        return replace(v, gpus=gpus, models=models)

    def _recent_shape(self, model: str) -> tuple[float, float]:
        """Mean prompt of the requests that arrived in the stats window, and mean output of those that
        finished in it (output lengths are known only once a request ends). NaN where none."""
        now, win = self.env.now, self.sc.engine.stats_window_s
        w = self.workload
        # released requests (ids < n_released, in arrival order) that arrived in the window
        lo = int(np.searchsorted(w.arrival_s, now - win, side="left"))
        ids = np.arange(lo, self.n_released)
        prompts = w.prompt_tokens[ids[w.model_idx[ids] == w.model_names.index(model)]]
        done = self._finished_lately[model]
        while done and done[0][1] < now - win:  # finish times arrive in order; the window only moves on
            done.popleft()
        # arrivals older than 20 windows are not looked at (a bound kept from the first version)
        outputs = [o for a, _, o in done if a >= now - 20 * win]
        mean = lambda xs: float(np.mean(xs)) if len(xs) else math.nan  # noqa: E731
        return mean(prompts), mean(outputs)
