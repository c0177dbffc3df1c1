"""Fast-forwarded decode steps: a slot whose batch is all steady decodes costs O(what changed) per step.

A running request that decodes (one token to compute, sampled before) advances by the same amounts
every step: context, generated count, critical-path compute and comm times. `FastSlotBatcher`
keeps those advances for all such "lazy" requests in slot-level counters (`tick`, `cum_compute`,
`cum_comm`) instead of touching each, and applies them to a request only when something needs it
(`_sync`): when it finishes or when the slot is materialised.
The lazy part of a batch's cost summary follows from one running sum (`ctx_sum`: attention pairs
= KV read = sum of contexts + n). A heap says when each lazy request finishes. Requests still
prefilling, and admissions, are handled one by one as in SlotBatcher (the `explicit` list); once
one has sampled a token it turns lazy. A step costs O(explicit requests + those finishing), not
O(running).

KV growth is counted by phase. A lazy request's context fills its last block every block size
(bs) ticks, at ticks of one residue mod bs (its phase: it turns lazy with less than a block of
room, so its first growth is within bs ticks); the step scheduled at tick t grows `_gc[t % bs]`
requests by a block, all counted in bulk on the block counters (`_gt`: the last tick grown). A
request's own blocks and `kv_tokens` catch up when it is synced (`kv_owed`), before anything
reads them (its finish, materialise). The simulator's KV is BlockCounter (instance._kv_set), which
this counts; run-ahead windows take growths back by setting `_gt` back (engine/runahead.py settle).

Every decision is the step-by-step batcher's (flexpipe_core/batcher.py SlotBatcher): the fast path
runs only where that batcher would form exactly this batch (the token budget holds every running
request's tokens, so their order cannot matter; every KV growth fits, so nobody is preempted;
admissions then run the same loop), and otherwise the slot is materialised and the ordinary path
runs. `engine.fast_forward: false` uses SlotBatcher alone;
tests/test_fastforward.py checks both give the same per-request records (within float rounding:
summed step times are added in another order) on several scenarios.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Callable

from flexpipe_core.batcher import Batch, SlotBatcher
from flexpipe_core.blocks import BlockCounter
from flexpipe_core.request import Request
from flexpipe_core.work import BatchWork


class FastSlotBatcher(SlotBatcher):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fast = False  # lazy/explicit bookkeeping is live (else: plain SlotBatcher state)
        self.tick = 0  # fast steps taken by this slot
        self.cum_compute = 0.0  # compute time summed over fast steps
        self.cum_comm = 0.0
        self.ctx_sum = 0  # sum of num_computed (true values) over the lazy requests
        self.n_lazy = 0
        self.explicit: list[Request] = []  # running requests that are not lazy, in running order
        self._finish: list[tuple[int, int, Request]] = []  # (tick after which r is done, id, r)
        self._gc: list[int] = []  # lazy requests per KV phase (tick mod block size at which they grow)
        self._gt = -1  # the last tick whose KV growth was made
        self._last_fast = False
        self._step_lazy = 0  # lazy requests in the batch in flight
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
        k = self.kv_owed(r)
        if k:  # the blocks its phase grew since its last sync
            bs = self.kv.block_size
            r.ff_due += k * bs
            r.kv_tokens += k * bs
            for m in self.kv.managers:
                m.held[r.id] += k

    def kv_owed(self, r: Request) -> int:
        """Blocks lazy request r's phase grew (counted on the block counters) since its blocks and
        kv_tokens were last brought up to date."""
        g = self._gt
        return (g - r.ff_due) // self.kv.block_size + 1 if g >= r.ff_due else 0

    def _make_lazy(self, r: Request) -> bool:
        """r decodes from now on: its fields are current as of this tick. False where its KV has a
        block or more of room (it stays explicit: its first growth would not be within a block's
        worth of ticks; none on 600 s of the paper's cv4 under FlexPipe, AlpaServe and static, as
        admission and decode steps grow KV to the tokens they compute)."""
        t = self.tick
        c = r.num_computed
        room = r.kv_tokens - c
        bs = self.kv.block_size
        if room >= bs:
            return False
        r.ff_tick, r.ff_compute, r.ff_comm = t, self.cum_compute, self.cum_comm
        r.ff_due = t + room  # its context fills its last block as the step at this tick schedules
        self._gc[r.ff_due % bs] += 1
        self.ctx_sum += c
        self.n_lazy += 1
        heappush(self._finish, (t + r.output_tokens - r.generated, r.id, r))
        return True

    def _grow_phase(self, t: int, extra: int = 0) -> bool:
        """The KV growth of the step scheduled at tick t: a block for every lazy request of its
        phase (the caller adds `extra`, the explicit requests' blocks, to the check: all or none
        fit), counted on every stage's block counter. False, changing nothing, where blocks are
        short (the ordinary path then decides who is preempted)."""
        k = self._gc[t % self.kv.block_size] if t != self._gt else 0
        if k or extra:
            managers = self.kv.managers
            if any(m.num_free < k + extra for m in managers):
                return False
            if k:
                for m in managers:
                    m.num_free -= k
                    m.allocated_total += k
        self._gt = t
        return True

    def step_lazy(self, compute_s: float, comm_s: float) -> None:
        """The step in flight completed: every lazy request in it computed one token (counters only;
        postprocess, and engine/runahead.py where nobody finishes)."""
        self.tick += 1
        self.cum_compute += compute_s
        self.cum_comm += comm_s
        n = self._step_lazy
        self.sampled += n
        self.ctx_sum += n

    def materialize(self) -> None:
        """Bring every running request's fields up to date and leave fast mode."""
        if self.fast:
            for r in self.running:
                if r.ff_tick >= 0:
                    self._sync(r)
            self.fast = False
            self._finish.clear()
            self.explicit.clear()
            self.ctx_sum = self.n_lazy = 0

    def _enter(self) -> None:
        if not all(type(m) is BlockCounter for m in self.kv.managers):
            raise TypeError("FastSlotBatcher counts KV growth in bulk: its KV must be BlockCounters")
        self.fast = True
        self.ctx_sum = self.n_lazy = 0
        self.explicit = []
        self._gc = [0] * self.kv.block_size
        self._gt = self.tick - 1  # nothing grown at this tick yet
        for r in self.running:
            if not (r.num_tokens - r.num_computed == 1 and r.generated > 0 and self._make_lazy(r)):
                r.ff_tick = -1
                self.explicit.append(r)

    def ungrow(self, last: int) -> int:
        """Take back the KV growths made at ticks after `last` (engine/runahead.py undoing a
        window's steps past an arrival; nobody turned lazy or finished in between): the blocks
        on every stage's counter, and the lazy requests' own (owed, kv_owed) with `_gt`. Returns
        the blocks per stage taken back."""
        gc, bs = self._gc, self.kv.block_size
        rounds, rest = divmod(self._gt - last, bs) if self._gt > last else (0, 0)
        k = rounds * sum(gc)  # every phase grew `rounds` times, then the first `rest` after `last`
        for t in range(last + 1, last + 1 + rest):
            k += gc[t % bs]
        if k:
            for m in self.kv.managers:
                m.num_free += k
                m.allocated_total -= k
        self._gt = last
        return k

    # --- the batcher's interface -------------------------------------------------------------
    def schedule(self, now: float, admit: bool, growth_reserve: int | Callable[[], int] = 0) -> Batch | None:
        """`growth_reserve` may be a callable (the instance's running count): it is called only where
        the ordinary path would use it, and before anything that could change it, so its value is
        the one at the call (the fast path never preempts; a fallback has changed nothing yet)."""
        if not self.fast:
            self._enter()
        batch = self._fast_schedule(now, admit, growth_reserve)
        if batch is not _ORDINARY:
            self._last_fast = True
            self.fast_steps += 1
            return batch
        self.materialize()
        self._last_fast = False
        self.slow_steps += 1
        return super().schedule(now, admit, growth_reserve() if callable(growth_reserve) else growth_reserve)

    def _fast_schedule(self, now: float, admit: bool, growth_reserve: int):
        budget = self.token_budget
        explicit = self.explicit
        n_lazy = self.n_lazy
        need = n_lazy
        for r in explicit:
            need += r.num_tokens - r.num_computed
        if need > budget:
            return _ORDINARY  # the budget binds: who gets how much depends on order
        kv = self.kv
        bs = kv.block_size
        # KV growth of every running request, checked all together (then order cannot matter)
        blocks = 0
        for r in explicit:
            total = r.num_tokens
            if total > r.kv_tokens:
                blocks += -(-total // bs) - r.kv_tokens // bs
        if not self._grow_phase(self.tick, blocks):
            return _ORDINARY  # not enough for all: the ordinary path decides who is preempted
        items: list[tuple[Request, int]] = []
        n_tokens = n_lazy
        attn = kv_read = (self.ctx_sum + n_lazy) if n_lazy else 0
        n_decode = n_lazy
        has_decode = n_lazy > 0
        for r in explicit:  # the ordinary path's running loop, for the requests that are not lazy
            c = r.num_computed
            n = r.num_tokens - c
            if c + n > r.kv_tokens:
                kv.try_grow(r, c + n)
            items.append((r, n))
            n_tokens += n
            if n == 1:
                attn += c + 1
                if c > 0:
                    kv_read += c + 1
                    n_decode += 1
                    has_decode = has_decode or r.generated > 0
            else:
                attn += n * c + n * (n + 1) // 2
        budget -= need
        self.preempted_last = 0
        self.admitted_last = 0
        if admit and self.waiting:  # the ordinary path's admission loop
            first = len(items)
            reserve = kv.watermark + (growth_reserve() if callable(growth_reserve) else growth_reserve)
            budget, n, a = self.admit(now, budget, reserve, items)
            n_tokens += n
            attn += a
            for r, _ in items[first:]:
                r.ff_tick = -1
                explicit.append(r)
        if not items and not n_lazy:
            return None
        self._step_lazy = n_lazy
        return Batch(items, BatchWork(n_tokens, n_lazy + len(items), attn, kv_read, n_decode), has_decode)

    def postprocess(self, batch: Batch, now: float, compute_s: float, comm_s: float) -> list[Request]:
        if not self._last_fast:
            return super().postprocess(batch, now, compute_s, comm_s)
        if not self.fast:
            # Materialised while this step was in flight (a refactor's KV round read the counts):
            # every running request was in the batch (the budget held them all): the lazy ones
            # computed one token each, the explicit ones what the batch says.
            lazy = [(r, 1) for r in self.running if r.ff_tick >= 0]
            return self.postprocess_items(lazy + batch.items, now, compute_s, comm_s)
        self.step_lazy(compute_s, comm_s)
        t = self.tick
        finished: list[Request] = []
        fin = self._finish
        while fin and fin[0][0] <= t:
            r = heappop(fin)[2]
            self._sync(r)
            self._gc[r.ff_due % self.kv.block_size] -= 1
            r.finish_s = now
            self.ctx_sum -= r.num_computed
            self.n_lazy -= 1
            self.kv.free(r)
            self.load -= self.work(r)
            finished.append(r)
        if batch.items:
            changed = False
            for r, k in batch.items:  # the ordinary postprocess, for the explicit requests
                if self.advance(r, k, now, compute_s, comm_s):
                    changed = True
                    if r.generated >= r.output_tokens:
                        r.finish_s = now
                        self.kv.free(r)
                        self.load -= self.work(r)
                        finished.append(r)
                    elif not self._make_lazy(r):  # it decodes from now on
                        r.ff_tick = -1  # (with a block or more of room: explicit still)
            if changed:
                self.explicit = [r for r in self.explicit if r.ff_tick < 0 and r.finish_s != r.finish_s]
        if finished:
            self.running = [r for r in self.running if r.finish_s != r.finish_s]
        return finished


_ORDINARY = object()  # _fast_schedule's answer when only the ordinary path decides as it would
