"""Inflight pipeline refactoring (FlexPipe §6.3, Fig. 6): change a running pipeline's stage cuts
or devices while requests keep decoding, without losing or restarting any of them.

Split (S -> 2S), merge (2S -> S) and move are all "new cuts on new devices":
1. Build the new stages from the host weight cache while the old pipeline keeps serving.
2. Pre-copy KV in rounds. Each new stage layer takes its KV from the old stage that holds that
   layer. A request's tokens below `valid[r]` are already copied; tokens computed since then are
   the dirty set (the paper's validity mask, Eq. 10), re-copied next round from the block that
   holds the first dirty token. Between rounds the old pipeline runs `steps_per_round` steps.
3. Stop starting micro-batches, let the in-flight ones finish (they still produce tokens), then
   pause: copy the last delta, switch the engine to the new stages, free the old ones.
The record says how long the pause (downtime) and the whole refactor took, bytes moved, rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from flexpipe_core.batcher import KVSet

from .engine import PipelineEngine
from .stage import Stage
from .transfer import HostWeightCache, move_kv, sync


@dataclass
class RefactorRecord:
    old_cuts: list[int]
    new_cuts: list[int]
    rounds: int
    weight_bytes: int
    kv_bytes: int
    pause_s: float
    duration_s: float
    steps_during: int  # pipeline steps served while the refactor was under way


def cuts_of(stages: list[Stage]) -> list[int]:
    return [stages[0].first] + [s.end for s in stages]


def _live(engine: PipelineEngine):
    for slot in engine.slots:
        yield from slot.running


class _Copier:
    """KV pre-copy from the old stages to the new ones, one request at a time, by layer ranges."""

    def __init__(self, old: list[Stage], new: list[Stage]) -> None:
        self.old, self.new = old, new
        self.valid: dict[int, int] = {}  # request id -> tokens already valid in the new caches
        self.bytes = 0
        # For each new stage: the (old stage, old local layers, new local layers) pieces it is made of.
        self.pieces = []
        for ns in new:
            parts = []
            for os_ in old:
                a, b = max(ns.first, os_.first), min(ns.end, os_.end)
                if a < b:
                    parts.append((os_, slice(a - os_.first, b - os_.first), slice(a - ns.first, b - ns.first)))
            self.pieces.append(parts)

    def copy(self, rid: int, n_tokens: int) -> int:
        """Bring request `rid` up to date for its first n_tokens tokens; returns dirty tokens copied."""
        start = self.valid.get(rid, 0)
        if n_tokens < start:  # preempted and recomputing since the last round: start over
            start = 0
        if n_tokens == start:
            return 0
        bs = self.old[0].cache.block_size
        first_block = start // bs
        for ns, parts in zip(self.new, self.pieces):
            ns.cache.allocate(rid, n_tokens)
            for os_, src_layers, dst_layers in parts:
                k, v = os_.cache.export_blocks(rid, first_block, src_layers)
                nb = -(-n_tokens // bs) - first_block
                k, v = k[:, :nb], v[:, :nb]
                idx = torch.tensor(ns.cache.table(rid)[first_block:first_block + nb], dtype=torch.long,
                                   device=ns.cache.device)
                ns.cache.k[dst_layers].index_copy_(1, idx, k.to(ns.cache.device, non_blocking=True))
                ns.cache.v[dst_layers].index_copy_(1, idx, v.to(ns.cache.device, non_blocking=True))
                self.bytes += 2 * k.numel() * k.element_size()
        self.valid[rid] = n_tokens
        return n_tokens - start

    def forget_gone(self, live_ids: set[int]) -> None:
        """Requests that finished or were preempted meanwhile give their new blocks back."""
        for rid in [r for r in self.valid if r not in live_ids]:
            for ns in self.new:
                ns.cache.free(rid)
            del self.valid[rid]


def refactor(engine: PipelineEngine, new_cuts: list[int], devices: list[str | torch.device],
             host_cache: HostWeightCache, *, kv_blocks: int | None = None, max_rounds: int = 4,
             steps_per_round: int = 1, stop_dirty_tokens: int = 64) -> RefactorRecord:
    old = engine.stages
    args, dtype = old[0].args, old[0].dtype
    assert new_cuts[0] == 0 and new_cuts[-1] == args.n_layers and len(devices) == len(new_cuts) - 1
    bs = old[0].cache.block_size
    kv_blocks = kv_blocks or old[0].cache.blocks.num_blocks
    t_start = time.perf_counter()
    steps0 = engine.steps

    # 1. new stages from the host cache; the old pipeline serves meanwhile (one step per stage loaded)
    new, weight_bytes = [], 0
    for (a, b), dev in zip(zip(new_cuts, new_cuts[1:]), devices):
        st, n, _ = host_cache.load_stage(args, a, b, dev, kv_blocks=kv_blocks, block_size=bs, dtype=dtype)
        new.append(st)
        weight_bytes += n
        if engine.has_work:
            engine.step()

    # 2. pre-copy rounds while serving
    copier = _Copier(old, new)
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        live = list(_live(engine))
        copier.forget_gone({r.id for r in live})
        dirty = sum(copier.copy(r.id, r.num_computed) for r in live)
        if dirty <= stop_dirty_tokens or not engine.has_work:
            break
        for _ in range(steps_per_round):
            if engine.has_work:
                engine.step()

    # 3. drain the wavefront (still producing tokens), then the pause: last delta + switch
    while engine.inflight:
        engine.step(start_new=False)
    sync(*(s.device for s in old + new))
    t_pause = time.perf_counter()
    live = list(_live(engine))
    copier.forget_gone({r.id for r in live})
    for r in live:
        copier.copy(r.id, r.num_computed)
        for ns in new:  # the new tables must cover what the request's old tables covered
            ns.cache.allocate(r.id, r.kv_tokens)
    for r in engine.waiting:  # preempted requests hold no KV anywhere
        assert r.kv_tokens == 0
    engine.stages = new
    engine.kv = KVSet([s.cache.blocks for s in new], watermark_blocks=engine.kv.watermark)
    for slot in engine.slots:
        slot.kv = engine.kv
    engine.add_slots(len(new) - len(engine.slots))  # one micro-batch per stage keeps a deeper pipeline busy
    sync(*(s.device for s in new))
    pause = time.perf_counter() - t_pause
    for s in old:  # old stages' weights and KV go away with them
        s.cache.k = s.cache.v = None  # type: ignore[assignment]
    return RefactorRecord(cuts_of(old), new_cuts, rounds, weight_bytes, copier.bytes, pause,
                          time.perf_counter() - t_start, engine.steps - steps0)
