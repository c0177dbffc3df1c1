"""Weight loads that share bandwidth (issue 11): storage -> host memory -> GPU, as fluid flows.

The paper's resource graph names the bandwidths that loads contend for (§7): per server, PCIe
(host -> GPU); per cluster, storage I/O. We model three shared resources:

- each server's storage read bandwidth (`storage`, LoadRates.storage_bytes_per_s),
- the cluster's storage backend (`cluster`, LoadRates.cluster_storage_bytes_per_s),
- each server's host -> GPU PCIe uplinks (`uplink`: the GPU's host-link rate, shared by the GPUs
  behind one switch, in pairs: LoadRates.gpus_per_pcie_uplink) and each GPU's own x16 link (`gpu`:
  two loads into one GPU, co-located stages, share it),

and each flow is also capped by its own rate (a host -> GPU copy by the GPU's pinned copy rate).
Concurrent flows share by max-min fairness (water-filling), recomputed whenever a flow starts or
ends. A cold stage load reads its bytes from storage into the host cache (storage + cluster), then
copies them to the GPU (pcie); a host-cache hit skips the storage phase (if the entry is still
being read for another load on the server, the copy waits for that read instead of reading again). One load alone therefore
takes bytes / storage rate + bytes / copy rate, as before this model existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable

import simpy

Resource = Hashable


@dataclass(eq=False)
class Flow:
    remaining: float
    resources: tuple[Resource, ...]
    cap: float
    done: simpy.Event
    rate: float = 0.0


@dataclass
class FlowNetwork:
    """Max-min fair sharing of resources' bandwidth among fluid flows, in a SimPy environment."""

    env: simpy.Environment
    capacity: dict[Resource, float] = field(default_factory=dict)
    flows: list[Flow] = field(default_factory=list)
    log: list[tuple[float, float, tuple[Resource, ...]]] | None = None  # (start, end, resources) for tests
    _last: float = 0.0
    _gen: int = 0
    # when a flow next ends (the earliest a load can complete; flows start only at the controller's
    # ticks and at these ends): the run-ahead horizon of a refactoring instance (Simulation._horizon)
    next_at: float = math.inf

    def transfer(self, nbytes: float, resources: tuple[Resource, ...], cap: float = math.inf) -> simpy.Event:
        """Start moving `nbytes` through `resources`; the event fires when they are all through."""
        done = self.env.event()
        if nbytes <= 0:
            done.succeed()
            return done
        self._advance()
        f = Flow(float(nbytes), resources, cap, done)
        self.flows.append(f)
        if self.log is not None:
            start = self.env.now
            done.callbacks.append(lambda _e, s=start, r=resources: self.log.append((s, self.env.now, r)))
        self._reshare()
        return done

    @property
    def changed_at(self) -> float:
        """When flows last started or ended (a load that ended then may still be completing)."""
        return self._last

    def _advance(self) -> None:
        dt = self.env.now - self._last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
        self._last = self.env.now

    def _reshare(self) -> None:
        """Water-filling: raise every unfrozen flow's rate together; a resource (or a flow's own cap)
        that runs out freezes the flows through it at their fair share; repeat."""
        left = {r: self.capacity[r] for f in self.flows for r in f.resources}
        active = list(self.flows)
        while active:
            users: dict[Resource, int] = {}
            for f in active:
                for r in f.resources:
                    users[r] = users.get(r, 0) + 1
            share = min((left[r] / n for r, n in users.items()), default=math.inf)
            own = min(f.cap for f in active)
            level = min(share, own)
            tight = {r for r, n in users.items() if left[r] / n <= level * (1 + 1e-12)}
            frozen = [f for f in active if f.cap <= level * (1 + 1e-12) or any(r in tight for r in f.resources)]
            for f in frozen:
                f.rate = level
                for r in f.resources:
                    left[r] -= level
            active = [f for f in active if f not in frozen]
        self._gen += 1
        gen = self._gen
        nxt = min((f.remaining / f.rate for f in self.flows if f.rate > 0), default=None)
        self.next_at = math.inf if nxt is None else self.env.now + max(nxt, 0.0)
        if nxt is not None:
            ev = self.env.timeout(max(nxt, 0.0))
            ev.callbacks.append(lambda _e: self._tick(gen))

    def _tick(self, gen: int) -> None:
        if gen != self._gen:
            return  # a flow started or ended since this was scheduled
        self._advance()
        # done within rounding (a byte, or a relative 1e-9 of what was left at the last reshare)
        finished = [f for f in self.flows if f.remaining <= max(1.0, 1e-9 * f.rate)]
        self.flows = [f for f in self.flows if f not in finished]
        for f in finished:
            f.done.succeed()
        self._reshare()


class LoadFabric:
    """The cluster's loading paths, as FlowNetwork resources (see the module docstring)."""

    def __init__(self, env: simpy.Environment, cluster, rates) -> None:
        self.net = FlowNetwork(env)
        self.cluster = cluster
        cap = self.net.capacity
        cap[("cluster",)] = rates.cluster_storage_bytes_per_s
        self._uplink: dict[int, tuple] = {}  # GPU id -> its PCIe uplink resource
        for s in cluster.servers:
            cap[("storage", s.id)] = rates.storage_bytes_per_s
            for i, g in enumerate(s.gpu_ids):
                link = cluster.gpus[g].spec.host_link_bytes_per_s
                key = ("uplink", s.id, i // rates.gpus_per_pcie_uplink)  # GPUs paired behind one switch
                cap[key] = link
                cap[("gpu", g)] = link  # two loads into one GPU (co-located stages) share its x16 link
                self._uplink[g] = key

    def read(self, server: int, nbytes: int) -> simpy.Event:
        """Storage -> the server's host memory (a host-cache fill)."""
        return self.net.transfer(nbytes, (("storage", server), ("cluster",)))

    def copy(self, gpu: int, nbytes: int, copy_bytes_per_s: float, after: simpy.Event | None = None):
        """A SimPy process: host memory -> `gpu`, once the bytes are in host memory (`after`)."""
        if after is not None and not after.processed:
            yield after
        yield self.net.transfer(nbytes, (self._uplink[gpu], ("gpu", gpu)), cap=copy_bytes_per_s)
