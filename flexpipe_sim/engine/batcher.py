"""Continuous batching for one micro-batch slot (vLLM v1 style: a batch is {request: num_tokens}).

Each iteration: running requests first (decodes, or the next chunk of a prefill), then new
requests from the instance's queue, within the slot's token budget and sequence cap. KV blocks are
taken on every stage before a step; when a running request cannot grow, the most recently admitted
request of the slot is preempted (recompute) until it can. Nothing is ever over-committed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..costmodel import BatchWork
from ..memory import BlockManager
from .request import Request


@dataclass
class Batch:
    items: list[tuple[Request, int]]  # (request, tokens computed this step)
    work: BatchWork
    has_decode: bool  # some sequence's input is the token sampled by the previous step


class KVSet:
    """The KV block managers of every stage of one pipeline, grown and freed together
    (every stage holds KV for the same tokens, for its own layers)."""

    def __init__(self, managers: list[BlockManager], watermark_blocks: int) -> None:
        self.managers = managers
        self.block_size = managers[0].block_size
        self.watermark = watermark_blocks

    @property
    def capacity_tokens(self) -> int:
        return min(m.num_blocks for m in self.managers) * self.block_size

    def _missing(self, req_id: int, total_tokens: int) -> int:
        held = len(self.managers[0].tables.get(req_id, ()))
        return -(-total_tokens // self.block_size) - held

    def try_grow(self, req_id: int, total_tokens: int, reserve: int = 0) -> bool:
        need = self._missing(req_id, total_tokens)
        if need <= 0:
            return True
        if any(m.num_free < need + reserve for m in self.managers):
            return False
        for m in self.managers:
            m.grow(req_id, total_tokens)
        return True

    def free(self, req_id: int) -> None:
        for m in self.managers:
            m.free(req_id)


class SlotBatcher:
    def __init__(self, kv: KVSet, waiting: deque[Request], token_budget: int, max_seqs: int) -> None:
        self.kv = kv
        self.waiting = waiting  # shared by all slots of the instance
        self.running: list[Request] = []
        self.token_budget = token_budget
        self.max_seqs = max_seqs

    def preempt(self, r: Request) -> None:
        self.kv.free(r.id)
        r.num_computed = 0
        r.preemptions += 1
        r.slot = -1
        self.waiting.appendleft(r)  # first in line again, as vLLM does

    def schedule(self, now: float, admit: bool, growth_reserve: int = 0) -> Batch | None:
        """`growth_reserve`: blocks to leave free when admitting (one per running sequence of the
        instance, so admissions do not immediately force preemptions: vLLM v0's watermark idea)."""
        budget = self.token_budget
        items: list[tuple[Request, int]] = []
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            n = min(r.num_tokens - r.num_computed, budget)
            while not self.kv.try_grow(r.id, r.num_computed + n):
                victim = self.running.pop()
                self.preempt(victim)
                if victim is r:
                    break
            else:
                items.append((r, n))
                budget -= n
                i += 1
        while admit and self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            r = self.waiting[0]
            n = min(r.num_tokens - r.num_computed, budget)
            if not self.kv.try_grow(r.id, r.num_computed + n, reserve=self.kv.watermark + growth_reserve):
                break
            self.waiting.popleft()
            if r.admitted_s != r.admitted_s:  # NaN: first admission
                r.admitted_s = now
            self.running.append(r)
            items.append((r, n))
            budget -= n
        if not items:
            return None
        return Batch(items, _work(items), any(n == 1 and r.generated > 0 for r, n in items))

    def postprocess(self, batch: Batch, now: float, compute_s: float, comm_s: float) -> list[Request]:
        """Advance token counts; returns the requests that finished (their KV is already freed)."""
        finished: list[Request] = []
        for r, n in batch.items:
            r.num_computed += n
            r.compute_s += compute_s
            r.comm_s += comm_s
            if r.num_computed == r.num_tokens:
                r.generated += 1
                if r.generated == 1:
                    r.first_token_s = now
                if r.generated >= r.output_tokens:
                    r.finish_s = now
                    self.kv.free(r.id)
                    finished.append(r)
        if finished:
            self.running = [r for r in self.running if not r.is_finished]
        return finished


def _work(items: list[tuple[Request, int]]) -> BatchWork:
    n_tokens = attn = kv_read = 0
    for r, n in items:
        c = r.num_computed
        n_tokens += n
        attn += n * c + n * (n + 1) // 2  # causal: token j of the chunk sees c + j + 1 positions
        if n == 1 and c > 0:
            kv_read += c + 1  # a decode reads its whole context through the paged-attention path
    return BatchWork(n_tokens=n_tokens, n_seqs=len(items), attn_pairs=attn, kv_tokens=kv_read)
