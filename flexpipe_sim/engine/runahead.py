"""Run-ahead: an instance takes its steady decode steps without an event each (Instance's mixin).

Between the backend's events that can touch or read an instance (an arrival of its model, a
controller or monitor tick, the end of the run; none while a stage is on its way to one of its
GPUs: `Simulation._horizon`), nothing else changes it.
Where every running request decodes (lazy, fastbatch.py), no slot would admit the queue's head and
every stage is alone on its GPU, the instance's future up to that horizon follows from its own
state: the slots' completions are taken here in time order, each accounted and the slot's next
step scheduled and submitted exactly as the slot loop (instance.py) would, and the slot processes
then sleep until their latest step (`_retarget` moves each one's wait there).
tests/test_fastforward.py checks the records equal the step-by-step run's on the paper scenarios,
refactors, KV pressure and random small cases.

A window of several slots also takes the steps that finish requests where nobody waits (a finish
then changes only what routing reads at the model's next arrival, beyond the horizon), and the
completions of steps the ordinary path scheduled (an admission's prefill: postprocessed as the
slot loop would, the slot's next step steady if nobody is left explicit); where a slot in flight
will admit the queue's head it runs up to that slot's completion.

An instance of one stage and one slot (most baselines') need not stop at its model's arrivals:
routing reads only what steady steps leave unchanged (outstanding work, capacity), so most
arrivals go elsewhere and change nothing here. Its window runs to the next tick, keeping what it
needs to take steps back (each step's layer time; the KV growths follow from the slot's phase
counts, FastSlotBatcher.ungrow); when the gateway does route a
request here, `settle` takes back the steps the ordinary run would have scheduled after seeing it.
On the paper's cv4 under ServerlessLLM this ends ~70% fewer windows (docs/results/sim_speed).

The loops here are the reference; a window long enough to gain goes instead to the same loop
compiled (engine/kernelwindow.py, engine/stepkernel.py; `engine.compiled`), which leaves the same
state to the bit, and a several-slot window that stays here prices its steps and pushes them
through the stages in one compiled call each (`stepkernel.stage_step`), also to the bit.
"""

from __future__ import annotations

from heapq import heapify, heapreplace
from typing import NamedTuple

from simpy.events import Timeout

from flexpipe_core.batcher import Batch

from .stepkernel import stage_step


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


class RunAhead:
    """Mixed into Instance: reads and advances its slots, stage clocks and in-flight steps."""

    def _run_ahead(self, k: int, wake: bool = False) -> bool:
        """Take the instance's steady decode steps, all slots interleaved, without an event each.

        Called at slot k's turn to schedule (now). Where every running request decodes (lazy,
        fastbatch.py), no slot would admit the queue's head (if any) and every stage is its GPU's
        only one, a slot's step is the fast path's and depends only on this instance (an
        admission that fails now fails until something finishes or arrives: loads, running counts
        and the head stay, free KV only shrinks); nothing outside changes or reads the
        instance before the backend's horizon (the next arrival of this model, controller or
        monitor tick, end of run: routing reads outstanding work and capacity, which only arrivals
        and finishes change). So the slots' completions are
        taken here in time order (the order their events would fire; one instance's completions
        never tie, its last stage being FIFO): each completion before the horizon is accounted
        (postprocess) and the slot's next step scheduled and submitted, exactly as the slot loop
        would (same calls, same float sums in the same order). It stops at the first completion
        at or after the horizon, one that finishes a request or was the ordinary path's (in the
        several-slot loops, `_run_ahead_multi` and heldslots's `_run_ahead_kept`: only where
        someone waits, whom the freed KV could admit), one of a slot that admits next, or a
        schedule that needs the ordinary path. Every slot's latest step is then in `_flight`, and
        the processes whose step was taken wait for it (`_retarget`).
        Returns False, changing nothing, where slot k's own step cannot be taken this way.
        `wake`: slot k's process woke at the completion (now) of a step its compiled window holds,
        which the window takes first (heldslots._run_ahead_wake)."""
        now = self.env.now
        slots, flight = self.slots, self._flight
        if self.state != "ready" or self._plan is None or not all(self._sole):
            return False
        stops: tuple[int, ...] = ()  # slots in flight that admit the queue's head when they next schedule
        s = slots[k]
        if not s.fast or s.explicit or not (wake or 0 < s.n_lazy <= s.token_budget):
            return False  # slot k's own step is not steady (or it is idle: woken to admit)
        wakes = self._wake
        for i in range(self.n_active):
            if i != k and flight[i] is None and (slots[i].running or wakes[i] is None):
                return False  # a slot about to schedule at this same time: its turn comes first
            # (a slot in flight with a step that is not steady stops the run where it completes)
        if self.waiting:
            reserve = self.kv.watermark + self._running_now()
            # only a least-loaded slot admits (SlotBatcher._least_loaded): one min instead of each asking
            lmin = min([s.load for s in slots[: self.n_active]])
            for i in range(self.n_active):
                s = slots[i]
                if (s.fast and not s.explicit and s.running and s.load <= lmin
                        and s.would_admit(s.token_budget - s.n_lazy, reserve)):
                    if i == k:
                        return False
                    # it admits at its step's completion (no other slot can before: loads stay,
                    # free KV only shrinks): the run stops there, its process scheduling by the
                    # ordinary path
                    stops += (i,)
        # one stage, one slot: its steps past an arrival of the model can be undone (`settle`), so
        # only an arrival routed here ends them, not every arrival of the model
        single = self.n_active == 1 and len(self._plan) == 1
        horizon = self._horizon(self, now, not single)
        if horizon <= now:
            return False
        # The compiled loop costs a copy in and out per slot, the Python one a few microseconds per
        # step (_COMPILED_STEPS_PER_SLOT, _COMPILED_MIN_WORK; same records either way). Several
        # slots: the last window's length chooses. One slot on one stage: the steps it can take at
        # most, up to its next finish (a big batch finishes someone within a few steps; its copy
        # would cost more).
        before = self.steps_ahead
        took = None
        if wake:
            took = self._run_ahead_compiled(k, horizon, False, stops, True)
            if not took:
                return False
        elif self._compiled and (
                (single and slots[0]._finish and slots[0]._finish[0][0] - slots[0].tick >= _COMPILED_MIN_WORK)
                or (not single and (self._klast >= _COMPILED_STEPS_PER_SLOT * self.n_active or True in self._aown))):
            took = self._run_ahead_compiled(k, horizon, single, stops)
        if took is None:
            took = self._run_ahead_single(horizon) if single else self._run_ahead_multi(k, horizon, stops)
        if took:
            self._klast = self.steps_ahead - before
            if self.refactoring:
                self.refactor_ahead += self._klast
            if True in self._moved:
                self._retarget()
        return took

    def _retarget(self) -> None:
        """Slots whose steps a window took wait for their latest step instead of waking at the one
        they were waiting for (each such wake cost an event and a generator resumption: ~40% of a
        pipeline instance's events on the paper's cv4). The process's wait moves to a new timeout
        at its latest completion; the old one fires with nobody on it. SimPy has no public way to
        move a wait: this does what Process.interrupt does (`_target`, `_resume`, the callbacks)."""
        env, moved, flight, procs, own = self.env, self._moved, self._flight, self._procs, self._aown
        now = env.now
        held = self._kst[0] if self._kst is not None else None  # (a held slot's completion: heldslots)
        for i in range(self.n_active):
            if moved[i]:
                p = procs[i]
                p._target.callbacks.remove(p._resume)
                ev = Timeout(env, (flight[i][0] if not own[i] else float(held[8 * i])) - now)
                ev.callbacks.append(p._resume)
                p._target = ev
                moved[i] = False
                self.retargets += 1

    def _run_ahead_multi(self, k: int, horizon: float, stops: tuple[int, ...] = ()) -> bool:
        """_run_ahead's loop in Python: slot k schedules now, then completions in time order, up to
        the horizon or the completion of a slot in `stops`. Where the compiled loop is on, each
        step's pricing and stage clocks go through it (stepkernel.stage_step, ~0.5 us a call
        against ~1-3 us in Python for one to eight stages) while the bookkeeping stays here."""
        if True in self._aown:
            self._kflush_all()  # (slots held in the compiled windows' arrays)
        slots, flight = self.slots, self._flight
        kp = self._kplan if self._compiled else False
        if kp is None:
            kp = self._kplan = self._kernel_plan()
        hy = None
        if kp is not False:
            hy = self._hybrid_start(k, kp)
            if hy is None:
                return False
            K, kind, oh, kn, khd, R, S, RN, P, mk = hy
        elif not self._schedule_ahead(k, self.env.now):
            return False
        heap = [(f[0], i) for i, f in enumerate(flight[: self.n_active]) if f is not None]
        heapify(heap)
        moved = self._moved
        cost, plan, free, recent, sums = self.cost, self._plan, self._stage_free, self._recent, self._sums
        pricing: dict[int, tuple] = {}  # batch size -> decode_hops + decode_pricing (one lookup per window)
        taken = 0  # steps taken, added to the counters once (nothing in the loop reads them)
        ahead = self._finish_ahead if not self.waiting else None
        while heap:
            c, i = heap[0]
            s = slots[i]
            _, batch, compute, comm = flight[i]
            if c >= horizon or batch is None or not s._last_fast or not s.fast or i in stops:
                break  # its own process takes it: at/after the horizon, not the fast path, admitting
            fin = s._finish
            if batch.items or (fin and fin[0][0] <= s.tick + 1):
                # The ordinary path's step, or one that finishes requests: `_postprocess_ahead`
                if not self._postprocess_ahead(s, batch, c, compute, comm, ahead):
                    break
            else:
                # FastSlotBatcher.step_lazy: postprocess for lazy requests none of which finishes
                s.tick += 1
                s.cum_compute += compute
                s.cum_comm += comm
                n = s._step_lazy
                s.sampled += n
                s.ctx_sum += n
            taken += 1
            if i != k:
                moved[i] = True
            if batch.items:
                if s.explicit:  # a request still prefilling (in chunks): its process schedules at c
                    flight[i] = (c, None, 0.0, 0.0)
                    break
                s.preempted_last = s.admitted_last = 0  # (_schedule_ahead's settings, below)
                self.nonsteady_ahead += 1
            # _schedule_ahead(i, c), inline: the batch in flight was the fast path's, so the slot's
            # _last_fast holds its setting
            n = s.n_lazy
            if ((not n or n > s.token_budget) or (hy is not None and kn[i] != n and not self._kernel_row(kp, i, n))
                    or not s._grow_phase(s.tick)):
                flight[i] = (c, None, 0.0, 0.0)  # its process schedules at c, by the ordinary path
                break
            if hy is not None:
                s._step_lazy = n
                s.fast_steps += 1
                head, back, hop_sum = khd[i]
                t, compute = stage_step(i, c + back, s.ctx_sum + n, n, head, K, S, RN, kind, oh, P, mk, R)
                flight[i] = (t, STEADY, compute, hop_sum + back)
                heapreplace(heap, (t, i))
                continue
            s._step_lazy = n
            s.fast_steps += 1
            kv = s.ctx_sum + n
            pr = pricing.get(n)
            if pr is None:
                pr = pricing[n] = cost.decode_hops(n) + cost.decode_pricing(n)
            back, hops, hop_sum, layer, head, oh = pr
            lt = layer(kv)
            sums[0] += lt
            sums[1] += head
            sums[2] += 1
            t = c + back
            compute = 0.0
            q = 0
            for _, nl, hh, sd in plan:
                dt = (nl * lt + head + oh) * sd if hh else (nl * lt + oh) * sd
                f = free[q]
                if f > t:
                    t = f
                end = t + dt
                recent[q].append((t, end))
                free[q] = end
                compute += dt
                t = end + hops[q]
                q += 1
            flight[i] = (t, STEADY, compute, hop_sum + back)
            heapreplace(heap, (t, i))
        if hy is not None:
            self._hybrid_end(S, P)
        self.steps += taken
        self.steps_ahead += taken
        return True

    def _postprocess_ahead(self, s, batch: Batch, c: float, compute: float, comm: float, ahead) -> bool:
        """A several-slot window's completion at c of slot s's step that the ordinary path
        scheduled (an admission, a prefill: explicit requests) or that finishes requests, where
        nobody waits (`ahead`, the backend's guard, else None): the slot loop's postprocess and
        accounting at its completion time. With nobody waiting (their freed KV would admit
        someone), it changes this slot alone (requests sample their first token and turn lazy, or
        finish), and nothing here or outside reads what a finish changes before the horizon
        (routing reads outstanding work at the model's next arrival; ticks read counts; the records
        are sorted by id, not by when they are written). Not the run's last finish (it ends the
        run). False, changing nothing, where the slot's own process must take it."""
        if ahead is None or not ahead(len(s._finish) + len(batch.items)):
            return False
        for r in s.postprocess(batch, c, compute, comm):
            self.outstanding_work -= self.work_of(r)
            self._on_finish(r)
            self.finished_ahead += 1
        return True

    def _run_ahead_single(self, horizon: float) -> bool:
        """_run_ahead for one stage and one slot (most baselines' instances), inline: the same
        steps, sums and order as _schedule_ahead + _submit + FastSlotBatcher.postprocess (with no
        hops the token return and comm are 0.0; _submit's compute is 0.0 + dt == dt).
        Its horizon ignores the model's arrivals: the window (where it began, each step's layer
        time) is kept so that `settle` can take back the steps past an arrival the
        gateway routes here."""
        s = self.slots[0]
        n = s.n_lazy
        if not n or n > s.token_budget:
            return False
        _, nl, hh, sd = self._plan[0]
        layer, head, oh = self.cost.decode_pricing(n)  # layer_head of BatchWork(n, n, kv, kv, n)
        free, recent, sums, fin = self._stage_free, self._recent[0], self._sums, s._finish
        stop = fin[0][0] if fin else 1 << 62  # the tick whose step finishes someone
        t = self.env.now
        f = free[0]  # the stage's clock; written back once (nothing in the loop reads free[0])
        taken = priced = 0  # the step counters, added once at the end (nothing in the loop reads them)
        lts: list[float] = []  # each step's layer time, for `settle`
        self._window = Window(t, f, s.tick, s.cum_compute, s.sampled, s.ctx_sum, sums[0], sums[1], sums[2],
                              s.fast_steps, self.steps, self.steps_ahead, n, lts)
        while True:
            # schedule at t: KV growth, then price and submit the step (slot loop, fast path)
            if not s._grow_phase(s.tick):
                if not taken:
                    self._window = None
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
                self._flight[0] = (end, STEADY, dt, 0.0)
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
        (t, f, tick0, cum0, sampled0, ctx0, s0, s1, s2, fast0, steps0, ahead0, n, lts) = w
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
        self.growths_undone += s.ungrow(tick0 + j)  # KV grown by the steps taken back
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
        self._flight[0] = (end, STEADY, dt, 0.0)
        self._procs[0].interrupt()  # it sleeps until the old last step; wake it to wait for this one

    def _schedule_ahead(self, i: int, t: float) -> bool:
        """Slot i's schedule and submission at time t when all its requests are lazy and none
        waits: FastSlotBatcher.schedule's fast path and the slot loop's submission, for a steady
        batch. False, changing nothing, where the ordinary path must decide (budget, KV short)."""
        s = self.slots[i]
        n = s.n_lazy
        if not n or n > s.token_budget or not s._grow_phase(s.tick):
            return False
        s.preempted_last = s.admitted_last = 0
        s._step_lazy = n
        s._last_fast = True
        s.fast_steps += 1
        kv = s.ctx_sum + n
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
        self._flight[i] = (t, STEADY, compute, comm + back)
        return True


# The batch of a steady decode step taken ahead (all its requests lazy): its slot's process reads
# only that it has no explicit items (FastSlotBatcher.postprocess); its work was priced when it was
# submitted and is not kept (one object, no Batch per step; reading its `work` raises).
STEADY = Batch.__new__(Batch)
STEADY.items, STEADY.has_decode = [], True

# Which loop takes a several-slot instance's next window, from its last one: the Python loop with
# compiled stage steps costs ~3-4 us per step (one to eight stages), the whole-window compiled one
# ~8-10 us per slot to copy in and out (the slot, its KV phase counts) plus little per step.
# Compiled where the last window took at least this many steps per slot: 3 took 3-9% less CPU than
# 6 (the break-even while each lazy request's KV growth tick was copied) on 30 min of cv4 under
# FlexPipe, the same under AlpaServe; every window compiled (0) took 5-10% more on both (side by
# side on the 2-core build machine, whose walls vary by tens of percent; docs/results/sim_speed/
# README.md, sitting 8). A one-slot one-stage window (~22 us to copy, ~1.5 us
# per Python step) goes compiled where its next finish is at least _COMPILED_MIN_WORK ticks away:
# ServerlessLLM's (1-2 requests, ~40 steps) do, the Azure replay's (~80 requests, one finishing
# every few steps) do not. Choosing by the last window instead
# (windows there alternate long and short) took 2-10% more CPU on quarter-size ServerlessLLM and
# static runs; compiling every one made the replay ~20% slower (sitting 6).
_COMPILED_MIN_WORK = 16
_COMPILED_STEPS_PER_SLOT = 3
