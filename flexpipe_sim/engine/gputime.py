"""Who uses each GPU when: the stage steps booked on it, for instances that share GPUs.

Stage steps are booked at micro-batch submission (one SimPy event per micro-batch, see
instance.py). A GPU runs one stage step at a time (time-slicing between CUDA contexts runs whole
kernels; we book whole steps). Booking is work-conserving in the backfilling sense: a step goes
into the earliest idle gap at or after the time its input is ready that is long enough to hold it,
even if that gap lies before steps booked earlier by other instances. A booked step is never moved,
so earlier bookings keep their times. With `work_conserving=False` a step can only start after the
last booking on the GPU (the earlier "book the GPU until" clock, kept for comparison in tests).

Within one instance, stages are FIFO (vLLM's stage workers run micro-batches in arrival order):
the instance passes `earliest` >= its own previous step on that stage, so an instance alone on its
GPUs gets exactly the tandem-queue timings.

Sole users: a stage that is the only one on its GPU (`join`/`leave` keep the register) books
nothing here: its FIFO start max(ready, its own previous end) is what `book` would return. It keeps
its last few steps (those that can still be running) and hands them over (`adopt`) when a second
stage joins the GPU, so the timeline then holds every booking that can still matter (bookings that
ended by `now` never change a later one, see `book`). The same results, without a call per stage step.
"""

from __future__ import annotations

from bisect import bisect_right


class GpuTimeline:
    def __init__(self, work_conserving: bool = True, log: bool = False, sole_stages: bool = True) -> None:
        self.work_conserving = work_conserving
        self.sole_stages = sole_stages and not log  # off: every step is booked here (tests compare)
        self._starts: dict[int, list[float]] = {}
        self._ends: dict[int, list[float]] = {}  # sorted, as the intervals never overlap
        self.log: dict[int, list[tuple[float, float]]] | None = {} if log else None  # for tests
        self._users: dict[int, list[tuple[object, int]]] = {}  # gpu -> (instance, stage index) booking it

    def join(self, gpu: int, inst, k: int, now: float) -> None:
        """Stage k of `inst` books `gpu` from now on. A sole user books nothing here (it calls
        `inst.set_sole(k, steps)`); when a second stage joins, the first hands its steps over."""
        users = self._users.setdefault(gpu, [])
        if len(users) == 1:
            other, j = users[0]
            self.adopt(gpu, other.set_sole(j, False), now)
        users.append((inst, k))
        inst.set_sole(k, len(users) == 1 and self.sole_stages)

    def leave(self, gpu: int, inst, k: int) -> None:
        """Stage k of `inst` no longer books `gpu` (nothing of it in flight: switched or drained)."""
        users = self._users.get(gpu, [])
        users.remove((inst, k))
        if len(users) == 1 and self.sole_stages:
            other, j = users[0]
            other.set_sole(j, True)

    def adopt(self, gpu: int, steps: list[tuple[float, float]], now: float) -> None:
        """Take in a former sole user's steps (FIFO, so in order) that have not ended by now."""
        ends = self._ends.setdefault(gpu, [])
        starts = self._starts.setdefault(gpu, [])
        for begin, end in steps:
            if end > now:  # never overlaps a booking here: the others ended before it was made
                i = bisect_right(ends, begin)
                starts.insert(i, begin)
                ends.insert(i, end)

    def book(self, gpu: int, earliest: float, dt: float, now: float) -> float:
        """Book `dt` seconds of `gpu` at or after `earliest`; returns the start."""
        ends = self._ends.get(gpu)
        if ends is None:
            ends = self._ends[gpu] = []
            self._starts[gpu] = []
        starts = self._starts[gpu]
        if ends and ends[0] <= now:  # bookings over by now can no longer matter
            gone = bisect_right(ends, now)
            del starts[:gone], ends[:gone]
        if self.log is None and (not ends or earliest >= ends[-1]):
            # the common case (a GPU's only stage, FIFO): after every booking; merge or append
            end = earliest + dt
            if ends and ends[-1] == earliest:
                ends[-1] = end
            else:
                starts.append(earliest)
                ends.append(end)
            return earliest
        if not ends or earliest >= ends[-1]:
            begin, i = earliest, len(ends)
        elif not self.work_conserving:
            begin, i = ends[-1], len(ends)
        else:
            i = bisect_right(ends, earliest)  # first booking still running at `earliest`
            begin = earliest
            n = len(starts)
            while i < n and begin + dt > starts[i]:
                if ends[i] > begin:
                    begin = ends[i]
                i += 1
        end = begin + dt
        # insert at i, merging with touching neighbours to keep the lists short
        if i > 0 and ends[i - 1] == begin:
            ends[i - 1] = end
            if i < len(starts) and starts[i] == end:
                ends[i - 1] = ends[i]
                del starts[i], ends[i]
        elif i < len(starts) and starts[i] == end:
            starts[i] = begin
        else:
            starts.insert(i, begin)
            ends.insert(i, end)
        if self.log is not None:
            self.log.setdefault(gpu, []).append((begin, end))
        return begin
