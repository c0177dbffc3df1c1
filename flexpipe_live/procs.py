"""Devices as processes (`--processes`): each logical device is a worker process holding the real
stages placed on it (weights and KV pool); activations go from the driver to a worker and back over
torch.distributed (gloo on CPU), so a pipeline's stages really hand activations across process
boundaries. The driver keeps the scheduling state: each stage's block accounting lives in a shadow
stage here, which turns a step's StepMeta into that stage's slots and block tables before sending it.

Inflight refactors need the KV of old and new stages in one process (flexpipe_kernel.refactor);
across processes they are refused (the action is recorded as rejected, with this reason).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from flexpipe_kernel.kvcache import BlockTables
from flexpipe_kernel.model import ModelArgs, StepMeta, build_model
from flexpipe_kernel.stage import Stage, local_meta
from flexpipe_kernel.transfer import HostWeightCache

REFACTOR_UNSUPPORTED = "inflight refactor across device processes is not supported (KV must be in one process)"
REAP_WAIT_S = 1.0  # how long a failed call waits to see whether its device's process exited
SETUP_TIMEOUT_S = 60.0  # a worker that has not joined the process group by then is reported dead


class DeviceDied(RuntimeError):
    """A device's worker process is gone: the live backend fails its pipelines and re-queues their requests."""


class ShadowCache(BlockTables):
    """A stage's block accounting without its tensors (they live in the worker)."""

    def __init__(self, num_blocks: int, block_size: int, device: str) -> None:
        super().__init__(num_blocks, block_size, device)
        self.k = self.v = None


@dataclass
class ShadowStage:
    key: int
    args: ModelArgs
    first: int
    end: int
    cache: ShadowCache
    weight_bytes: int
    device: torch.device = torch.device("cpu")

    @property
    def is_first(self) -> bool:
        return self.first == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.args.n_layers

    def local_meta(self, meta: StepMeta) -> StepMeta:
        return local_meta(self.cache, meta, self.device)  # the same slots and tables as a real stage's


def _worker(rank: int, world: int, addr: str, conn, threads: int) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=addr, rank=rank, world_size=world)
    caches: dict[tuple, HostWeightCache] = {}
    stages: dict[int, Stage] = {}
    while True:
        cmd = conn.recv()
        op = cmd[0]
        if op == "build":
            _, key, args, seed, first, end, kv_blocks, block_size = cmd
            if (args, seed) not in caches:  # the same random weights as the driver's (same preset, same seed)
                caches[(args, seed)] = HostWeightCache().put_model(build_model(args, seed=seed))
            st, _, _ = caches[(args, seed)].load_stage(args, first, end, "cpu", kv_blocks=kv_blocks,
                                                       block_size=block_size, dtype=torch.float32)
            stages[key] = st
            conn.send(("ok", st.weight_bytes + 2 * st.cache.k.numel() * st.cache.k.element_size()))
        elif op == "forward":
            _, key, meta, shape, dtype = cmd
            x = torch.empty(shape, dtype=dtype)
            dist.recv(x, 0)
            t = time.perf_counter()
            out = stages[key].run_local(x, meta)  # the driver sent this stage's own slots and tables
            dt = time.perf_counter() - t
            conn.send((tuple(out.shape), out.dtype, dt))
            dist.send(out.contiguous(), 0)
        elif op == "free":
            stages.pop(cmd[1], None)
            conn.send(("ok",))
        elif op == "stop":
            break
    dist.destroy_process_group()


class DeviceProcesses:
    """N worker processes (ranks 1..N) and this driver (rank 0) in one gloo group."""

    def __init__(self, n: int, threads: int = 1) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        addr = f"tcp://127.0.0.1:{port}"
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for i in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(i + 1, n + 1, addr, b, threads), daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group("gloo", init_method=addr, rank=0, world_size=n + 1,
                                timeout=__import__("datetime").timedelta(seconds=SETUP_TIMEOUT_S))
        self._next = 0

    def build(self, dev: int, args: ModelArgs, seed: int, first: int, end: int, kv_blocks: int,
              block_size: int) -> ShadowStage:
        key = self._next
        self._next += 1
        self.conns[dev].send(("build", key, args, seed, first, end, kv_blocks, block_size))
        status, nbytes = self.conns[dev].recv()
        return ShadowStage(key, args, first, end, ShadowCache(kv_blocks, block_size, "cpu"), nbytes)

    def run(self, calls: list[tuple[int, ShadowStage, torch.Tensor, StepMeta]]) -> list[tuple[torch.Tensor, float]]:
        """Run stage calls [(device, shadow stage, input, meta)]: every worker starts before any result
        is collected, so calls on different devices overlap."""
        try:
            return self._run(calls)
        except (EOFError, OSError, RuntimeError) as e:
            for dev in {c[0] for c in calls}:  # the peer's socket closes before its process is reaped
                self.procs[dev].join(timeout=REAP_WAIT_S)
            dead = self.dead()
            if not dead:
                raise
            codes = ", ".join(f"{i} (exit code {self.procs[i].exitcode})" for i in dead)
            raise DeviceDied(f"device process {codes} died ({type(e).__name__})") from None

    def _run(self, calls):
        reqs = []
        for dev, st, x, meta in calls:
            self.conns[dev].send(("forward", st.key, st.local_meta(meta), tuple(x.shape), x.dtype))
            reqs.append(dist.isend(x.contiguous(), dev + 1))
        outs = []
        for (dev, _, _, _), rq in zip(calls, reqs):
            rq.wait()
            shape, dtype, dt = self.conns[dev].recv()
            out = torch.empty(shape, dtype=dtype)
            dist.recv(out, dev + 1)
            outs.append((out, dt))
        return outs

    def free(self, dev: int, st: ShadowStage) -> None:
        self.conns[dev].send(("free", st.key))
        self.conns[dev].recv()

    def dead(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if not p.is_alive()]

    def close(self) -> None:
        for c, p in zip(self.conns, self.procs):
            try:
                if p.is_alive():
                    c.send(("stop",))
            except (BrokenPipeError, OSError):
                pass  # the worker is already gone: nothing to stop
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
