"""The cluster: servers, GPUs with a memory ledger, background tenants and the topology.

The paper's Hierarchical Resource Graph (server -> rack -> cluster, §7) is the `server`/`rack`
fields of each GPU plus `link_between`, which placement and the cost model read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .fragmentation import tenant_load
from .hardware import GPUSpec, LinkKind, LinkSpec, get_gpu, link_spec


class OverCommitError(RuntimeError):
    """An allocation would exceed a GPU's memory: a bug in whoever asked, never silently allowed."""


@dataclass
class GPU:
    id: int
    server: int
    rack: int
    spec: GPUSpec
    tenant_mem_frac: float  # memory held by other tenants (Table 1)
    tenant_sm_frac: float  # SM time used by other tenants (Table 1)
    allocations: dict[str, int] = field(default_factory=dict)  # owner -> bytes (change via allocate/release)
    version: int = 0  # bumped on every allocate/release: views built from this GPU can be cached
    changes: ClassVar[int] = 0  # bumped with any GPU's version (in any cluster): "did any change?"

    @property
    def capacity_bytes(self) -> int:
        return self.spec.memory_bytes

    @property
    def tenant_bytes(self) -> int:
        return int(self.tenant_mem_frac * self.spec.memory_bytes)

    @property
    def used_bytes(self) -> int:
        return self.tenant_bytes + sum(self.allocations.values())

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def allocate(self, owner: str, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError("negative allocation")
        if owner in self.allocations:
            raise OverCommitError(f"GPU {self.id}: {owner} already holds memory here")
        if nbytes > self.free_bytes:
            raise OverCommitError(
                f"GPU {self.id}: {owner} asks {nbytes / 2**30:.2f} GiB, only {self.free_bytes / 2**30:.2f} GiB free"
            )
        self.allocations[owner] = nbytes
        self.version += 1
        GPU.changes += 1

    def release(self, owner: str) -> int:
        self.version += 1
        GPU.changes += 1
        return self.allocations.pop(owner)


@dataclass
class Server:
    id: int
    rack: int
    rdma: bool
    gpu_ids: list[int]
    host_cache: "HostCache"


class HostCache:
    """Per-server host-memory parameter cache with LRU eviction (DESIGN.md loading tiers).

    Keys are (model, first_layer, last_layer) ranges; a hit means a stage loads over PCIe only.
    """

    changes = 0  # bumped when any cache's keys change (in any cluster): "did any change?"

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[tuple[str, int, int], int] = OrderedDict()
        self._keys: frozenset[tuple[str, int, int]] | None = None  # keys(), until an entry comes or goes

    @property
    def used_bytes(self) -> int:
        return sum(self._entries.values())

    def contains(self, key: tuple[str, int, int]) -> bool:
        return key in self._entries

    def keys(self) -> frozenset[tuple[str, int, int]]:
        if self._keys is None:  # the policy's view asks every control step, for every server
            self._keys = frozenset(self._entries)
        return self._keys

    def touch(self, key: tuple[str, int, int], nbytes: int) -> None:
        """Record a use; insert if absent, evicting least recently used entries to make room."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        if nbytes > self.capacity_bytes:
            return  # never cacheable
        while self.used_bytes + nbytes > self.capacity_bytes:
            self._entries.popitem(last=False)
        self._entries[key] = nbytes
        self._keys = None
        HostCache.changes += 1


@dataclass
class Cluster:
    gpus: list[GPU]
    servers: list[Server]
    intra_link: LinkKind
    network_gbps: float

    def link_between(self, a: int, b: int) -> LinkSpec:
        ga, gb = self.gpus[a], self.gpus[b]
        if ga.server == gb.server:
            kind = self.intra_link if ga.spec.nvlink_bytes_per_s > 0 else LinkKind.PCIE
        elif self.servers[ga.server].rdma and self.servers[gb.server].rdma:
            kind = LinkKind.RDMA
        else:
            kind = LinkKind.TCP
        return link_spec(kind, ga.spec, self.network_gbps)

    def check_ledger(self) -> None:
        """Conservation: no GPU holds more than its memory."""
        for g in self.gpus:
            if g.used_bytes > g.capacity_bytes:
                raise OverCommitError(f"GPU {g.id} over-committed: {g.used_bytes} > {g.capacity_bytes}")


def gpus_per_server(n_servers: int, n_gpus: int) -> list[int]:
    """Spread n_gpus over servers as evenly as possible, larger servers first (82 on 42 -> 40x2 + 2x1)."""
    base, extra = divmod(n_gpus, n_servers)
    return [base + 1 if i < extra else base for i in range(n_servers)]


def build_cluster(
    *,
    servers: int,
    gpus: int,
    gpu_kind: str,
    racks: int,
    rdma_fraction: float,
    host_memory_bytes: int,
    host_cache_fraction: float,
    intra_link: LinkKind,
    network_gbps: float,
    tenant_scale: float,
    rng: np.random.Generator,
) -> Cluster:
    spec = get_gpu(gpu_kind)
    counts = gpus_per_server(servers, gpus)
    mem, sm = tenant_load(gpus, rng, tenant_scale)
    n_rdma = int(round(rdma_fraction * servers))
    rdma_flags = np.zeros(servers, dtype=bool)
    rdma_flags[rng.permutation(servers)[:n_rdma]] = True
    gpu_list: list[GPU] = []
    server_list: list[Server] = []
    for s, count in enumerate(counts):
        rack = s * racks // servers
        ids = list(range(len(gpu_list), len(gpu_list) + count))
        for gid in ids:
            gpu_list.append(GPU(gid, s, rack, spec, float(mem[gid]), float(sm[gid])))
        cache = HostCache(int(host_memory_bytes * host_cache_fraction))
        server_list.append(Server(s, rack, bool(rdma_flags[s]), ids, cache))
    return Cluster(gpu_list, server_list, intra_link, network_gbps)
