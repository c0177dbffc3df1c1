"""GPU and link catalogue: spec-sheet numbers the cost model scales from.

Numbers are vendor datasheet values (dense bf16 tensor FLOP/s, HBM bandwidth, memory) unless the
comment says otherwise. Sizes are bytes, rates bytes/s and FLOP/s, times seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

GiB = 2**30
GB = 10**9


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_bytes: int
    hbm_bytes_per_s: float
    peak_flops: float  # dense bf16/fp16 tensor-core FLOP/s
    host_link_bytes_per_s: float  # pinned host->GPU copy rate actually achieved over PCIe
    nvlink_bytes_per_s: float  # per direction, to one peer; 0 if the part has none


# Pinned host->GPU rates: 55 GB/s measured on PCIe Gen5 x16 (DESIGN.md anchor, H100); Gen4 x16 parts
# get half of that (Gen4 is half the signalling rate of Gen5), 25 GB/s.
_GEN5_H2D = 55e9
_GEN4_H2D = 25e9

GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in [
        GPUSpec("a100-40gb", 40 * GiB, 1.555e12, 312e12, _GEN4_H2D, 300e9),
        GPUSpec("a100-80gb", 80 * GiB, 2.039e12, 312e12, _GEN4_H2D, 300e9),
        GPUSpec("h100-sxm", 80 * GiB, 3.35e12, 989e12, _GEN5_H2D, 450e9),
        GPUSpec("h100-pcie", 80 * GiB, 2.0e12, 756e12, _GEN5_H2D, 300e9),
        GPUSpec("h200", 141 * GB, 4.8e12, 989e12, _GEN5_H2D, 450e9),
        GPUSpec("l40s", 48 * GiB, 0.864e12, 362e12, _GEN4_H2D, 0.0),
        # A CPU socket as a "device", so a CPU-measured profile (calibrate/profiles/cpu-tiny.json)
        # can drive a simulation that the CPU kernel can be compared with. Nominal numbers of a
        # 2-core cloud VM: 16 GiB, ~20 GB/s memory copy, ~0.2 TFLOP/s fp32.
        GPUSpec("cpu", 16 * GiB, 20e9, 0.2e12, 10e9, 0.0),
    ]
}


def get_gpu(name: str) -> GPUSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise KeyError(f"unknown GPU kind {name!r}; known kinds: {', '.join(sorted(GPUS))}") from None


class LinkKind(str, Enum):
    """How two GPUs talk, best first. Same-GPU never happens inside one model (DESIGN.md)."""

    NVLINK = "nvlink"
    PCIE = "pcie"  # peer-to-peer over the server's PCIe switch
    RDMA = "rdma"  # 100 Gbps RoCE/InfiniBand between servers
    TCP = "tcp"  # 100 Gbps Ethernet through the kernel stack, when a server lacks RDMA


@dataclass(frozen=True)
class LinkSpec:
    kind: LinkKind
    bytes_per_s: float
    latency_s: float
    setup_s: float  # one-off cost per bulk transfer (connection set-up); 0 for activation hops


def link_spec(kind: LinkKind, gpu: GPUSpec, network_gbps: float = 100.0) -> LinkSpec:
    """Effective link rates. Sources:
    - NVLink: the part's per-direction NVLink rate at 80% efficiency (NCCL p2p bus-bandwidth typical).
    - PCIe peer: 80% of the host link rate (peer copies cross the same switch).
    - RDMA: the paper's 100 Gbps network at 90% of line rate (RoCE large-message goodput), 5 us latency.
    - TCP: 40% of line rate and 50 us latency (kernel TCP on 100 GbE, single stream), and 20 ms
      connection set-up per bulk transfer (the paper's sendfile fallback, §8, pays a new connection).
    """
    line = network_gbps * 1e9 / 8
    if kind is LinkKind.NVLINK:
        return LinkSpec(kind, 0.8 * gpu.nvlink_bytes_per_s, 3e-6, 0.0)
    if kind is LinkKind.PCIE:
        return LinkSpec(kind, 0.8 * gpu.host_link_bytes_per_s, 5e-6, 0.0)
    if kind is LinkKind.RDMA:
        return LinkSpec(kind, 0.9 * line, 5e-6, 0.0)
    return LinkSpec(kind, 0.4 * line, 50e-6, 20e-3)
