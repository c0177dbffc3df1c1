"""Continuous batching for one micro-batch slot (vLLM v1 style: a batch is {request: num_tokens}).

Each iteration: running requests first (decodes, or the next chunk of a prefill), then new
requests from the instance's queue, within the slot's token budget and sequence cap. KV blocks are
taken on every stage before a step; when a running request cannot grow, the most recently admitted
request of the slot is preempted (recompute) until it can. Nothing is ever over-committed.

Balance (issue 11): the slots of a pipeline share one waiting queue, and a pipeline moves at the
pace of its biggest micro-batch. vLLM's pipeline-parallel engine gives each new request to the
virtual engine with the fewest unfinished requests; with `peers` set, a slot admits the head of the
queue only while it holds the least unfinished work (in tokens: `work(r)` summed over its running
requests) among its peer slots, so slot loads stay within one request's work of each other.
Without `peers` (the kernel's wavefront engine) any slot admits, as before.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from .blocks import BlockManager
from .request import Request
from .work import BatchWork


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
        # pool sizes are fixed for a KVSet's life (a refactor builds a new one); read on every routing
        self.capacity_tokens = min(m.num_blocks for m in managers) * self.block_size

    def fits(self, r: Request, total_tokens: int, reserve: int = 0) -> bool:
        """Whether every stage has the blocks to cover `total_tokens` of r, leaving `reserve` free."""
        if total_tokens <= r.kv_tokens:
            return True
        bs = self.block_size
        need = -(-total_tokens // bs) - r.kv_tokens // bs
        return not any(m.num_free < need + reserve for m in self.managers)

    def try_grow(self, r: Request, total_tokens: int, reserve: int = 0) -> bool:
        """Make the request's blocks cover `total_tokens` on every stage, or change nothing."""
        if total_tokens <= r.kv_tokens:
            return True
        if not self.fits(r, total_tokens, reserve):
            return False
        bs = self.block_size
        for m in self.managers:
            m.grow(r.id, total_tokens)
        r.kv_tokens = -(-total_tokens // bs) * bs
        return True

    def free(self, r: Request) -> None:
        for m in self.managers:
            m.free(r.id)
        r.kv_tokens = 0


def _count(r: Request) -> float:
    return 1.0


class SlotBatcher:
    def __init__(self, kv: KVSet, waiting: deque[Request], token_budget: int, max_seqs: int,
                 peers: Callable[[], list["SlotBatcher"]] | None = None,
                 work: Callable[[Request], float] = _count) -> None:
        self.kv = kv
        self.waiting = waiting  # shared by all slots of the instance
        self.running: list[Request] = []
        self.token_budget = token_budget
        self.max_seqs = max_seqs
        self.sampled = 0  # tokens sampled by this slot's steps
        self.preempted_last = 0  # preemptions made by the last schedule() call
        self.admitted_last = 0  # admissions made by the last schedule() call
        self.peers = peers  # the active slots of the pipeline (balance), or None (no balance)
        self.work = work  # unfinished work a request brings (tokens; default: 1 per request, vLLM's rule)
        self.load = 0.0  # sum of work(r) over self.running

    def recount(self) -> None:
        """Recompute `load` after requests were moved between slots (refactor merge/switch)."""
        self.load = float(sum(self.work(r) for r in self.running))

    def _least_loaded(self) -> bool:
        if self.peers is None:
            return True
        load = self.load
        return all(load <= p.load for p in self.peers())

    def preempt(self, r: Request) -> None:
        self.preempted_last += 1
        self.load -= self.work(r)
        self.kv.free(r)
        r.num_computed = 0
        r.preemptions += 1
        r.slot = -1
        self.waiting.appendleft(r)  # first in line again, as vLLM does

    def _grow_or_preempt(self, r: Request, total_tokens: int) -> bool:
        """Grow r's KV, preempting the slot's newest requests until it fits; False if r itself went."""
        while not self.kv.try_grow(r, total_tokens):
            victim = self.running.pop()
            self.preempt(victim)
            if victim is r:
                return False
        return True

    def schedule(self, now: float, admit: bool, growth_reserve: int = 0) -> Batch | None:
        """`growth_reserve`: blocks to leave free when admitting (one per running sequence of the
        instance, so admissions do not immediately force preemptions: vLLM v0's watermark idea).

        The batch's cost summary (BatchWork) is accumulated in the same pass: tokens, causal
        attention pairs (token j of a chunk starting at c sees c + j + 1 positions), and the KV
        read by decodes (their whole context, through the paged-attention path)."""
        budget = self.token_budget
        self.preempted_last = 0
        self.admitted_last = 0
        items: list[tuple[Request, int]] = []
        n_tokens = attn = kv_read = n_decode = 0
        has_decode = False
        running, kv = self.running, self.kv
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            c = r.num_computed
            n = r.num_tokens - c
            if n > budget:
                n = budget
            if c + n > r.kv_tokens and not self._grow_or_preempt(r, c + n):
                continue  # r itself was preempted (it was the newest); nothing after it remains
            items.append((r, n))
            budget -= n
            n_tokens += n
            if n == 1:
                attn += c + 1
                if c > 0:
                    kv_read += c + 1
                    n_decode += 1
                    has_decode = has_decode or r.generated > 0
            else:
                attn += n * c + n * (n + 1) // 2
            i += 1
        if admit:
            budget, n, a = self.admit(now, budget, kv.watermark + growth_reserve, items)
            n_tokens += n
            attn += a
        if not items:
            return None
        return Batch(items, BatchWork(n_tokens, len(items), attn, kv_read, n_decode), has_decode)

    def admit(self, now: float, budget: int, reserve: int, items: list[tuple[Request, int]]) -> tuple[int, int, int]:
        """Admit from the head of the queue while the budget, the sequence cap, the slot balance and
        KV (leaving `reserve` blocks free) allow; appends to `items`. Returns (budget left, tokens
        added, attention pairs added)."""
        waiting, running, kv = self.waiting, self.running, self.kv
        n_tokens = attn = 0
        while waiting and budget > 0 and len(running) < self.max_seqs and self._least_loaded():
            r = waiting[0]
            c = r.num_computed
            n = min(r.num_tokens - c, budget)
            if not kv.try_grow(r, c + n, reserve=reserve):
                break
            waiting.popleft()
            if r.admitted_s != r.admitted_s:  # NaN: first admission
                r.admitted_s = now
            running.append(r)
            self.load += self.work(r)
            self.admitted_last += 1
            items.append((r, n))
            budget -= n
            n_tokens += n
            attn += n * c + n * (n + 1) // 2
        return budget, n_tokens, attn

    def would_admit(self, budget: int, reserve: int) -> bool:
        """Whether admit() with this budget and reserve would take the queue's head (changes nothing)."""
        waiting = self.waiting
        if not waiting or budget <= 0 or len(self.running) >= self.max_seqs or not self._least_loaded():
            return False
        r = waiting[0]
        c = r.num_computed
        return self.kv.fits(r, c + min(r.num_tokens - c, budget), reserve)

    def advance(self, r: Request, n: int, now: float, compute_s: float, comm_s: float) -> bool:
        """r computed n tokens in a step: count them; True if that sampled a token (a first one
        sets first_token_s). Whether r is then finished is the caller's to act on."""
        r.num_computed += n
        r.compute_s += compute_s
        r.comm_s += comm_s
        if r.num_computed != r.num_tokens:
            return False
        r.generated += 1
        r.num_tokens += 1
        self.sampled += 1
        if r.generated == 1:
            r.first_token_s = now
        return True

    def postprocess(self, batch: Batch, now: float, compute_s: float, comm_s: float) -> list[Request]:
        """Advance token counts; returns the requests that finished (their KV is already freed)."""
        return self.postprocess_items(batch.items, now, compute_s, comm_s)

    def postprocess_items(self, items: list[tuple[Request, int]], now: float, compute_s: float,
                          comm_s: float) -> list[Request]:
        """postprocess for a step's (request, tokens) items (all it reads of the batch)."""
        finished: list[Request] = []
        for r, n in items:
            if self.advance(r, n, now, compute_s, comm_s) and r.generated >= r.output_tokens:
                r.finish_s = now
                self.kv.free(r)
                finished.append(r)
        if finished:
            self.running = [r for r in self.running if r.generated < r.output_tokens]
            for r in finished:
                self.load -= self.work(r)
        return finished
