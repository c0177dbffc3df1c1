"""Processes as devices: one worker process per device holds that device's stages (weights and KV
tensors); the coordinator (this process) keeps the scheduling, the sampling and the block
accounting, and drives the workers over torch.distributed (gloo on CPU, `transfer.Channel`).

So that a heterogeneous pipeline and its inflight refactoring (FlexPipe §6.3) can be exercised on
a CPU with real process boundaries:
- serving: `RemoteStage` is a stage the engine calls like a local one; a stage's hidden states go
  from its worker straight to the next stage's worker, and only the last stage's logits come back,
  so the workers compute different micro-batches at once (the engine is unchanged: a non-last
  stage returns a `Pending` handle, which the engine passes on as it would a tensor),
- refactoring: `ProcFabric` loads new stages from the coordinator's host weight cache over the
  wire, and moves KV blocks worker to worker directly (send on one, recv on the other).

Each worker runs its commands in the order the coordinator sent them, and the two halves of a
worker-to-worker transfer are sent one after the other; so the earliest unfinished transfer always
has both ends at it, and no cycle of blocked sends can form.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


from .kvcache import BlockTables
from .model import ModelArgs, StepMeta
from .stage import Stage, _full_name, local_meta
from .transfer import Channel, HostWeightCache, weight_names

COORD = 0  # the coordinator's rank


def _send_obj(obj: Any, dst: int) -> None:
    dist.send_object_list([obj], dst)


def _recv_obj(src: int) -> Any:
    box = [None]
    dist.recv_object_list(box, src)
    return box[0]


# --- worker side ---------------------------------------------------------------------------------
def _worker_main(rank: int, world: int, init: str, threads: int, timeout_s: float) -> None:
    torch.set_num_threads(threads)  # the devices share the host's cores; no oversubscription
    ch = Channel.open(rank, world, init, backend="gloo", timeout_s=timeout_s)
    stages: dict[int, Stage] = {}
    outs: dict[int, torch.Tensor] = {}  # hidden states waiting for the next stage, by handle
    while True:
        cmd = _recv_obj(COORD)
        op = cmd[0]
        if op == "fwd":  # input from the coordinator, another worker, or this one; output kept or returned
            _, sid, meta, shape, dtype, src, hid = cmd
            x = outs.pop(src[1]) if src[0] == "here" else ch.recv(torch.empty(shape, dtype=dtype), src[1])
            out = stages[sid].run_local(x, meta)
            if hid is None:  # the last stage: logits go back to the coordinator
                ch.send(out, COORD)
            else:
                outs[hid] = out
        elif op == "push":  # a kept output to the worker running the next stage
            _, hid, dst = cmd
            ch.send(outs.pop(hid), dst)
        elif op == "new":
            _, sid, args, first, end, kv_blocks, bs, dtype, label = cmd
            stages[sid] = Stage(args, first, end, "cpu", kv_blocks=kv_blocks, block_size=bs, dtype=dtype, label=label)
        elif op == "fill":  # from a stage here, or else the weights follow from the coordinator in this order
            _, sid, names, src = cmd
            st = stages[sid]
            params = {_full_name(n, st.first): p for n, p in st.named_parameters()}
            have = {_full_name(n, stages[src].first): p for n, p in stages[src].named_parameters()} if src is not None else {}
            with torch.no_grad():
                for name in names:
                    params[name].copy_(have[name] if src is not None else ch.recv(params[name].data, COORD))
        elif op == "warm":  # first use of a pair costs connection set-up: pay it before timing
            for peer in cmd[1]:
                if peer < rank:
                    ch.send(torch.zeros(1), peer)
                    ch.recv(torch.zeros(1), peer)
                else:
                    ch.recv(torch.zeros(1), peer)
                    ch.send(torch.zeros(1), peer)
        elif op == "send_kv":
            _, sid, layers, blocks, dst = cmd
            c, idx = stages[sid].cache, torch.tensor(blocks, dtype=torch.long)
            ch.send(c.k[layers].index_select(1, idx), dst)
            ch.send(c.v[layers].index_select(1, idx), dst)
        elif op == "recv_kv":
            _, sid, layers, blocks, src = cmd
            c, idx = stages[sid].cache, torch.tensor(blocks, dtype=torch.long)
            like = c.k[layers][:, : len(blocks)]
            c.k[layers].index_copy_(1, idx, ch.recv(like, src))
            c.v[layers].index_copy_(1, idx, ch.recv(like, src))
        elif op == "copy_kv":
            _, sid, layers, blocks, dsid, dlayers, dblocks = cmd
            s, d = stages[sid].cache, stages[dsid].cache
            si, di = torch.tensor(blocks, dtype=torch.long), torch.tensor(dblocks, dtype=torch.long)
            d.k[dlayers].index_copy_(1, di, s.k[layers].index_select(1, si))
            d.v[dlayers].index_copy_(1, di, s.v[layers].index_select(1, si))
        elif op == "drop":
            del stages[cmd[1]]
        elif op == "ping":
            _send_obj(("pong", sorted(stages)), COORD)
        elif op == "stop":
            break
    ch.close()


# --- coordinator side ----------------------------------------------------------------------------
class BlockView(BlockTables):
    """The coordinator's view of a remote stage's paged KV cache: the block accounting only (the
    tensors are in the worker), and the bytes a block holds there."""

    def __init__(self, num_blocks: int, block_size: int, bytes_per_block: int) -> None:
        super().__init__(num_blocks, block_size)
        self.bytes_per_block = bytes_per_block


class RemoteStage:
    """A stage living in a worker process; the engine calls it like a local Stage."""

    def __init__(self, cluster: "Cluster", sid: int, label: str, args: ModelArgs, first: int, end: int,
                 dtype: torch.dtype, kv_blocks: int, block_size: int) -> None:
        self.cluster, self.sid, self.label = cluster, sid, label
        self.rank = cluster.rank_of[label]
        self.args, self.first, self.end, self.dtype = args, first, end, dtype
        per_block = 2 * (end - first) * block_size * args.n_kv_heads * args.head_dim * dtype.itemsize
        self.cache = BlockView(kv_blocks, block_size, per_block)
        self.device = torch.device("cpu")

    @property
    def is_first(self) -> bool:
        return self.first == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.args.n_layers

    def __call__(self, x: "torch.Tensor | Pending", meta: StepMeta) -> "torch.Tensor | Pending":
        """Run this stage on x: token ids or hidden states from the coordinator, or a Pending output
        of the previous stage, which its worker sends here directly. Returns the logits (last stage:
        waits for them) or at once a Pending handle to the output, kept by this worker: so the
        workers compute different micro-batches at the same time, like devices."""
        cl = self.cluster
        m = local_meta(self.cache, meta)
        hid = None if self.is_last else next(cl._hids)
        if isinstance(x, Pending):
            if x.rank == self.rank:
                src = ("here", x.hid)
            else:
                _send_obj(("push", x.hid, self.rank), x.rank)
                src = ("rank", x.rank)
                cl.book(x.label, self.label, x.nbytes)
            _send_obj(("fwd", self.sid, m, x.shape, x.dtype, src, hid), self.rank)
        else:
            _send_obj(("fwd", self.sid, m, tuple(x.shape), x.dtype, ("rank", COORD), hid), self.rank)
            cl.book(COORD_LABEL, self.label, cl.ch.send(x, self.rank))
        if hid is not None:
            return Pending(self.rank, self.label, hid, (int(meta.positions.shape[0]), self.args.dim), self.dtype)
        out = cl.ch.recv(torch.empty(len(meta.req_ids), self.args.vocab_size), self.rank)
        cl.book(self.label, COORD_LABEL, out.numel() * out.element_size())
        return out


@dataclass(frozen=True)
class Pending:
    """A stage's output still in its worker (handle `hid`), to be pushed to the next stage's."""

    rank: int
    label: str
    hid: int
    shape: tuple[int, int]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize


COORD_LABEL = "coord"


class Cluster:
    """Worker processes, one per device label, and the process group joining them to this one.
    Use as a context manager; close() stops the workers."""

    def __init__(self, labels: list[str], threads: int = 1, timeout_s: float = 120.0) -> None:
        """`timeout_s`: the longest any transfer may wait (a worker that died fails the coordinator
        after this, rather than hanging it; 120 s is far above any wait of the tests or the bench)."""
        self.labels = list(labels)
        self.rank_of = {lab: i + 1 for i, lab in enumerate(self.labels)}
        self._dir = tempfile.TemporaryDirectory(prefix="flexpipe-workers-")
        init = f"file://{os.path.join(self._dir.name, 'rendezvous')}"
        world = len(self.labels) + 1
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_worker_main, args=(r, world, init, threads, timeout_s), daemon=True)
                      for r in range(1, world)]
        for p in self.procs:
            p.start()
        self.ch = Channel.open(COORD, world, init, backend="gloo", timeout_s=timeout_s)
        self.traffic: dict[str, int] = defaultdict(int)  # serving activations, "src->dst" -> bytes
        self._sids = itertools.count()
        self._hids = itertools.count()

    def book(self, src: str, dst: str, n: int) -> None:
        self.traffic[f"{src}->{dst}"] += n

    def next_sid(self) -> int:
        return next(self._sids)

    def ping(self, label: str) -> list[int]:
        """Round trip to a worker: returns once it has run every command sent before; its stage ids."""
        r = self.rank_of[label]
        _send_obj(("ping",), r)
        return _recv_obj(r)[1]

    def close(self) -> None:
        """Stop the workers; one that does not stop (or died) is terminated."""
        for r in self.rank_of.values():
            try:
                _send_obj(("stop",), r)
            except RuntimeError:  # that worker is gone
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        self.ch.close()
        self._dir.cleanup()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProcFabric:
    """The refactor's Fabric over a Cluster: weights from the coordinator's host cache, KV worker
    to worker. A stage's weights go out in one go between two engine steps (sends to one worker
    could not overlap that worker's serving anyway: it runs one command at a time); non-blocking
    sends were tried and made no difference on this CPU."""

    def __init__(self, cluster: Cluster, host_cache: HostWeightCache) -> None:
        self.cluster, self.host_cache = cluster, host_cache

    def warm(self, args: ModelArgs, dtype: torch.dtype = torch.float32) -> None:
        """Pay every first-use cost before anything is timed, as Channel.open does for NCCL
        communicators (the paper keeps set-up off the critical path): each pair's connection, and
        on each worker a first stage built and loaded (the first load into a fresh worker took
        ~0.8 s on this CPU, later ones 10-30 ms)."""
        for lab in self.cluster.labels:
            st, _, _ = self.load(args, 0, 1, lab, kv_blocks=1, block_size=1, dtype=dtype)
            self.release(st)
        ranks = sorted(self.cluster.rank_of.values())
        for r in ranks:
            _send_obj(("warm", [COORD] + [q for q in ranks if q != r]), r)
        for r in ranks:  # the lower rank of a pair receives first (as the workers do)
            self.cluster.ch.recv(torch.zeros(1), r)
            self.cluster.ch.send(torch.zeros(1), r)
        for lab in self.cluster.labels:
            self.cluster.ping(lab)

    def new_stage(self, args: ModelArgs, first: int, end: int, label: str, *, kv_blocks: int, block_size: int,
                  dtype: torch.dtype) -> RemoteStage:
        st = RemoteStage(self.cluster, self.cluster.next_sid(), label, args, first, end, dtype, kv_blocks, block_size)
        _send_obj(("new", st.sid, args, first, end, kv_blocks, block_size, dtype, label), st.rank)
        return st

    def fill(self, stage: RemoteStage, names: list[str], src: RemoteStage | None = None) -> int:
        """Weights `names` into `stage`: copied inside its worker from `src` (same worker), or sent
        from the coordinator's host cache. Returns bytes."""
        assert src is None or src.rank == stage.rank
        _send_obj(("fill", stage.sid, names, None if src is None else src.sid), stage.rank)
        n = 0
        for name in names:
            t = self.host_cache.tensors[name].to(stage.dtype).contiguous()
            n += self.cluster.ch.send(t, stage.rank) if src is None else t.numel() * t.element_size()
        return n

    def load(self, args: ModelArgs, first: int, end: int, label: str, *, kv_blocks: int, block_size: int,
             dtype: torch.dtype) -> tuple[RemoteStage, int, str]:
        """A whole stage from the host cache: (stage, bytes, "host")."""
        st = self.new_stage(args, first, end, label, kv_blocks=kv_blocks, block_size=block_size, dtype=dtype)
        return st, self.fill(st, weight_names(self.host_cache, args, first, end)), "host"

    def pipeline(self, args: ModelArgs, cuts: list[int], labels: list[str], *, kv_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32) -> list[RemoteStage]:
        """Stages for `cuts` on the devices `labels` (one each), for a PipelineEngine."""
        return [self.load(args, a, b, lab, kv_blocks=kv_blocks, block_size=block_size, dtype=dtype)[0]
                for (a, b), lab in zip(zip(cuts, cuts[1:]), labels)]

    def copy_kv(self, src: RemoteStage, src_layers: slice, src_blocks: list[int], dst: RemoteStage,
                dst_layers: slice, dst_blocks: list[int]) -> int:
        if not src_blocks:
            return 0
        if src.rank == dst.rank:
            _send_obj(("copy_kv", src.sid, src_layers, src_blocks, dst.sid, dst_layers, dst_blocks), src.rank)
        else:
            _send_obj(("send_kv", src.sid, src_layers, src_blocks, dst.rank), src.rank)
            _send_obj(("recv_kv", dst.sid, dst_layers, dst_blocks, src.rank), dst.rank)
        n_layers = len(range(*src_layers.indices(src.end - src.first)))
        return n_layers * len(src_blocks) * src.cache.bytes_per_block // (src.end - src.first)

    def release(self, stage: RemoteStage) -> None:
        _send_obj(("drop", stage.sid), stage.rank)

    def sync(self, stages: list[RemoteStage]) -> None:
        for lab in sorted({s.label for s in stages}):
            self.cluster.ping(lab)
