"""Fast-forwarded decode steps: a slot whose batch is all steady decodes costs O(what changed) per step.

A running request that decodes (one token to compute, sampled before) advances by the same amounts
every step: context, generated count, critical-path compute and comm times. `FastSlotBatcher`
keeps those advances for all such "lazy" requests in slot-level counters (`tick`, `cum_compute`,
`cum_comm`) instead of touching each, and applies them to a request only when something needs it
(`_sync`): when it finishes, when its KV must grow by a block, or when the slot is materialised.
The lazy part of a batch's cost summary follows from one running sum (`ctx_sum`: attention pairs
= KV read = sum of contexts + n). A heap says when each lazy request finishes and a sorted list
when it crosses its next KV block boundary. Requests still prefilling, and admissions, are
handled one by one as in SlotBatcher (the `explicit` list); once one has sampled a token it turns
lazy. A step costs O(explicit requests + those finishing or growing), not O(running).

Every decision is the step-by-step batcher's (flexpipe_core/batcher.py SlotBatcher): the fast path
runs only where that batcher would form exactly this batch (the token budget holds every running
request's tokens, so their order cannot matter; every KV growth fits, so nobody is preempted;
admissions then run the same loop), and otherwise the slot is materialised and the ordinary path
runs. `engine.fast_forward: false` uses SlotBatcher alone;
tests/test_fastforward.py checks both give the same per-request records (within float rounding:
summed step times are added in another order) on several scenarios.
"""

from __future__ import annotations

from bisect import insort
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
        # (tick at which r needs a new KV block, id, r), sorted: the due ones are a prefix, and a
        # growth's entries (due a block later, after everyone else as a rule) go on the end
        self._grow: list[tuple[int, int, Request]] = []
        self._last_fast = False
        self._step_lazy = 0  # lazy requests in the batch in flight
        self.fast_steps = 0  # statistics: steps taken on the fast path
        self.slow_steps = 0
        self._grow_log: list[tuple[int, list]] | None = None  # grow_lazy's growths, while a run-ahead may be undone

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

    def _make_lazy(self, r: Request) -> None:
        """r decodes from now on: its fields are current as of this tick."""
        t = self.tick
        r.ff_tick, r.ff_compute, r.ff_comm = t, self.cum_compute, self.cum_comm
        c = r.num_computed
        self.ctx_sum += c
        self.n_lazy += 1
        heappush(self._finish, (t + r.output_tokens - r.generated, r.id, r))
        insort(self._grow, (t + r.kv_tokens - c, r.id, r))

    def _add_block(self, due: list[tuple[int, int, Request]], t: int) -> None:
        """One more KV block on every stage for each due lazy request (its context just filled its
        last block; the caller checked there are enough): KVSet.try_grow's effect, counted in bulk.
        Each is due again a block's worth of ticks after t."""
        bs = self.kv.block_size
        grow, again = self._grow, t + bs
        new = [(again, e[1], e[2]) for e in due]
        if len(new) > 1 and due[0][0] != t:  # (all due at t, as usual: already in id order)
            new.sort()
        if grow and grow[-1] > new[0]:  # someone is due later than t + bs: merge
            grow.extend(new)
            grow.sort()
        else:
            grow.extend(new)
        managers = self.kv.managers
        k = len(due)
        if len(managers) == 1 and type(managers[0]) is BlockCounter:  # the simulator's (instance._kv_set)
            m = managers[0]
            held = m.held
            for _, rid, r in due:
                held[rid] += 1
                r.kv_tokens += bs
            m.num_free -= k
            m.allocated_total += k
            return
        if not all(isinstance(m, BlockCounter) for m in managers):
            for _, _, r in due:
                self._sync(r)
                self.kv.try_grow(r, r.num_computed + 1)
            return
        for m in managers:
            held = m.held
            for _, rid, _ in due:
                held[rid] += 1
            m.num_free -= k
            m.allocated_total += k
        for _, _, r in due:
            r.kv_tokens += bs

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
            self._grow.clear()
            self.explicit.clear()
            self.ctx_sum = self.n_lazy = 0

    def _enter(self) -> None:
        self.fast = True
        self.ctx_sum = self.n_lazy = 0
        self.explicit = []
        for r in self.running:
            if r.num_tokens - r.num_computed == 1 and r.generated > 0:
                self._make_lazy(r)
            else:
                r.ff_tick = -1
                self.explicit.append(r)

    def _due(self, t: int) -> list[tuple[int, int, Request]]:
        """Take the lazy requests whose context fills its last KV block at tick t (live ones) off the
        front of the grow list."""
        grow = self._grow
        if not grow or grow[0][0] > t:
            return []  # (the common case)
        k, n = 1, len(grow)
        while k < n and grow[k][0] <= t:
            k += 1
        due = [e for e in grow[:k] if e[2].finish_s != e[2].finish_s]  # (finished: a stale entry)
        del grow[:k]
        return due

    def grow_lazy(self) -> bool:
        """The KV growth the next step's schedule makes when every running request is lazy (the
        same as _fast_schedule's); False, changing nothing, where blocks are short (the ordinary
        path then decides who is preempted)."""
        t = self.tick
        grow = self._grow
        if not grow or grow[0][0] > t:
            return True  # nobody's context fills a block this step (the common case)
        j, n = 1, len(grow)  # _due, inline: the due ones are a prefix
        while j < n and grow[j][0] <= t:
            j += 1
        due = [e for e in grow[:j] if e[2].finish_s != e[2].finish_s]  # (finished: a stale entry)
        k = len(due)
        managers = self.kv.managers
        if k and (managers[0].num_free < k if len(managers) == 1 else any(m.num_free < k for m in managers)):
            return False  # (its entries stay: nothing changed)
        del grow[:j]
        if not k:
            return True
        self._add_block(due, t)
        if self._grow_log is not None:
            self._grow_log.append((t, due))
        return True

    def undo_block(self, due: list[tuple[int, int, Request]], t: int) -> None:
        """Take back grow_lazy's growth at tick t (engine/runahead.py undoing steps past an arrival):
        the blocks, the requests' KV tokens and their grow entries, as they were before it. The
        simulator's KV is BlockCounter (counted in bulk by _add_block), which this reverses."""
        bs = self.kv.block_size
        ids = {e[1] for e in due}
        again = t + bs
        grow = [e for e in self._grow if not (e[0] == again and e[1] in ids)]
        grow.extend(due)
        grow.sort()
        self._grow[:] = grow  # in place: callers hold the list
        self.count_blocks([(e[2], -1) for e in due])

    def count_blocks(self, blocks: list[tuple[Request, int]]) -> None:
        """KV blocks added to (or, negative, taken back from) lazy requests on every stage, counted
        in bulk on the BlockCounters, with the requests' KV tokens (undo_block; the compiled
        run-ahead's growths, engine/kernelwindow.py). _add_block counts its one block each inline."""
        total = 0
        for _, c in blocks:
            total += c
        for m in self.kv.managers:
            held = m.held
            for r, c in blocks:
                held[r.id] += c
            m.num_free -= total
            m.allocated_total += total
        bs = self.kv.block_size
        for r, c in blocks:
            r.kv_tokens += bs * c

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
        grow, t = self._grow, self.tick
        due = self._due(t)
        blocks = len(due)
        for r in explicit:
            total = r.num_tokens
            if total > r.kv_tokens:
                blocks += -(-total // bs) - r.kv_tokens // bs
        if blocks and any(m.num_free < blocks for m in kv.managers):
            grow[:0] = due  # not enough for all: the ordinary path decides who is preempted
            return _ORDINARY
        if due:
            self._add_block(due, t)
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
                    else:
                        self._make_lazy(r)  # it decodes from now on
            if changed:
                self.explicit = [r for r in self.explicit if r.ff_tick < 0 and r.finish_s != r.finish_s]
        if finished:
            self.running = [r for r in self.running if r.finish_s != r.finish_s]
        return finished


_ORDINARY = object()  # _fast_schedule's answer when only the ordinary path decides as it would
