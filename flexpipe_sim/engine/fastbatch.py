"""Fast-forwarded decode steps: a slot whose batch is all steady decodes costs O(what changed) per step.

Between changes (an admission, a prefill chunk, a preemption, a refactor), every running request
of a slot computes exactly one token per step: its context, generated count and critical-path
compute/comm times all advance by the same amounts. `FastSlotBatcher` keeps those advances in
slot-level counters (`tick`, `cum_compute`, `cum_comm`) instead of touching every request, and
applies them to a request only when something needs it (`_sync`): when it finishes, when its KV
must grow by a block, or when the slot leaves fast mode. The batch's cost summary follows from
one running sum (`ctx_sum`: attention pairs = KV read = sum of contexts + n). Two heaps say when
each request finishes and when it crosses its next KV block boundary, so a step does work for
those requests only.

Every decision is the step-by-step batcher's (flexpipe_core/batcher.py SlotBatcher): the fast path
is taken only when that batcher would form exactly this batch (every running request decodes, the
token budget holds them, nobody can be admitted, every KV growth fits), and otherwise the slot is
materialised and the ordinary path runs. `engine.fast_forward: false` uses SlotBatcher alone;
tests/test_fastforward.py checks both give the same per-request records (within float rounding:
summed step times are added in another order) on several scenarios.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from flexpipe_core.batcher import Batch, SlotBatcher
from flexpipe_core.request import Request
from flexpipe_core.work import BatchWork


class FastSlotBatcher(SlotBatcher):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fast = False  # running requests are lazy decoders (their fields lag by tick - r.ff_tick)
        self.tick = 0  # fast steps taken by this slot
        self.cum_compute = 0.0  # compute time summed over fast steps
        self.cum_comm = 0.0
        self.ctx_sum = 0  # sum over running of num_computed (true values) while fast
        self._finish: list[tuple[int, int, Request]] = []  # (tick after which r is done, id, r)
        self._grow: list[tuple[int, int, Request]] = []  # (tick at which r needs a new KV block, id, r)
        self._last_fast = False
        self.fast_steps = 0  # statistics: steps taken on the fast path
        self.slow_steps = 0

    # --- lazy state ----------------------------------------------------------------------------
    def _sync(self, r: Request) -> None:
        d = self.tick - r.ff_tick
        if d:
            r.num_computed += d
            r.generated += d
            r.num_tokens += d
            r.compute_s += self.cum_compute - r.ff_compute
            r.comm_s += self.cum_comm - r.ff_comm
        r.ff_tick, r.ff_compute, r.ff_comm = self.tick, self.cum_compute, self.cum_comm

    def materialize(self) -> None:
        """Bring every running request's fields up to date and leave fast mode."""
        if self.fast:
            for r in self.running:
                self._sync(r)
            self.fast = False
            self._finish.clear()
            self._grow.clear()

    def _enter(self) -> bool:
        """Fast mode if every running request is a steady decode (one token to compute, sampled before)."""
        running = self.running
        if not running:
            return False
        for r in running:
            if r.num_tokens - r.num_computed != 1 or r.generated == 0:
                return False
        t, cc, cm = self.tick, self.cum_compute, self.cum_comm
        fin, grow = [], []
        s = 0
        for r in running:
            r.ff_tick, r.ff_compute, r.ff_comm = t, cc, cm
            c = r.num_computed
            s += c
            fin.append((t + r.output_tokens - r.generated, r.id, r))
            grow.append((t + r.kv_tokens - c, r.id, r))
        heapify(fin)
        heapify(grow)
        self._finish, self._grow, self.ctx_sum, self.fast = fin, grow, s, True
        return True

    # --- the batcher's interface -------------------------------------------------------------
    def schedule(self, now: float, admit: bool, growth_reserve: int = 0) -> Batch | None:
        batch = self._fast_schedule(admit)
        if batch is not None:
            self._last_fast = True
            self.fast_steps += 1
            return batch
        self.materialize()
        self._last_fast = False
        self.slow_steps += 1
        return super().schedule(now, admit, growth_reserve)

    def _fast_schedule(self, admit: bool) -> Batch | None:
        running = self.running
        n = len(running)
        if n == 0 or n > self.token_budget:
            return None
        if admit and self.waiting and n < self.max_seqs and self.token_budget - n > 0 and self._least_loaded():
            return None  # the step-by-step batcher would try to admit
        if not self.fast and not self._enter():
            return None
        grow = self._grow
        t = self.tick
        if grow and grow[0][0] <= t:
            due = []
            while grow and grow[0][0] <= t:
                e = heappop(grow)
                if e[2].finish_s == e[2].finish_s:  # finished since (not NaN): a stale entry
                    continue
                due.append(e)
            if due:
                k = len(due)
                if any(m.num_free < k for m in self.kv.managers):
                    for e in due:  # not enough blocks for all: the ordinary path decides who is preempted
                        heappush(grow, e)
                    return None
                bs = self.kv.block_size
                for e in due:
                    r = e[2]
                    self._sync(r)
                    self.kv.try_grow(r, r.num_computed + 1)
                    heappush(grow, (t + bs, r.id, r))
        self.preempted_last = 0
        self.admitted_last = 0
        attn = self.ctx_sum + n
        return Batch([], BatchWork(n, n, attn, attn, n), True)

    def postprocess(self, batch: Batch, now: float, compute_s: float, comm_s: float) -> list[Request]:
        if not self._last_fast:
            return super().postprocess(batch, now, compute_s, comm_s)
        if not self.fast:
            # Materialised while this step was in flight (a refactor's KV round read the counts):
            # the step computed one token for each running request (none can leave mid-step).
            items = [(r, 1) for r in self.running]
            return super().postprocess(Batch(items, batch.work, True), now, compute_s, comm_s)
        self.tick += 1
        self.cum_compute += compute_s
        self.cum_comm += comm_s
        n = len(self.running)
        self.sampled += n
        self.ctx_sum += n
        fin = self._finish
        if not fin or fin[0][0] > self.tick:
            return []
        finished: list[Request] = []
        while fin and fin[0][0] <= self.tick:
            r = heappop(fin)[2]
            self._sync(r)
            r.finish_s = now
            self.ctx_sum -= r.num_computed
            self.kv.free(r)
            self.load -= self.work(r)
            finished.append(r)
        self.running = [r for r in self.running if r.finish_s != r.finish_s]
        return finished
