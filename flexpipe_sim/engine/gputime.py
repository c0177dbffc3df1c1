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
"""

from __future__ import annotations

from bisect import bisect_right


class GpuTimeline:
    def __init__(self, work_conserving: bool = True, log: bool = False) -> None:
        self.work_conserving = work_conserving
        self._starts: dict[int, list[float]] = {}
        self._ends: dict[int, list[float]] = {}  # sorted, as the intervals never overlap
        self.log: dict[int, list[tuple[float, float]]] | None = {} if log else None  # for tests

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
