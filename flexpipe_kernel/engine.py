"""Continuous batching over a pipeline of stages, with micro-batches in flight.

The scheduler is the simulator's own (flexpipe_core.batcher): one `SlotBatcher` per
micro-batch slot and one `KVSet` over every stage's block manager, so a batch here is formed
exactly as the simulator forms it. Execution is a wavefront: each `step()` first starts a new
micro-batch in stage 0 for an idle slot, then advances every in-flight micro-batch by one stage,
deepest first, so every stage runs at most one micro-batch per step. On GPUs on different devices,
those launches overlap (CUDA runs them asynchronously); on CPU they run one after another with
the same results.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from flexpipe_core.batcher import Batch, KVSet, SlotBatcher
from flexpipe_core.request import Request

from .model import StepMeta
from .stage import Stage


@dataclass
class Generation:
    """Kernel-side state of one request: its token ids and when each generated token appeared."""

    req: Request
    tokens: list[int]
    token_times: list[float] = field(default_factory=list)
    sampler: torch.Generator | None = None

    @property
    def output(self) -> list[int]:
        return self.tokens[self.req.prompt_tokens:]


@dataclass
class MicroBatch:
    slot: int
    batch: Batch
    meta: StepMeta
    x: torch.Tensor
    stage: int = 0


class PipelineEngine:
    def __init__(self, stages: list[Stage], *, token_budget: int = 512, max_seqs: int = 64,
                 micro_batches: int | None = None, temperature: float = 0.0, seed: int = 0,
                 clock: Callable[[], float] = time.perf_counter,
                 on_token: Callable[[int, int], None] | None = None, epoch: float | None = None) -> None:
        self.stages = stages
        self.kv = KVSet([s.cache.blocks for s in stages], watermark_blocks=1)
        self.waiting: deque[Request] = deque()
        n = micro_batches or len(stages)
        self.slots = [SlotBatcher(self.kv, self.waiting, token_budget, max_seqs) for _ in range(n)]
        self.busy = [False] * n
        self.inflight: list[MicroBatch] = []
        self.gens: dict[int, Generation] = {}
        self.finished: list[Generation] = []
        self.temperature = temperature
        self.seed = seed
        self._clock = clock
        self._t0 = clock() if epoch is None else epoch  # epoch: a shared clock's zero (the live backend's run start)
        self._rr = 0
        self._next_id = 0
        self.on_token = on_token  # streaming: called with (request id, token id) as tokens appear
        self.steps = 0
        self.stage_runs = 0
        self.last_runs: list[tuple[int, Batch]] = []
        # Runs one tick's stage calls [(stage index, input, meta)] -> outputs; None: one after another.
        # The live backend runs them on one worker per device, so stages on different devices overlap.
        self.stage_runner: Callable[[list[tuple[int, torch.Tensor, StepMeta]]], list[torch.Tensor]] | None = None

    def now(self) -> float:
        return self._clock() - self._t0

    def add_slots(self, n: int) -> None:
        """More micro-batch slots (after a split); running requests stay in theirs."""
        for _ in range(max(0, n)):
            s0 = self.slots[0]
            self.slots.append(SlotBatcher(self.kv, self.waiting, s0.token_budget, s0.max_seqs))
            self.busy.append(False)

    # --- requests ----------------------------------------------------------------------------
    def add_request(self, prompt: list[int], max_new_tokens: int, req_id: int | None = None) -> int:
        rid = self._next_id if req_id is None else req_id
        self._next_id = max(self._next_id, rid) + 1
        r = Request(rid, "kernel", self.now(), len(prompt), max_new_tokens)
        sampler = None
        if self.temperature > 0:
            sampler = torch.Generator().manual_seed(self.seed * 1_000_003 + rid)  # per request: batch-independent
        self.gens[rid] = Generation(r, list(prompt), sampler=sampler)
        self.waiting.append(r)
        return rid

    def submit(self, req: Request, prompt: list[int]) -> None:
        """Serve an existing request record (the live backend's: its arrival time and the stamps this
        engine sets stay on the caller's record). Greedy unless `temperature` > 0, as add_request."""
        sampler = torch.Generator().manual_seed(self.seed * 1_000_003 + req.id) if self.temperature > 0 else None
        self.gens[req.id] = Generation(req, list(prompt), sampler=sampler)
        self._next_id = max(self._next_id, req.id + 1)
        self.waiting.append(req)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.inflight or any(s.running for s in self.slots))

    @property
    def running(self) -> int:
        return sum(len(s.running) for s in self.slots)

    # --- one wavefront step ---------------------------------------------------------------------
    def step(self, start_new: bool = True) -> None:
        """One wavefront tick. `start_new=False` only advances what is in flight (draining)."""
        if start_new:
            self._start_micro_batch()
        self.stage_runs = len(self.inflight)  # stages working in this tick (one micro-batch each)
        self.last_runs = [(mb.stage, mb.batch) for mb in self.inflight]  # (stage index, batch): what this tick computes
        order = sorted(self.inflight, key=lambda m: -m.stage)
        calls = [(mb.stage, mb.x, mb.meta) for mb in order]
        outs = self.stage_runner(calls) if self.stage_runner else [self.stages[k](x, m) for k, x, m in calls]
        for mb, out in zip(order, outs):
            mb.stage += 1
            if mb.stage == len(self.stages):
                self._complete(mb, out)
            else:
                mb.x = out
        self.inflight = [mb for mb in self.inflight if mb.stage < len(self.stages)]
        self.steps += 1

    def run(self, max_steps: int = 1_000_000) -> list[Generation]:
        for _ in range(max_steps):
            if not self.has_work:
                break
            self.step()
        return self.finished

    def _start_micro_batch(self) -> None:
        n = len(self.slots)
        for k in range(n):
            s = (self._rr + k) % n
            if self.busy[s]:
                continue
            batch = self.slots[s].schedule(self.now(), admit=True, growth_reserve=self.running)
            if batch is None:
                continue
            self._rr = s + 1
            self.busy[s] = True
            meta, x = self._inputs(batch)
            self.inflight.append(MicroBatch(s, batch, meta, x))
            return

    def _inputs(self, batch: Batch) -> tuple[StepMeta, torch.Tensor]:
        ids, pos, lens, ctx, rids = [], [], [], [], []
        for r, n in batch.items:
            c = r.num_computed
            ids.extend(self.gens[r.id].tokens[c:c + n])
            pos.extend(range(c, c + n))
            lens.append(n)
            ctx.append(c + n)
            rids.append(r.id)
        meta = StepMeta(rids, torch.tensor(pos, dtype=torch.long), lens, ctx)
        return meta, torch.tensor(ids, dtype=torch.long)

    def _sample(self, logits: torch.Tensor, gen: Generation) -> int:
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=gen.sampler))

    def _complete(self, mb: MicroBatch, logits: torch.Tensor) -> None:
        now = self.now()
        for i, (r, n) in enumerate(mb.batch.items):
            if r.num_computed + n == r.num_tokens:  # this step finishes its prefill or decodes: sample
                gen = self.gens[r.id]
                tok = self._sample(logits[i], gen)
                gen.tokens.append(tok)
                gen.token_times.append(now)
                if self.on_token:
                    self.on_token(r.id, tok)
        for r in self.slots[mb.slot].postprocess(mb.batch, now, 0.0, 0.0):
            self.finished.append(self.gens[r.id])
        self.busy[mb.slot] = False
