"""Run-ahead: an instance takes its steady decode steps without an event each (Instance's mixin).

Between the backend's events that can touch or read an instance (an arrival of its model, a
controller or monitor tick, the end of the run; none while a stage is on its way to one of its
GPUs: `Simulation._horizon`), nothing else changes it.
Where every running request decodes (lazy, fastbatch.py), no slot would admit the queue's head and
every stage is alone on its GPU, the instance's future up to that horizon follows from its own
state: the slots' completions are taken here in time order, each accounted and the slot's next
step scheduled and submitted exactly as the slot loop (instance.py) would, and the slot processes
then sleep until their latest step. tests/test_fastforward.py checks the records equal the step-by-
step run's on the paper scenarios, refactors, KV pressure and random small cases.

An instance of one stage and one slot (most baselines') need not stop at its model's arrivals:
routing reads only what steady steps leave unchanged (outstanding work, capacity), so most
arrivals go elsewhere and change nothing here. Its window runs to the next tick, keeping what it
needs to take steps back (each step's layer time, the KV growths); when the gateway does route a
request here, `settle` takes back the steps the ordinary run would have scheduled after seeing it.
On the paper's cv4 under ServerlessLLM this ends ~70% fewer windows (docs/results/sim_speed).
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import NamedTuple

import numpy as np

from flexpipe_core.batcher import Batch
from flexpipe_core.blocks import BlockCounter
from flexpipe_core.work import BatchWork

from . import stepkernel as sk


class Window(NamedTuple):
    """Where a one-stage run-ahead began (the state `settle` redoes its steps from) and each
    step's layer time."""

    t: float  # now at its start
    free: float  # the stage's clock
    tick: int
    cum_compute: float
    sampled: int
    ctx_sum: int
    sum_layer: float  # Instance._sums
    sum_head: float
    sum_steps: int
    fast_steps: int
    steps: int
    steps_ahead: int
    n: int  # lazy requests in every step
    layer_times: list[float]
    # the compiled loop's KV growths: (grow entries of the lazy requests, each one's next due tick
    # at the window's start, and at its end); None where s._grow_log lists them (the Python loop)
    grown: tuple[list, list[int], list[int]] | None = None


class RunAhead:
    """Mixed into Instance: reads and advances its slots, stage clocks and in-flight steps."""

    def _run_ahead(self, k: int) -> bool:
        """Take the instance's steady decode steps, all slots interleaved, without an event each.

        Called at slot k's turn to schedule (now). Where every running request decodes (lazy,
        fastbatch.py), no slot would admit the queue's head (if any) and every stage is its GPU's
        only one, a slot's step is the fast path's and depends only on this instance (an
        admission that fails now fails until something finishes or arrives: loads, running counts
        and the head stay, free KV only shrinks); nothing outside changes or reads the
        instance before the backend's horizon (the next arrival of this model, controller or
        monitor tick, end of run: routing reads outstanding work and capacity, which only arrivals
        and finishes change, and finishes are never run ahead). So the slots' completions are
        taken here in time order (the order their events would fire; one instance's completions
        never tie, its last stage being FIFO): each completion before the horizon is accounted
        (postprocess) and the slot's next step scheduled and submitted, exactly as the slot loop
        would (same calls, same float sums in the same order). It stops at the first completion
        at or after the horizon, one that finishes a request, or a schedule that needs the
        ordinary path. Every slot's latest step is then in `_flight`; processes whose step was
        taken wake at its old time and wait for the new one (`_moved`). Returns False, changing
        nothing, where slot k's own step cannot be taken this way."""
        now = self.env.now
        slots, flight = self.slots, self._flight
        if self.state != "ready" or self.refactoring or self._plan is None or not all(self._sole):
            return False
        reserve = self.kv.watermark + self._running_now() if self.waiting else 0
        for i in range(self.n_active):
            s = slots[i]
            steady = s.fast and not s.explicit
            if i == k and not steady:
                return False
            if i != k and flight[i] is None and (s.running or self._wake[i] is None):
                return False  # a slot about to schedule at this same time: its turn comes first
            # (a slot in flight with a step that is not steady stops the run where it completes)
            if reserve and steady and s.running and s.would_admit(s.token_budget - s.n_lazy, reserve):
                return False
        # one stage, one slot: its steps past an arrival of the model can be undone (`settle`), so
        # only an arrival routed here ends them, not every arrival of the model
        single = self.n_active == 1 and len(self._plan) == 1
        horizon = self._horizon(self, now, not single)
        if horizon <= now:
            return False
        # The compiled loop costs a fixed copy in and out per window, the Python one a few
        # microseconds per step and stage: the last window's steps x stages choose (same records)
        before = self.steps_ahead
        took = None
        if self._compiled and self._klast * len(self._plan) >= _COMPILED_MIN_WORK:
            took = self._run_ahead_compiled(k, horizon, single)
        if took is None:
            took = self._run_ahead_single(horizon) if single else self._run_ahead_multi(k, horizon)
        if took:
            self._klast = self.steps_ahead - before
        return took

    def _run_ahead_multi(self, k: int, horizon: float) -> bool:
        """_run_ahead's loop in Python: slot k schedules now, then completions in time order."""
        slots, flight = self.slots, self._flight
        if not self._schedule_ahead(k, self.env.now):
            return False
        heap = [(f[0], i) for i, f in enumerate(flight[: self.n_active]) if f is not None]
        heapify(heap)
        moved = self._moved
        while heap:
            c, i = heap[0]
            s = slots[i]
            _, batch, compute, comm = flight[i]
            fin = s._finish
            if (c >= horizon or batch is None or batch.items or not s._last_fast or not s.fast
                    or (fin and fin[0][0] <= s.tick + 1)):
                break  # its own process takes it: at/after the horizon, finishing, or not steady
            heappop(heap)
            s.step_lazy(compute, comm)  # postprocess for lazy requests none of which finishes
            self.steps += 1
            self.steps_ahead += 1
            if i != k:
                moved[i] = True
            if not self._schedule_ahead(i, c):
                flight[i] = (c, None, 0.0, 0.0)  # its process schedules at c, by the ordinary path
                break
            heappush(heap, (flight[i][0], i))
        return True

    def _run_ahead_single(self, horizon: float) -> bool:
        """_run_ahead for one stage and one slot (most baselines' instances), inline: the same
        steps, sums and order as _schedule_ahead + _submit + FastSlotBatcher.postprocess (with no
        hops the token return and comm are 0.0; _submit's compute is 0.0 + dt == dt).
        Its horizon ignores the model's arrivals: the window (where it began, each step's layer
        time, the KV growths) is kept so that `settle` can take back the steps past an arrival the
        gateway routes here."""
        s = self.slots[0]
        n = s.n_lazy
        if not n or n > s.token_budget:
            return False
        _, nl, hh, sd = self._plan[0]
        layer, head, oh = self.cost.decode_pricing(n)  # layer_head of BatchWork(n, n, kv, kv, n)
        free, recent, sums, grow, fin = self._stage_free, self._recent[0], self._sums, s._grow, s._finish
        stop = fin[0][0] if fin else 1 << 62  # the tick whose step finishes someone
        t = self.env.now
        f = free[0]  # the stage's clock; written back once (nothing in the loop reads free[0])
        taken = priced = 0  # the step counters, added once at the end (nothing in the loop reads them)
        lts: list[float] = []  # each step's layer time, for `settle`
        self._window = Window(t, f, s.tick, s.cum_compute, s.sampled, s.ctx_sum, sums[0], sums[1], sums[2],
                              s.fast_steps, self.steps, self.steps_ahead, n, lts)
        s._grow_log = []
        while True:
            # schedule at t: KV growth, then price and submit the step (slot loop, fast path)
            if grow and grow[0][0] <= s.tick and not s.grow_lazy():
                if not taken:
                    self._window = s._grow_log = None
                    return False
                self._flight[0] = (t, None, 0.0, 0.0)  # KV short: the ordinary path schedules at t
                break
            kv = s.ctx_sum + n
            lt = layer(kv)
            lts.append(lt)
            sums[0] += lt
            sums[1] += head
            priced += 1
            dt = (nl * lt + head + oh) * sd if hh else (nl * lt + oh) * sd
            b = t if t > f else f
            f = end = b + dt
            recent.append((b, end))
            if end >= horizon or s.tick + 1 >= stop:
                # in flight past the run's reach: the slot's process accounts it at `end`
                s.preempted_last = s.admitted_last = 0
                s._step_lazy = n
                s._last_fast = True
                self._flight[0] = (end, Batch([], BatchWork(n, n, kv, kv, n), True), dt, 0.0)
                break
            # completes at end: postprocess's counters for lazy requests (nobody finishes)
            s._step_lazy = n
            s.step_lazy(dt, 0.0)
            taken += 1
            t = end
        free[0] = f
        sums[2] += priced
        s.fast_steps += priced
        self.steps += taken
        self.steps_ahead += taken
        return True

    def _run_ahead_compiled(self, k: int, horizon: float, single: bool) -> bool | None:
        """_run_ahead's loop (and _run_ahead_single's) in engine/stepkernel.py: the instance's state
        copied into flat arrays (stepkernel.run says their layout), advanced there, and written
        back. None, changing nothing, where the cost model or the KV has no array form (the Python
        loop then runs)."""
        kp = self._kplan
        if kp is None:
            kp = self._kplan = self._kernel_plan()
        if kp is False:
            return None
        K, kind, oh, rows, cmax, hops, kn, khd, R = kp
        slots, flight, cost = self.slots, self._flight, self.cost
        if not 0 < slots[k].n_lazy <= slots[k].token_budget:
            return False  # slot k's own step cannot be taken this way
        m, P = self.n_active, len(self._plan)
        span = self._kspan  # ticks per slot whose KV growths go in (adapts: see below)
        fl: list[float] = []  # F: per slot C_DONE..C_HOPSUM, then stage clocks, sums, ext, last steps
        il: list[int] = []  # I: per slot I_N..I_NEW, then last-step counts, free blocks, goff, gnext, gcnt
        live: list[list] = []
        g0: list[int] = []
        goff = [0]
        for i in range(m):
            s = slots[i]
            n = s.n_lazy
            can = 0 < n <= s.token_budget
            if can:
                if kn[i] != n:  # the slot's pricing row, kept while its batch size stays
                    tab = cost.decode_kernel(n)
                    if tab is None:
                        _push_back(slots, live)
                        return None
                    rows[i] = tab[1]
                    cmax[i] = tab[2]
                    hops[i] = tab[6]
                    khd[i] = (tab[4], tab[5], tab[7])
                    kn[i] = n
                head, back, hop_sum = khd[i]
                # the grow entries that can come due in this window: the slot stops before its tick
                # reaches the next finish (stop), so before no other; taken off the heap (finished
                # requests' stale entries dropped, as _due would) and pushed back after
                grow, stop = s._grow, s._finish[0][0] if s._finish else 1 << 62
                glim = s.tick + span
                if glim > stop:
                    glim = stop
                ent = []
                while grow and grow[0][0] < glim:
                    e = heappop(grow)
                    if e[2].finish_s != e[2].finish_s:
                        ent.append(e)
                live.append(ent)
                g0 += [e[0] for e in ent]
            else:
                head = back = hop_sum = 0.0
                glim = 0
                live.append([])
            goff.append(len(g0))
            fin = s._finish
            f = flight[i]
            if i != k and f is not None:
                batch = f[1]
                steady = (batch is not None and not batch.items and s._last_fast and s.fast and s._step_lazy == n)
                fl += [f[0], s.cum_compute, s.cum_comm, f[2], f[3], head, back, hop_sum]
                il += [n, s.tick, s.ctx_sum, s.sampled, s.fast_steps, fin[0][0] if fin else 1 << 62, can, steady,
                       1, 0, 0, 0, glim]
            else:
                fl += [0.0, s.cum_compute, s.cum_comm, 0.0, 0.0, head, back, hop_sum]
                il += [n, s.tick, s.ctx_sum, s.sampled, s.fast_steps, fin[0][0] if fin else 1 << 62, can, 0,
                       0, 0, 0, 0, glim]
        if single:
            stop = il[sk.I_STOP]
            if stop >= 1 << 62:
                _push_back(slots, live)
                return None
            lts = self._lts_buf
            need = stop - il[sk.I_TICK] + 2  # at most one step per tick before the finishing one
            if lts is None or len(lts) < need:
                lts = self._lts_buf = np.empty(max(need, 256))
        else:
            lts = _NO_LTS
        kv, sums, now = self.kv, self._sums, self.env.now
        G = len(g0)
        fl += self._stage_free
        fl += [sums[0], sums[1], float(sums[2]), 0.0, 0.0, 0.0]
        fl += [0.0] * (2 * P * P)
        il += [0] * P
        il.append(min([mg.num_free for mg in kv.managers]))
        il += goff
        il += g0
        il += [0] * G
        F = np.array(fl)
        I = np.array(il, np.int64)
        if single:
            s0 = slots[0]
            w0 = (now, self._stage_free[0], s0.tick, s0.cum_compute, s0.sampled, s0.ctx_sum,
                  sums[0], sums[1], sums[2], s0.fast_steps, self.steps, self.steps_ahead, s0.n_lazy)
        status, who, taken = sk.run(k, now, horizon, K, F, I, lts, kind, kv.block_size, oh, single, m, len(kn), P, R, G)
        if status == sk.FIRST_FAILED:
            _push_back(slots, live)
            return False
        # write the window back: slots, flights, stage clocks and last steps, sums, KV growths
        fl, il = F.tolist(), I.tolist()
        moved = self._moved
        for i in range(m):
            r = il[sk.ST_COLS * i: sk.ST_COLS * (i + 1)]
            if not r[sk.I_NEW] and not r[sk.I_TAKEN]:
                continue
            f = fl[8 * i: 8 * i + 8]
            s = slots[i]
            n = r[sk.I_N]
            if r[sk.I_FAST] != s.fast_steps:  # it scheduled: _schedule_ahead's settings
                s.preempted_last = s.admitted_last = 0
                s._step_lazy = n
                s._last_fast = True
            s.tick, s.ctx_sum, s.sampled, s.fast_steps = r[sk.I_TICK], r[sk.I_CTX], r[sk.I_SAMPLED], r[sk.I_FAST]
            s.cum_compute, s.cum_comm = f[sk.C_CUMC], f[sk.C_CUMM]
            if r[sk.I_NEW] == 1:
                kvt = r[sk.I_KV]
                flight[i] = (f[sk.C_DONE], Batch([], BatchWork(n, n, kvt, kvt, n), True), f[sk.C_COMP], f[sk.C_COMM])
            elif r[sk.I_NEW] == 2:
                flight[i] = (f[sk.C_DONE], None, 0.0, 0.0)  # its process schedules at its completion
            if i != k and r[sk.I_TAKEN]:
                moved[i] = True
        b = 8 * m
        self._stage_free[:] = fl[b: b + P]
        sums[0], sums[1], sums[2] = fl[b + P], fl[b + P + 1], int(fl[b + P + 2])
        n_lts, n_ext, ctx_ext = int(fl[b + P + 3]), int(fl[b + P + 4]), fl[b + P + 5]
        b += P + 6
        c = sk.ST_COLS * m
        recent = self._recent
        for p in range(P):  # each stage's last steps, oldest first (the ring at rec[p])
            cnt = il[c + p]
            if cnt:
                ring = b + 2 * P * p
                recent[p].extend([(fl[ring + 2 * (q % P)], fl[ring + 2 * (q % P) + 1]) for q in range(max(0, cnt - P), cnt)])
        self.steps += taken
        self.steps_ahead += taken
        # the tick limit: doubled where a window reached it, halved where windows stop far short
        if status == sk.SHORT and il[sk.ST_COLS * who + sk.I_TICK] >= il[sk.ST_COLS * who + sk.I_GLIM]:
            self._kspan = min(2 * span, 1 << 16)
        elif taken * 4 < span * m and span > 2:
            self._kspan = span // 2
        d = c + P + 2 + m
        g1 = il[d: d + G]
        for i in range(m):  # the taken grow entries back on their heaps, next due where the window left them
            grow = slots[i]._grow
            for j, e in enumerate(live[i], goff[i]):
                heappush(grow, (g1[j], e[1], e[2]))
        if g1 != g0:  # KV growths: the blocks and the requests' KV tokens
            cnt = il[d + G: d + 2 * G]
            total = sum(cnt)
            bs = kv.block_size
            grown = [(e, cnt[j]) for i in range(m) for j, e in enumerate(live[i], goff[i]) if cnt[j]]
            for mg in kv.managers:
                held = mg.held
                for e, q in grown:
                    held[e[1]] += q
                mg.num_free -= total
                mg.allocated_total += total
            for e, q in grown:
                e[2].kv_tokens += bs * q
        if n_ext:
            pr = cost.cost.profile
            pr._warn("decode", f"decode batch {il[sk.I_N]} at context {ctx_ext:.0f}")
            pr.extrapolations += n_ext - 1
        if single:
            slots[0]._grow_log = None
            self._window = Window(*w0, lts[:n_lts].tolist(), (live[0], g0, g1))
        self.windows_compiled += 1
        return True

    def _kernel_plan(self):
        """The instance's constant part of the compiled loop's input (stepkernel.run's K: layers,
        slowdown and head per stage; per slot the largest context, hop times and pricing row, kept
        while its batch size stays; the cost model's shared numbers), with views of K's per-slot
        parts, the batch size each slot's holds and its head, return and hop times. False where the
        KV is not counted in bulk (BlockCounter) or the cost model has no array form
        (costmodel.py decode_table)."""
        if not all(isinstance(mg, BlockCounter) for mg in self.kv.managers):
            return False
        tab = getattr(self.cost, "decode_kernel", lambda n: None)(1)
        if tab is None:
            return False
        plan = self._plan
        m, P, R = len(self.slots), len(plan), len(tab[1])
        K = np.array([float(p[1]) for p in plan] + [float(p[3]) for p in plan] + [float(bool(p[2])) for p in plan]
                     + [0.0] * (m + m * P + m * R) + list(tab[3]))
        a = 3 * P
        cmax = K[a: a + m]
        hops = K[a + m: a + m + m * P].reshape((m, P))
        rows = K[a + m + m * P: a + m + m * P + m * R].reshape((m, R))
        return K, tab[0], self.cost._overhead, rows, cmax, hops, [-1] * m, [(0.0, 0.0, 0.0)] * m, R

    def settle(self) -> None:
        """Something outside touches the instance now (a request routed here): take back the steps
        of a run-ahead window (`_run_ahead_single`) scheduled after the first one to
        complete at or after now, leaving exactly the state a window with horizon `now` would have
        left (the same float sums, redone in the same order from the window's start), and wake the
        slot's process at that step's completion instead of the window's last."""
        w = self._window
        if w is None:
            return
        now = self.env.now
        (t, f, tick0, cum0, sampled0, ctx0, s0, s1, s2, fast0, steps0, ahead0, n, lts, grown) = w
        if not lts or self._flight[0] is None:
            return
        s = self.slots[0]
        _, nl, hh, sd = self._plan[0]
        _, head, oh = self.cost.decode_pricing(n)
        cum = cum0
        j = 0
        for lt in lts:  # the window's steps again: its clock and sums, up to the first ending >= now
            s0 += lt
            s1 += head
            dt = (nl * lt + head + oh) * sd if hh else (nl * lt + oh) * sd
            b = t if t > f else f
            f = end = b + dt
            if end >= now:
                break
            cum += dt
            t = end
            j += 1
        else:
            return  # every step ends before now: the process is about to wake (nothing to take back)
        if j == len(lts) - 1 and self._flight[0][1] is not None:
            return  # that step is the window's last, still in flight: nothing to take back
        self.steps_undone += len(lts) - j - (self._flight[0][1] is not None)
        del lts[j + 1:]
        if grown is not None:
            self._undo_growths(s, grown, tick0, tick0 + j)
        log = s._grow_log
        while log and log[-1][0] > tick0 + j:  # growths scheduled by the steps taken back
            gt, due = log.pop()
            s.undo_block(due, gt)
            self.growths_undone += 1
        s.tick = tick0 + j
        s.cum_compute = cum
        s.sampled = sampled0 + n * j
        s.ctx_sum = ctx0 + n * j
        s.fast_steps = fast0 + j + 1
        self.steps = steps0 + j
        self.steps_ahead = ahead0 + j
        sums = self._sums
        sums[0], sums[1], sums[2] = s0, s1, s2 + j + 1
        self._stage_free[0] = end
        self._recent[0].append((b, end))
        kv = ctx0 + n * j + n
        self._flight[0] = (end, Batch([], BatchWork(n, n, kv, kv, n), True), dt, 0.0)
        self._procs[0].interrupt()  # it sleeps until the old last step; wake it to wait for this one

    def _undo_growths(self, s, grown: tuple[list, list[int], list[int]], tick0: int, last: int) -> None:
        """Take back the compiled window's KV growths at ticks after `last` (settle). Request j was
        next due at a[j] when the window began and at z[j] when it ended; in between it grew at
        max(a, tick0), then every block's worth of ticks (stepkernel._schedule), the last at z - bs."""
        ent, a, z = grown
        bs = self.kv.block_size
        undone: list[tuple[int, int]] = []
        grow = []  # the window's entries, next due where they are after the undo
        for q, (e, aj, zj) in enumerate(zip(ent, a, z)):
            g = zj
            if zj != aj:
                first = aj if aj > tick0 else tick0
                if first > last:  # every growth of it was after `last`
                    c, g = (zj - first) // bs, aj
                else:
                    kept = first + (last - first) // bs * bs  # its last growth at or before `last`
                    c, g = (zj - bs - kept) // bs, kept + bs
                if c:
                    undone.append((e[1], c))
                    e[2].kv_tokens -= bs * c
            grow.append((g, e[1], e[2]))
            z[q] = g  # the window now ends there (a later settle of it starts from this)
        if not undone:
            return
        total = 0
        for rid, c in undone:
            total += c
        for mg in self.kv.managers:
            held = mg.held
            for rid, c in undone:
                held[rid] -= c
            mg.num_free += total
            mg.allocated_total -= total
        ids = {e[1] for e in ent}
        grow += [e for e in s._grow if e[1] not in ids]  # entries the window did not take
        heapify(grow)
        s._grow[:] = grow  # in place: callers hold the list
        self.growths_undone += total

    def _schedule_ahead(self, i: int, t: float) -> bool:
        """Slot i's schedule and submission at time t when all its requests are lazy and none
        waits: FastSlotBatcher.schedule's fast path and the slot loop's submission, for a steady
        batch. False, changing nothing, where the ordinary path must decide (budget, KV short)."""
        s = self.slots[i]
        n = s.n_lazy
        if not n or n > s.token_budget:
            return False
        grow = s._grow
        if grow and grow[0][0] <= s.tick and not s.grow_lazy():
            return False
        s.preempted_last = s.admitted_last = 0
        s._step_lazy = n
        s._last_fast = True
        s.fast_steps += 1
        kv = s.ctx_sum + n
        w = BatchWork(n, n, kv, kv, n)
        # Instance._submit for a uniform pipeline whose stages are all alone on their GPUs (checked
        # by _run_ahead): the same prices and float operations in the same order, without booking
        back, hops, comm = self.cost.decode_hops(n)
        layer, head, oh = self.cost.decode_pricing(n)
        lt = layer(kv)
        sums = self._sums
        sums[0] += lt
        sums[1] += head
        sums[2] += 1
        t = t + back
        free, recent = self._stage_free, self._recent
        compute = 0.0
        k = 0
        for _, nl, hh, sd in self._plan:
            dt = (nl * lt + head + oh) * sd if hh else (nl * lt + oh) * sd
            f = free[k]
            if f > t:
                t = f
            end = t + dt
            recent[k].append((t, end))
            free[k] = end
            compute += dt
            t = end + hops[k]
            k += 1
        self._flight[i] = (t, Batch([], w, True), compute, comm + back)
        return True


# Steps x stages of an instance's last window from which its next goes to the compiled loop.
# Copying a window in and out costs ~30-45 us (the slots, their requests due to grow), the Python
# loop ~1 us per step and stage plus ~2 us per step: break-even near 16 (measured on the 2-core
# build machine: the Azure replay's windows of ~2 steps of 80 requests lose with the compiled
# loop, ServerlessLLM's ~40-step windows gain; docs/results/sim_speed/README.md, sitting 5).
_COMPILED_MIN_WORK = 16


def _push_back(slots: list, live: list[list]) -> None:
    """The grow entries a compiled window took off its slots' heaps, back unchanged."""
    for s, ent in zip(slots, live):
        for e in ent:
            heappush(s._grow, e)


_NO_LTS = np.empty(1)  # the compiled loop keeps no layer times where nothing will be taken back
