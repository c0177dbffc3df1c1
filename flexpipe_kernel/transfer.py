"""Moving weights and KV blocks: within a device, GPU to GPU, through pinned host memory, and
across processes or nodes with torch.distributed.

- `copy_to`: one tensor to a device. GPU->GPU goes direct (peer access where the topology allows,
  else the driver stages through host); `via_host=True` forces a pinned-host bounce.
- `HostWeightCache`: pinned host copies of model weights, so a stage is (re)loaded over PCIe
  without touching storage (the paper's host-memory parameter cache, §7).
- `move_kv`: copy a request's KV blocks between two stage caches (different block ids).
- `LocalFabric`: stages on devices of this process, named by label (a refactor's `Fabric`).
- `Channel`: point-to-point sends over a process group created ahead of time. NCCL communicator
  set-up takes seconds; the paper keeps it off the critical path, so `Channel.open` builds the group
  and warms it up once, before any transfer is timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .kvcache import PagedKVCache
from .model import ModelArgs, Transformer
from .stage import Stage, _full_name


def copy_to(t: torch.Tensor, device: str | torch.device, via_host: bool = False) -> torch.Tensor:
    device = torch.device(device)
    if via_host and t.device.type == "cuda" and device.type == "cuda":
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host.to(device, non_blocking=True)
    if t.device == device:
        return t.clone()
    return t.to(device, non_blocking=True)


def sync(*devices: torch.device | str) -> None:
    for d in devices:
        d = torch.device(d)
        if d.type == "cuda":
            torch.cuda.synchronize(d)


class HostWeightCache:
    """Full-model weights in (pinned, when CUDA is present) host memory, by Transformer name."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def _keep(self, name: str, t: torch.Tensor) -> None:
        t = t.detach().to("cpu")
        if torch.cuda.is_available():
            t = t.pin_memory()
        self.tensors[name] = t

    def put_model(self, model: Transformer) -> "HostWeightCache":
        for name, t in model.state_dict().items():
            self._keep(name, t)
        return self

    def put_safetensors(self, paths: list[str | Path]) -> "HostWeightCache":
        from safetensors import safe_open

        from .model import _our_name

        for path in paths:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    self._keep(_our_name(name), f.get_tensor(name))
        return self

    def load_stage(self, args: ModelArgs, first: int, end: int, device: str | torch.device, *, kv_blocks: int,
                   block_size: int, dtype: torch.dtype) -> tuple[Stage, int, float]:
        """Build a stage on `device` from the cache. Returns (stage, bytes moved, seconds)."""
        t0 = time.perf_counter()
        stage = Stage(args, first, end, device, kv_blocks=kv_blocks, block_size=block_size, dtype=dtype)
        n = stage.load_from(self.tensors)
        sync(device)
        return stage, n, time.perf_counter() - t0


def move_kv(src: PagedKVCache, dst: PagedKVCache, req_id: int, n_tokens: int, first_block: int = 0,
            src_layers: slice = slice(None)) -> int:
    """Copy KV of positions [first_block * block_size, n_tokens) of `req_id` from src to dst (dst's
    table is grown to cover n_tokens). `src_layers` picks which of src's layers go (dst gets them all,
    in order). Returns bytes copied."""
    assert src.block_size == dst.block_size
    dst.allocate(req_id, n_tokens)
    last_block = -(-n_tokens // src.block_size)
    if last_block <= first_block:
        return 0
    k, v = src.export_blocks(req_id, first_block, src_layers)
    k, v = k[:, : last_block - first_block], v[:, : last_block - first_block]
    return dst.import_blocks(req_id, k, v, first_block)


def weight_groups(args: ModelArgs, first: int, end: int) -> list[str]:
    """A stage's weights in loading units: one per layer ("layers.3"), the embedding, the head."""
    groups = [f"layers.{i}" for i in range(first, end)]
    if first == 0:
        groups.insert(0, "tok_embeddings")
    if end == args.n_layers:
        groups.append("head")
    return groups


def group_names(host: HostWeightCache, group: str) -> list[str]:
    """Full-model weight names of a loading unit, in the host cache's order."""
    prefixes = ("norm.", "output.") if group == "head" else (group + ".",)
    return [n for n in host.tensors if n.startswith(prefixes)]


def weight_names(host: HostWeightCache, args: ModelArgs, first: int, end: int) -> list[str]:
    return [n for g in weight_groups(args, first, end) for n in group_names(host, g)]


def holds(stage: Stage, group: str) -> bool:
    """Does `stage` hold the weights of loading unit `group`?"""
    if group == "tok_embeddings":
        return stage.is_first
    if group == "head":
        return stage.is_last
    return stage.first <= int(group.split(".")[1]) < stage.end


class LocalFabric:
    """Stages on devices of this process. `devices` maps a device label to its torch device; a label
    not in it is a torch device itself. Several labels may share one torch device: logical CPU
    devices, so that a heterogeneous pipeline can be exercised (and its links booked) on a CPU."""

    def __init__(self, host_cache: HostWeightCache, devices: dict[str, str] | None = None) -> None:
        self.host_cache = host_cache
        self.devices = devices or {}

    def new_stage(self, args: ModelArgs, first: int, end: int, label: str, *, kv_blocks: int, block_size: int,
                  dtype: torch.dtype) -> Stage:
        """A stage on `label` with its KV pool; its weights are not set yet (fill them)."""
        return Stage(args, first, end, self.devices.get(label, label), kv_blocks=kv_blocks, block_size=block_size,
                     dtype=dtype, label=label)

    def fill(self, stage: Stage, names: list[str], src: Stage | None = None) -> int:
        """Weights `names` (full-model names) into `stage`: from `src`, a stage on the same device
        that holds them already, else from the host cache. Returns bytes copied."""
        dst = {_full_name(n, stage.first): p for n, p in stage.named_parameters()}
        have = {_full_name(n, src.first): p for n, p in src.named_parameters()} if src else self.host_cache.tensors
        n = 0
        with torch.no_grad():
            for name in names:
                dst[name].copy_(have[name], non_blocking=True)
                n += dst[name].numel() * dst[name].element_size()
        return n

    def load(self, args: ModelArgs, first: int, end: int, label: str, *, kv_blocks: int, block_size: int,
             dtype: torch.dtype) -> tuple[Stage, int, str]:
        """A whole stage from the host cache: (stage, bytes, "host")."""
        st = self.new_stage(args, first, end, label, kv_blocks=kv_blocks, block_size=block_size, dtype=dtype)
        n = self.fill(st, weight_names(self.host_cache, args, first, end))
        sync(st.device)
        return st, n, "host"

    def copy_kv(self, src: Stage, src_layers: slice, src_blocks: list[int], dst: Stage, dst_layers: slice,
                dst_blocks: list[int]) -> int:
        if not src_blocks:
            return 0
        s, d = src.cache, dst.cache
        si = torch.tensor(src_blocks, dtype=torch.long, device=s.device)
        di = torch.tensor(dst_blocks, dtype=torch.long, device=d.device)
        k, v = s.k[src_layers].index_select(1, si), s.v[src_layers].index_select(1, si)
        d.k[dst_layers].index_copy_(1, di, k.to(d.device, non_blocking=True))
        d.v[dst_layers].index_copy_(1, di, v.to(d.device, non_blocking=True))
        return 2 * k.numel() * k.element_size()

    def release(self, stage: Stage) -> None:
        stage.cache.k = stage.cache.v = None  # type: ignore[assignment]

    def sync(self, stages: list[Stage]) -> None:
        sync(*{s.device for s in stages})


@dataclass
class Channel:
    """Point-to-point transfers over a torch.distributed process group (gloo on CPU, NCCL on GPUs)."""

    rank: int
    world: int
    device: torch.device

    @classmethod
    def open(cls, rank: int, world: int, init_method: str, backend: str | None = None,
             device: str | torch.device = "cpu", timeout_s: float | None = None) -> "Channel":
        """`timeout_s` bounds every wait (torch's default is 30 minutes): a peer that died makes
        the others fail after it instead of hanging."""
        device = torch.device(device)
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if not dist.is_initialized():
            kw = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world, **kw)
        # Warm up: the first collective creates the communicators (seconds for NCCL), before any
        # transfer is on the critical path.
        dist.all_reduce(torch.zeros(1, device=device))
        return cls(rank, world, device)

    def send(self, t: torch.Tensor, dst: int) -> int:
        dist.send(t.contiguous().to(self.device), dst)
        return t.numel() * t.element_size()

    def recv(self, like: torch.Tensor, src: int) -> torch.Tensor:
        buf = torch.empty(like.shape, dtype=like.dtype, device=self.device)
        dist.recv(buf, src)
        return buf

    def send_stage_weights(self, stage: Stage, dst: int) -> int:
        return sum(self.send(p.data, dst) for _, p in stage.named_parameters())

    def recv_stage_weights(self, stage: Stage, src: int) -> int:
        n = 0
        with torch.no_grad():
            for _, p in stage.named_parameters():
                p.copy_(self.recv(p.data, src))
                n += p.numel() * p.element_size()
        return n

    def send_kv(self, cache: PagedKVCache, req_id: int, dst: int) -> int:
        k, v = cache.export_blocks(req_id)
        return self.send(k, dst) + self.send(v, dst)

    def recv_kv(self, cache: PagedKVCache, req_id: int, n_tokens: int, src: int) -> int:
        cache.allocate(req_id, n_tokens)
        nb = len(cache.table(req_id))
        like = cache.k[:, :nb]
        k, v = self.recv(like, src), self.recv(like, src)
        return cache.import_blocks(req_id, k, v)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
