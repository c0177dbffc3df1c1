"""Device discovery: GPUs with names, memory and the link between each pair (NVML through
nvidia-ml-py), or N logical CPU devices when there is no GPU (tests, CI)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    torch_device: str  # "cuda:0" or "cpu"
    name: str
    memory_bytes: int


def discover(n_cpu: int = 2) -> list[DeviceInfo]:
    if torch.cuda.is_available():
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(DeviceInfo(i, f"cuda:{i}", p.name, p.total_memory))
        return out
    return _cpu_devices(n_cpu)


def _cpu_devices(n: int) -> list[DeviceInfo]:
    try:
        import os

        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = 0
    return [DeviceInfo(i, "cpu", "cpu (logical)", mem // max(1, n)) for i in range(n)]


def link_kind(a: DeviceInfo, b: DeviceInfo) -> str:
    """'same' | 'nvlink' | 'pcie' | 'host' (CPU logical devices share host memory)."""
    if a.index == b.index and a.torch_device == b.torch_device:
        return "same"
    if a.torch_device == "cpu" or b.torch_device == "cpu":
        return "host"
    try:
        import pynvml

        pynvml.nvmlInit()
        ha, hb = pynvml.nvmlDeviceGetHandleByIndex(a.index), pynvml.nvmlDeviceGetHandleByIndex(b.index)
        for link in range(18):  # NVML_NVLINK_MAX_LINKS
            try:
                if pynvml.nvmlDeviceGetNvLinkState(ha, link):
                    remote = pynvml.nvmlDeviceGetNvLinkRemotePciInfo_v2(ha, link)
                    if remote.busId == pynvml.nvmlDeviceGetPciInfo(hb).busId:
                        return "nvlink"
            except pynvml.NVMLError:
                break
    except Exception:  # noqa: BLE001 - no NVML: what torch can tell is all we know
        return "pcie" if torch.cuda.can_device_access_peer(a.index, b.index) else "host"
    return "pcie" if torch.cuda.can_device_access_peer(a.index, b.index) else "host"
