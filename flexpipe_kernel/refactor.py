"""Inflight pipeline refactoring (FlexPipe §6.3, Fig. 6): change a running pipeline's stage cuts
or devices while requests keep decoding, without losing or restarting any of them.

Split (S -> 2S), merge (2S -> S) and move are all "new cuts on new devices":
1. Build the new stages while the old pipeline keeps serving, a layer at a time with one serving
   step after each (so no token waits for more than one layer's load): a layer that an old stage
   on the same device holds is copied there, any other comes from the host weight cache (§7).
2. Pre-copy KV in rounds. Each new stage layer takes its KV from the old stage that holds that
   layer; a round moves every request's dirty blocks in one transfer per (old, new) stage pair. A request's tokens below `valid[r]` are already copied; tokens computed since then are
   the dirty set (the paper's validity mask, Eq. 10), re-copied next round from the block that
   holds the first dirty token. Between rounds the old pipeline runs `steps_per_round` steps.
3. Stop starting micro-batches, let the in-flight ones finish (they still produce tokens), then
   pause: copy the last delta, switch the engine to the new stages, free the old ones.
The record says how long the pause and the whole refactor took, bytes moved per link, rounds.

Stages may be of any size on any devices (a heterogeneous pipeline, issue 15): where the stages
live and how bytes move between them is a `Fabric` - `transfer.LocalFabric` for devices in this
process (GPUs, or logical CPU devices), `workers.ProcFabric` for one worker process per device.
Every byte is booked on the link it crosses, named "src->dst" by device label ("host" is the
weight cache), so a switch table can say which link a slow switch waited on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from flexpipe_core.batcher import KVSet

from .engine import PipelineEngine
from .model import ModelArgs
from .stage import Stage
from .transfer import HostWeightCache, LocalFabric, group_names, holds, weight_groups


class Fabric(Protocol):
    """Where stages live and how weights and KV reach them."""

    host_cache: HostWeightCache

    def new_stage(self, args: ModelArgs, first: int, end: int, label: str, *, kv_blocks: int, block_size: int,
                  dtype: torch.dtype) -> Stage:
        """An empty stage of layers [first, end) on device `label` (weights to be filled)."""

    def fill(self, stage: Stage, names: list[str], src: Stage | None = None) -> int:
        """Weights `names` into `stage`, from `src` (same device) or else the host cache; bytes."""

    def copy_kv(self, src: Stage, src_layers: slice, src_blocks: list[int], dst: Stage, dst_layers: slice,
                dst_blocks: list[int]) -> int:
        """Copy KV blocks src_blocks of src's layers src_layers into dst's; returns bytes."""

    def release(self, stage: Stage) -> None: ...

    def sync(self, stages: list[Stage]) -> None:
        """Wait until every transfer issued to these stages' devices has landed."""


@dataclass
class LinkBytes:
    weights: int = 0
    kv: int = 0


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
    old_devices: list[str] = field(default_factory=list)
    new_devices: list[str] = field(default_factory=list)
    links: dict[str, LinkBytes] = field(default_factory=dict)  # "src->dst" -> bytes over it
    t_begin: float = 0.0  # engine clock (engine.now()) when the refactor began,
    t_loaded: float = 0.0  # when the new stages' weights were in,
    t_pause: float = 0.0  # when the pause began,
    t_resume: float = 0.0  # and when the new pipeline took over
    live_ids: list[int] = field(default_factory=list)  # requests running when the pause began
    pause_kv_bytes: int = 0  # the last delta, copied inside the pause
    load_units: int = 0  # weight loads (a layer, the embedding or the head), one engine step after each

    def book(self, src: str, dst: str, *, weights: int = 0, kv: int = 0) -> None:
        lb = self.links.setdefault(f"{src}->{dst}", LinkBytes())
        lb.weights += weights
        lb.kv += kv


def cuts_of(stages: list[Stage]) -> list[int]:
    return [stages[0].first] + [s.end for s in stages]


def _live(engine: PipelineEngine):
    for slot in engine.slots:
        yield from slot.running


class _Copier:
    """KV pre-copy from the old stages to the new ones, one request at a time, by layer ranges."""

    def __init__(self, old: list[Stage], new: list[Stage], fabric: Fabric, rec: RefactorRecord) -> None:
        self.old, self.new, self.fabric, self.rec = old, new, fabric, rec
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

    def round(self, reqs: list[tuple[int, int]]) -> int:
        """Bring each (request id, n_tokens) up to date for its first n_tokens tokens, with one
        transfer per (old stage, new stage) piece carrying every request's dirty blocks (per-request
        transfers cost a round trip each across processes). Returns dirty tokens copied."""
        bs = self.old[0].cache.block_size
        batches: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
        dirty = 0
        for rid, n_tokens in reqs:
            start = self.valid.get(rid, 0)
            if n_tokens < start:  # preempted and recomputing since the last round: start over
                start = 0
            if n_tokens == start:
                continue
            first_block, last_block = start // bs, -(-n_tokens // bs)
            for i, (ns, parts) in enumerate(zip(self.new, self.pieces)):
                ns.cache.allocate(rid, n_tokens)
                dst_blocks = ns.cache.table(rid)[first_block:last_block]
                for j, (os_, _, _) in enumerate(parts):
                    src, dst = batches.setdefault((i, j), ([], []))
                    src += os_.cache.table(rid)[first_block:last_block]
                    dst += dst_blocks
            self.valid[rid] = n_tokens
            dirty += n_tokens - start
        for (i, j), (src, dst) in batches.items():
            os_, src_layers, dst_layers = self.pieces[i][j]
            n = self.fabric.copy_kv(os_, src_layers, src, self.new[i], dst_layers, dst)
            self.bytes += n
            self.rec.book(os_.label, self.new[i].label, kv=n)
        return dirty

    def forget_gone(self, live_ids: set[int]) -> None:
        """Requests that finished or were preempted meanwhile give their new blocks back."""
        for rid in [r for r in self.valid if r not in live_ids]:
            for ns in self.new:
                ns.cache.free(rid)
            del self.valid[rid]


def refactor(engine: PipelineEngine, new_cuts: list[int], devices: list[str | torch.device],
             fabric: Fabric | HostWeightCache, *, kv_blocks: int | None = None, max_rounds: int = 4,
             steps_per_round: int = 1, stop_dirty_tokens: int = 64) -> RefactorRecord:
    """Re-cut the engine's pipeline at `new_cuts` onto `devices` (labels the fabric knows; with a
    bare HostWeightCache, torch devices in this process)."""
    if isinstance(fabric, HostWeightCache):
        fabric = LocalFabric(fabric)
    old = engine.stages
    args, dtype = old[0].args, old[0].dtype
    assert new_cuts[0] == 0 and new_cuts[-1] == args.n_layers and len(devices) == len(new_cuts) - 1
    bs = old[0].cache.block_size
    kv_blocks = kv_blocks or old[0].cache.blocks.num_blocks
    t_start = time.perf_counter()
    steps0 = engine.steps
    rec = RefactorRecord(cuts_of(old), list(new_cuts), 0, 0, 0, 0.0, 0.0, 0, [s.label for s in old],
                         [str(d) for d in devices], t_begin=engine.now())

    # 1. new stages, a layer at a time, each layer from an old stage on the same device if one holds
    # it (no link crossed), else from the host cache; the old pipeline serves a step after each
    # layer, so no token waits for more than one layer's load
    new = []
    for (a, b), dev in zip(zip(new_cuts, new_cuts[1:]), devices):
        st = fabric.new_stage(args, a, b, str(dev), kv_blocks=kv_blocks, block_size=bs, dtype=dtype)
        new.append(st)
        for group in weight_groups(args, a, b):
            src = next((o for o in old if o.label == st.label and holds(o, group)), None)
            n = fabric.fill(st, group_names(fabric.host_cache, group), src)
            rec.weight_bytes += n
            rec.load_units += 1
            rec.book(src.label if src else "host", st.label, weights=n)
            if engine.has_work:
                engine.step()

    rec.t_loaded = engine.now()

    # 2. pre-copy rounds while serving
    copier = _Copier(old, new, fabric, rec)
    while rec.rounds < max_rounds:
        rec.rounds += 1
        live = list(_live(engine))
        copier.forget_gone({r.id for r in live})
        dirty = copier.round([(r.id, r.num_computed) for r in live])
        if dirty <= stop_dirty_tokens or not engine.has_work:
            break
        for _ in range(steps_per_round):
            if engine.has_work:
                engine.step()

    # 3. drain the wavefront (still producing tokens), then the pause: last delta + switch
    while engine.inflight:
        engine.step(start_new=False)
    fabric.sync(old + new)
    t_pause = time.perf_counter()
    rec.t_pause = engine.now()
    live = list(_live(engine))
    rec.live_ids = [r.id for r in live]
    copier.forget_gone({r.id for r in live})
    before = copier.bytes
    copier.round([(r.id, r.num_computed) for r in live])
    for r in live:
        for ns in new:  # the new tables must cover what the request's old tables covered
            ns.cache.allocate(r.id, r.kv_tokens)
    rec.pause_kv_bytes = copier.bytes - before
    for r in engine.waiting:  # preempted requests hold no KV anywhere
        assert r.kv_tokens == 0
    engine.stages = new
    engine.kv = KVSet([s.cache.blocks for s in new], watermark_blocks=engine.kv.watermark)
    for slot in engine.slots:
        slot.kv = engine.kv
    engine.add_slots(len(new) - len(engine.slots))  # one micro-batch per stage keeps a deeper pipeline busy
    fabric.sync(new)
    rec.pause_s = time.perf_counter() - t_pause
    rec.t_resume = engine.now()
    for s in old:  # old stages' weights and KV go away with them
        fabric.release(s)
    rec.kv_bytes = copier.bytes
    rec.duration_s = time.perf_counter() - t_start
    rec.steps_during = engine.steps - steps0
    return rec


def longest_gap(engine: PipelineEngine, ids: list[int], start: float = float("-inf"),
                end: float = float("inf")) -> float:
    """Longest time the requests `ids` together got no token, between their first and last token
    in [start, end]: what downtime() measures, for a run without a switch (its noise floor)."""
    times = sorted(t for rid in ids for t in engine.gens[rid].token_times if start <= t <= end)
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def downtime(engine: PipelineEngine, rec: RefactorRecord) -> float:
    """Seconds no token was produced for the requests in flight at the switch: the longest gap in
    their merged token stream from the refactor's start to their first token after it (a gap
    during pre-copy counts as much as the pause itself). Call after the engine ran past the switch."""
    times = sorted(t for rid in rec.live_ids for t in engine.gens[rid].token_times)
    after = [t for t in times if t >= rec.t_resume]
    if not after:  # every one of them finished before the switch
        return 0.0
    window = [rec.t_begin] + [t for t in times if rec.t_begin <= t < rec.t_resume] + [after[0]]
    return max(b - a for a, b in zip(window, window[1:]))
