"""A pipeline instance: S stages on S GPUs, S micro-batch slots in flight, continuous batching.

Each slot is one SimPy process: schedule a micro-batch, push it through the stages, wait until
the last stage is done, account the tokens, repeat. Requests stay in one slot while they run (as in
vLLM's pipeline-parallel virtual engines), so S slots keep S stages busy.

Stages are FIFO servers in tandem and micro-batches enter stage 0 in the order they are submitted,
so each stage's start time is max(arrival at the stage, GPU free): the tandem-queue recursion
gives exact stage timings at submission, and a micro-batch step costs one SimPy event instead of
2S (this is what makes 100k-request runs fast; `tests/test_engine.py` checks it against sums of
stage and hop times and against the slowest-stage throughput bound). Steady decode steps take no
event at all where nothing else can touch the instance meanwhile (engine/runahead.py).

"GPU free" comes from a timeline shared by every stage on that GPU (`GpuTimeline`, owned by the
backend): stages of different instances co-located on one GPU (MuxServe, Tetris, or FlexPipe using
leftover memory) book it at submission, each step into the earliest idle gap long enough for it
(engine/gputime.py), so one instance's gaps (hops, bubbles) serve the others. Each stage stays
FIFO for its own instance, so an instance alone on its GPUs gets exactly the tandem-queue timings.
A stage alone on its GPU books nothing there (the same start; it hands its running steps over when
another stage joins).

Busy time: `busy_s` is the stage work itself (the step time without tenant interference),
`interference_s` the extra time the GPU took because tenants time-slice its SMs (costmodel.slowdown).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import simpy

from flexpipe_core.work import BatchWork

from ..costmodel import PipelineCost
from flexpipe_core.blocks import BlockCounter
from flexpipe_core.batcher import Batch, KVSet, SlotBatcher
from .fastbatch import FastSlotBatcher
from .gputime import GpuTimeline
from . import stepkernel
from .heldslots import HeldSlots
from .kernelwindow import CompiledRunAhead
from .runahead import RunAhead
from .waitqueue import WaitQueue
from flexpipe_core.request import Request


@dataclass(frozen=True)
class StageInfo:
    gpu: int
    first_layer: int
    end_layer: int
    kv_blocks: int
    alloc_bytes: int
    weights: str | None = None  # ledger entry of shared weights this stage maps (Tetris), else its own copy


def _kv_set(stages: list[StageInfo], block_size: int) -> KVSet:
    """The pipeline's KV: every stage holds blocks for the same tokens (KVSet grows and frees them
    together), so blocks used are the same on every stage and the smallest pool is the first to
    run short. One BlockCounter of that pool's size answers every question the stages' counters
    would (fits, grow, free), at 1/S of the bookkeeping."""
    n = min(s.kv_blocks for s in stages)
    return KVSet([BlockCounter(n, block_size)], watermark_blocks=max(1, n // 100))


class Instance(RunAhead, CompiledRunAhead, HeldSlots):
    def __init__(
        self,
        env: simpy.Environment,
        instance_id: int,
        model: str,
        stages: list[StageInfo],
        cost: PipelineCost,
        *,
        block_size: int,
        token_budget: int,
        max_seqs: int,
        expected_output: float,
        on_finish: Callable[[Request], None],
        gpu_time: GpuTimeline | None = None,
        fast_forward: bool = False,
        compiled: bool = False,
        horizon: Callable[["Instance", float, bool], float] | None = None,
        finish_ahead: Callable[[int], bool] | None = None,
    ) -> None:
        self.env = env
        self.id = instance_id
        self.model = model
        self.stages = stages
        self.cost = cost
        self.state = "loading"
        self.waiting = WaitQueue()  # a deque (shared with the slots) with its oldest arrival bounded
        self._fast = fast_forward
        self._batcher = FastSlotBatcher if fast_forward else SlotBatcher
        # run-ahead (one event for many steady decode steps, `_run_ahead`): needs fast-forward and
        # the backend's horizon: (instance, now, arrivals?) -> the earliest time anything else may touch us
        self._horizon = horizon if fast_forward else None
        self._finish_ahead = finish_ahead  # (n) -> may a run-ahead finish n requests early (the backend's)
        self.steps_ahead = 0  # statistics: steps taken inside run-ahead windows
        self._window = None  # runahead.Window: a run-ahead that `settle` may take back (runahead.py)
        self._compiled = compiled and stepkernel.AVAILABLE  # windows' steps in numba (stepkernel.py)
        self._klast = 1 << 30  # steps of the last run-ahead window (chooses the loop; runahead.py)
        self._lts_buf = None  # the compiled one-stage window's layer times (reused; kernelwindow.py)
        self.steps_undone = self.growths_undone = 0  # statistics: what `settle` took back
        self.finished_ahead = 0  # statistics: requests finished inside run-ahead windows
        self.nonsteady_ahead = 0  # statistics: ordinary-path steps (admissions, prefills) a window accounted
        self.windows_compiled = 0  # statistics: run-ahead windows taken by the compiled loop
        self.retargets = 0  # statistics: slot processes whose wait a window moved to their latest step
        self.stale_wakes = 0  # statistics: slot processes woken at a step a window took (none: retargeted)
        self.idle_wakes = 0  # statistics: idle slot processes woken to schedule
        self.kv = _kv_set(stages, block_size)
        n_slots = len(stages)
        self.expected_output = expected_output
        self.slots = [self._new_slot(token_budget, max_seqs) for _ in range(n_slots)]
        self._wake: list[simpy.Event | None] = [None] * n_slots
        # per slot: its step in flight (done, batch, compute s, comm + return s); a run-ahead may
        # replace it (then `_moved`: the process wakes at the old time and waits for the new one)
        self._flight: list[tuple[float, Batch | None, float, float] | None] = [None] * n_slots
        self._moved = [False] * n_slots
        self._aown = [False] * n_slots  # slot held in the compiled windows' arrays (heldslots._run_ahead_kept)
        self._kst = None
        self._procs: list[simpy.Process | None] = [None] * n_slots  # each slot's loop (start, switch)
        self.gpu_time = gpu_time if gpu_time is not None else GpuTimeline()
        self._stage_free = [0.0] * len(stages)  # end of this instance's last step on each stage (FIFO)
        self._set_stages(stages, cost)
        self.outstanding_work = 0.0  # tokens promised to unfinished requests (routing signal)
        self.steps = 0
        self.refactor_ahead = 0  # statistics: steps run ahead while a refactor was under way
        self.windows_woken = 0  # statistics: windows begun at a held slot's completion (heldslots._run_ahead_wake)
        self._on_finish = on_finish
        self.drained = env.event()
        self.n_active = n_slots  # slots in use (a merge retires the extra ones)
        self.inflight = 0  # micro-batches between submission and completion
        self.retired_busy_s = 0.0  # busy GPU-seconds of stages replaced by refactoring
        self.retired_interference_s = 0.0
        self.paused = False
        self.refactoring = False  # a refactor is under way (engine/refactor.py)
        # when the refactor next reads or changes the instance (its run-ahead horizon,
        # Simulation._horizon): a time, or None while its new stages load (since refactor_since)
        self.refactor_next: float | None = None
        self.refactor_since = 0.0
        self._resume: simpy.Event | None = None
        self._drained_inflight: simpy.Event | None = None
        self._slot_args = (token_budget, max_seqs)
        self._capacity: tuple[int, float] | None = None  # cache of capacity_tokens_per_s

    def _new_slot(self, token_budget: int, max_seqs: int) -> SlotBatcher:
        # Balanced slots: a request's unfinished work in tokens, as far as the engine can know it
        # (its prompt plus the expected output; integers, so the running sums stay exact).
        out = round(self.expected_output)
        return self._batcher(self.kv, self.waiting, token_budget, max_seqs,
                           peers=self._active_slots, work=lambda r: r.prompt_tokens + out)

    def _active_slots(self) -> list[SlotBatcher]:
        return self.slots[: self.n_active]

    def materialize(self) -> None:
        """Bring every running request's fields up to date (fast-forwarded slots lag; fastbatch.py)."""
        self._kflush_all()
        for s in self.slots:
            if isinstance(s, FastSlotBatcher):
                s.materialize()

    @property
    def tokens_generated(self) -> int:
        """Tokens sampled so far (a refactor's dirty set between KV copy rounds)."""
        self._kflush_all()
        return sum(s.sampled for s in self.slots)

    def _set_stages(self, stages: list[StageInfo], cost: PipelineCost) -> None:
        """Pricing plan and fresh busy counters for these stages (at creation and at a switch)."""
        n = len(stages)
        shapes = getattr(cost, "stages", None)  # test fakes have fixed times, no shapes
        self._slowdowns = [sh.slowdown for sh in shapes] if shapes else [1.0] * n
        # A uniform pipeline is priced inline in _submit, stage k from (gpu, layers, has head, slowdown)
        self._plan = ([(st.gpu, sh.num_layers, sh.has_head, sh.slowdown) for st, sh in zip(stages, shapes)]
                      if getattr(cost, "uniform", False) else None)
        self._busy = [0.0] * n  # GPU-seconds of stage work committed so far (no interference)
        self._inter = [0.0] * n  # GPU-seconds added by tenant interference
        self._sums = [0.0, 0.0, 0]  # uniform plan: layer times, head times and steps summed (busy_s)
        self._sole = [False] * n  # stage k is its GPU's only stage: no booking on the timeline
        self._recent: list[deque[tuple[float, float]]] = [deque(maxlen=n) for _ in range(n)]  # sole stages' last steps
        self._kplan = None  # the plan as arrays for the compiled run-ahead (kernelwindow.py), built on first use
        self._kbuf = None  # compiled windows' buffers: stage clocks, sums, last-step rings (kernelwindow._kbuffers)
        self._kst = None  # several-slot compiled windows' arrays (heldslots._kstate; every slot flushed)

    def set_sole(self, k: int, sole: bool) -> list[tuple[float, float]]:
        """GpuTimeline.join/leave: stage k is (not) its GPU's only stage. Returns the steps it kept
        while it was (its last n steps: at most one per slot can still be running)."""
        kept = list(self._recent[k])
        self._recent[k].clear()
        more = self._rings_kept(k)  # the steps compiled windows kept in the rings
        if more:  # a stage's steps never overlap (FIFO): in time order, its last n of both
            kept = sorted(kept + more)[-len(self.stages):]
        self._sole[k] = sole
        return kept

    def _join_gpus(self) -> None:
        for k, st in enumerate(self.stages):
            self.gpu_time.join(st.gpu, self, k, self.env.now)

    def release_gpus(self) -> None:
        """Stop booking these stages' GPUs (switched away or drained: nothing in flight)."""
        for k, st in enumerate(self.stages):
            self.gpu_time.leave(st.gpu, self, k)

    @property
    def busy_s(self) -> list[float]:
        """Per stage, GPU-seconds of stage work committed so far (without tenant interference)."""
        if self._plan is None:
            return list(self._busy)
        lt, head, n = self._sums
        oh = self.cost.cost.step_overhead_s if n else 0.0
        return [b + nl * lt + (head if hh else 0.0) + n * oh for b, (_, nl, hh, _) in zip(self._busy, self._plan)]

    @property
    def interference_s(self) -> list[float]:
        """Per stage, the extra GPU-seconds tenants' time-slicing added (costmodel.slowdown)."""
        if self._plan is None:
            return list(self._inter)
        return [i + (sd - 1.0) * b for i, b, (_, _, _, sd) in zip(self._inter, self.busy_s, self._plan)]

    @property
    def busy_total_s(self) -> float:
        return self.retired_busy_s + sum(self.busy_s)

    @property
    def interference_total_s(self) -> float:
        return self.retired_interference_s + sum(self.interference_s)

    def busy_totals(self) -> tuple[float, float]:
        """(busy_total_s, interference_total_s), the per-stage busy time worked out once (the
        monitor asks for both every tick); the same sums in the same order."""
        busy = self.busy_s
        if self._plan is None:
            return self.retired_busy_s + sum(busy), self.retired_interference_s + sum(self._inter)
        inter = [i + (sd - 1.0) * b for i, b, (_, _, _, sd) in zip(self._inter, busy, self._plan)]
        return self.retired_busy_s + sum(busy), self.retired_interference_s + sum(inter)

    # --- refactoring support (engine/refactor.py drives these) ---------------------------------
    def pause(self):
        """Stop starting micro-batches; the returned event fires when none is in flight."""
        self.paused = True
        self._resume = self.env.event()
        self._drained_inflight = self.env.event()
        if self.inflight == 0:
            self._drained_inflight.succeed()
        return self._drained_inflight

    def switch(self, stages: list[StageInfo], cost: PipelineCost, block_size: int) -> int:
        """Swap in new stages (paused, nothing in flight). Running requests keep their KV, now in
        the new stages' pools; returns how many had to be preempted for lack of room there."""
        assert self.paused and self.inflight == 0
        self.materialize()
        old = self.kv
        self.retired_busy_s += sum(self.busy_s)
        self.retired_interference_s += sum(self.interference_s)
        self.release_gpus()
        self.stages, self.cost = stages, cost
        self._set_stages(stages, cost)
        self._join_gpus()
        self.kv = _kv_set(stages, block_size)
        n_new = len(stages)
        while len(self.slots) < n_new:
            self.slots.append(self._new_slot(*self._slot_args))
            self._wake.append(None)
            self._flight.append(None)
            self._moved.append(False)
            self._aown.append(False)
            self._procs.append(None)
        for k in range(n_new):
            # new slots, and slots an earlier merge retired (their processes ended) get a process
            if self._procs[k] is None or not self._procs[k].is_alive:
                self._procs[k] = self.env.process(self._slot_loop(k))
        for slot in self.slots:
            slot.kv = self.kv
        for k in range(n_new, self.n_active):  # merge: fold the extra slots' requests into the rest
            for i, r in enumerate(self.slots[k].running):
                self.slots[i % n_new].running.append(r)
            self.slots[k].running = []
        self.n_active = n_new
        preempted = 0
        for slot in self.slots[:n_new]:
            keep = []
            for r in slot.running:
                tokens = r.kv_tokens
                old.free(r)
                if self.kv.try_grow(r, tokens):
                    keep.append(r)
                else:
                    r.num_computed, r.slot = 0, -1
                    r.preemptions += 1
                    self.waiting.appendleft(r)
                    preempted += 1
            slot.running = keep
            slot.recount()
        for slot in self.slots[n_new:]:
            slot.recount()
        self._capacity = None  # new stages, new KV: the routing capacity is recomputed
        self._stage_free = [0.0] * n_new  # nothing in flight: every earlier step is over
        self.paused = False
        self._resume.succeed()
        self._wake_slots()
        return preempted

    # --- gateway side -------------------------------------------------------------------------
    def _running_now(self) -> int:
        return sum(len(s.running) for s in self.slots[: self.n_active])

    @property
    def running(self) -> int:
        return sum(len(s.running) for s in self.slots[: self.n_active])

    def capacity_tokens_per_s(self, prompt_tokens: float) -> float:
        """Decode tokens per second at the batch this instance's KV holds (routing capacity, see
        gateway.py): n = min(KV tokens / (prompt + expected output), slots x max_seqs) sequences,
        n / S per slot at mean context prompt + output / 2; a cycle of the S slots takes the longer
        of one slot's pass (stages, hops, token return) and S steps of the slowest stage."""
        key = round(prompt_tokens)  # switch() clears the cache (new stages, new KV)
        if self._capacity is not None and self._capacity[0] == key:
            return self._capacity[1]
        n_slots = self.n_active
        length = prompt_tokens + self.expected_output
        n = max(1, min(int(self.kv.capacity_tokens // max(length, 1.0)), n_slots * self.slots[0].max_seqs))
        b = max(1, n // n_slots)
        ctx = int(prompt_tokens + self.expected_output / 2)
        w = BatchWork(b, b, b * (ctx + 1), b * (ctx + 1), b)
        st = self.cost.stage_times(w)
        one_pass = sum(st) + sum(self.cost.hop_times(b)) + self.cost.return_time(b)
        cycle = max(one_pass, n_slots * max(st))
        rate = n_slots * b / cycle
        self._capacity = (key, rate)
        return rate

    def work_of(self, r: Request) -> float:
        return r.prompt_tokens + self.expected_output

    def enqueue(self, r: Request) -> None:
        r.instance_id = self.id
        if self._window is not None:
            self.settle()  # steps run ahead past now would not have seen r: take them back
        self.outstanding_work += self.work_of(r)
        self.waiting.append(r)
        self._wake_admitters()

    def remove_waiting(self, r: Request) -> None:
        """Take a never-admitted request out of the queue (timeout, re-route on retire)."""
        self.waiting.remove(r)
        self.outstanding_work -= self.work_of(r)
        r.instance_id = -1

    def start(self) -> None:
        self.state = "ready"
        self._join_gpus()
        self._procs = [self.env.process(self._slot_loop(k)) for k in range(len(self.slots))]

    def retire(self) -> None:
        """Stop admitting; the slots finish what is running, then `drained` fires."""
        self.state = "draining"
        self._wake_slots()

    def abort_all(self) -> None:
        """End of run: release the KV of everything still running (already marked dropped)."""
        self.materialize()
        for slot in self.slots:
            for r in slot.running:
                self.kv.free(r)
            slot.running.clear()
        self.waiting.clear()

    # --- the pipeline ------------------------------------------------------------------------
    def _wake_slots(self) -> None:
        for k, ev in enumerate(self._wake):
            if ev is not None:
                self._wake[k] = None
                self.idle_wakes += 1
                ev.succeed()

    def _wake_admitters(self) -> None:
        """Wake the idle slot that admits the queue's head first: with slot balance only a least
        loaded slot admits (SlotBatcher._least_loaded), idle slots differ in nothing else that
        admission reads (the queue, KV and budget are shared; none runs anything), and they would
        wake in index order. One that admits wakes the rest while the queue lasts (the slot loop);
        if it cannot, none could. The others would schedule nothing: waking every idle slot at
        each arrival was ~40% of a pipeline's slot events on the paper's cv4 (the slots woken
        with it then also kept the first from taking a window). Retired slots wake (and end)."""
        wake, n, slots = self._wake, self.n_active, self.slots
        if slots[0].peers is None or self.state != "ready" or self.paused:
            self._wake_slots()
            return
        lmin = None  # the least load of the active slots, once an idle one is found
        woke = False
        for k, ev in enumerate(wake):
            if ev is None:
                continue
            if k < n:
                if woke:
                    continue
                if lmin is None:
                    lmin = min([s.load for s in slots[:n]])
                if slots[k].load > lmin:
                    continue
                woke = True
            wake[k] = None
            self.idle_wakes += 1
            ev.succeed()

    def _submit(self, start: float, batch: Batch) -> tuple[float, float, float]:
        """Push a micro-batch through the stages from `start`; returns (done, compute, comm).
        Each stage starts at max(ready, its previous step's end), its GPU booked (gputime.py)."""
        w = batch.work
        hops = self.cost.hop_times(w.n_tokens)
        plan = self._plan
        if plan is None:
            return self._submit_priced(start, self.cost.stage_times(w), hops)
        # uniform pipeline: PipelineCost.stage_times's prices, inline; busy time summed per step
        lt, head, oh = self.cost.layer_head(w)
        sums = self._sums
        sums[0] += lt
        sums[1] += head
        sums[2] += 1
        t = start
        book, now = self.gpu_time.book, self.env.now
        free, sole, recent = self._stage_free, self._sole, self._recent
        compute = 0.0
        k = 0
        for gpu, nl, hh, sd in plan:  # hops[k]: after stage k (0.0 after the last, see hop_times)
            dt = (nl * lt + head + oh) * sd if hh else (nl * lt + oh) * sd
            f = free[k]
            if f > t:
                t = f
            if sole[k]:  # its GPU's only stage: FIFO is what the timeline would give
                end = t + dt
                recent[k].append((t, end))
            else:
                end = book(gpu, t, dt, now) + dt
            free[k] = end
            compute += dt
            t = end + hops[k]
            k += 1
        return t, compute, sum(hops)

    def _submit_priced(self, start: float, st: list[float], hops: list[float]) -> tuple[float, float, float]:
        t = start
        last = len(st) - 1
        book, now = self.gpu_time.book, self.env.now
        free, sd, busy, inter, stages = self._stage_free, self._slowdowns, self._busy, self._inter, self.stages
        for k, dt in enumerate(st):
            f = free[k]
            end = book(stages[k].gpu, t if t > f else f, dt, now) + dt
            free[k] = end
            own = dt / sd[k]
            busy[k] += own
            inter[k] += dt - own
            t = end + hops[k] if k < last else end
        return t, sum(st), sum(hops)

    def _slot_loop(self, k: int):
        env = self.env
        flight, moved, own = self._flight, self._moved, self._aown
        while True:
            if k >= self.n_active:  # retired by a merge
                return
            if self.paused:
                yield self._resume
                continue
            slot = self.slots[k]
            if self._horizon is None or not self._run_ahead(k):
                # FastSlotBatcher takes the reserve as a callable and sums it only when it admits
                batch = slot.schedule(env.now, admit=True,
                                      growth_reserve=self._running_now if self._fast else self.running)
                if (slot.preempted_last or (slot.admitted_last and self.waiting)) and any(self._wake):
                    # preemptions refilled the queue, or this slot stopped admitting because it is no
                    # longer the least loaded: let idle slots try (a chain of wakes needs admissions, so ends)
                    self._wake_slots()
                if batch is None:
                    if self.state == "draining" and not self.waiting:
                        if not self.running and not self.drained.triggered:
                            self.drained.succeed()
                        return
                    ev = env.event()
                    self._wake[k] = ev
                    yield ev
                    continue
                back = self.cost.return_time(batch.work.n_seqs) if batch.has_decode else 0.0
                done, compute, comm = self._submit(env.now + back, batch)
                flight[k] = (done, batch, compute, comm + back)
            self.inflight += 1
            while True:
                try:
                    yield env.timeout((flight[k][0] if not own[k] else self._kdone(k)) - env.now)
                except simpy.Interrupt:  # `settle` took steps back: wait for the new last one
                    continue
                if moved[k]:
                    # a run-ahead took that step and did not move this wait (RunAhead._retarget does;
                    # kept as the safe fallback: wait for the latest)
                    moved[k] = False
                    self.stale_wakes += 1
                    continue
                if own[k] and not self.paused and self._run_ahead_wake(k):
                    continue  # a window took this completion and the steps after it: wait for the latest
                break
            if self._window is not None:
                self._window = None  # its steps are done: nothing to take back
            self.inflight -= 1
            if own[k]:  # its state is in the compiled windows' arrays (heldslots._run_ahead_kept)
                self._kflush(k)
            _, batch, compute, comm = flight[k]
            flight[k] = None
            if self.paused and self.inflight == 0 and not self._drained_inflight.triggered:
                self._drained_inflight.succeed()
            if batch is None:  # a run-ahead accounted the step; the next is the ordinary path's
                continue
            self.steps += 1

            finished = slot.postprocess(batch, env.now, compute, comm)
            for r in finished:
                self.outstanding_work -= self.work_of(r)
                self._on_finish(r)
            if finished and self.waiting:
                self._wake_admitters()  # freed KV may admit queued requests in idle slots
