"""Several-slot run-ahead windows in the compiled loop (engine/stepkernel.py), the slots held in
the instance's arrays between windows: Instance's mixin beside RunAhead and CompiledRunAhead.

A several-slot instance keeps its arrays across windows (`_run_ahead_kept`): a slot the loop
scheduled stays held there (`_aown`; its `_flight` entry is `_OWNED`, its completion `_kdone`)
instead of being written back, until its process wakes (Instance._slot_loop), a window stops at it,
or Python reads the instance's slots (materialise, the Python loop: `_kflush_all`). A window then
copies in only the slots Python changed: mostly the one whose process runs. Where the loop stops at
a step that finishes requests or one the ordinary path scheduled, that completion is taken in
Python as the Python loop takes it (nobody waiting) and the loop goes on from it. A held slot's
process that wakes at a step finishing nobody starts the next window from that completion
(`_run_ahead_wake`) instead of the slot loop accounting it and the window copying the slot back in.

Every window leaves the state RunAhead's Python loop would have left, to the bit
(tests/test_stepkernel.py compares whole runs' records; tests/test_fastforward.py, step by step).
"""

from __future__ import annotations

import numpy as np

from . import stepkernel as sk
from .kernelwindow import _counters_back, _grown
from .runahead import STEADY


class HeldSlots:
    """Mixed into Instance: `_aown[i]` says slot i's state is in `_kst`'s arrays, not in the slot."""

    def _run_ahead_wake(self, k: int) -> bool:
        """Slot k's process woke at its step's completion (now) while the compiled windows' arrays
        hold it: where that step finishes nobody, a window takes it and goes on (RunAhead._run_ahead
        with wake), instead of the slot loop accounting it and the next window copying the slot back
        in. False, changing nothing, where the slot loop must take it."""
        I = self._kst[1]
        r = sk.ST_COLS * k
        if I[r + sk.I_TICK] + 1 >= I[r + sk.I_STOP]:
            return False  # it finishes requests
        if not self._run_ahead(k, True):
            return False
        self.windows_woken += 1
        return True

    def _run_ahead_kept(self, k: int, horizon: float, stops: tuple[int, ...], kp: tuple,
                        wake: bool = False) -> bool | None:
        """A several-slot window in the compiled loop, its slots' state kept in the instance's arrays
        between windows (`_kstate`): a slot the loop scheduled stays there (`_aown`, its flight
        `_OWNED`) until its process wakes or Python reads it (`_kflush`), so a window copies in only
        the slots Python changed (mostly the one whose process runs now). Where the loop stops at a
        completion it cannot take (a step that finishes requests, or one the ordinary path
        scheduled), it is taken here as RunAhead._run_ahead_multi takes it (nobody waiting) and the
        loop goes on from it, that slot scheduling first. `wake`: slot k is held, its step completing
        now; the loop starts there (nobody schedules first)."""
        K, kind, oh, rows, cmax, hops, kn, khd, R = kp
        slots, flight, moved, own = self.slots, self._flight, self._moved, self._aown
        if not wake and not 0 < slots[k].n_lazy <= slots[k].token_budget:
            return False  # slot k's own step cannot be taken this way
        m, P, bs = self.n_active, len(self._plan), self.kv.block_size
        if m > 62:
            return None  # (the loop's bit masks of slots)
        F, I = self._kstate(m, P, bs)
        ST = sk.ST_COLS
        for i in range(m):
            if own[i]:
                continue
            if i != k and flight[i] is None:  # idle: the loop reads only that nothing is in flight
                I[ST * i + sk.I_ACTIVE] = 0
            elif not self._kput(i, k, stops, kp, F, I, bs):
                return None
        held = [i for i in stops if own[i]]  # in flight in the arrays, admitting when they next schedule:
        for i in held:  # not steady for this window (the loop stops at their completion)
            I[ST * i + sk.I_STEADY] = 0
        kv, sums, now = self.kv, self._sums, self.env.now
        b = 8 * m
        F[b: b + P + 6] = self._stage_free + [sums[0], sums[1], float(sums[2]), 0.0, 0.0, 0.0]
        blocks0 = _free_blocks(kv)
        I[ST * m] = blocks0
        _, RN, REC = self._kbuffers(P)
        ahead = self._finish_ahead if not self.waiting else None
        k0, total, first = k, 0, True
        first_k = -1 if wake else k
        while True:
            status, who, taken, scheduled, took = sk.run(first_k, now, horizon, K, F, I, _NO_LTS, kind, bs, oh,
                                                         False, m, len(kn), P, R, REC, RN)
            if status == sk.FIRST_FAILED:
                if first:
                    for i in held:
                        I[ST * i + sk.I_STEADY] = 1
                    return False
                flight[k] = (now, None, 0.0, 0.0)  # its process schedules at its completion (ordinary path)
                break
            total += taken
            first = False
            while scheduled:  # a steady step scheduled: the slot stays in the arrays
                low = scheduled & -scheduled
                scheduled ^= low
                i = low.bit_length() - 1
                if not own[i]:
                    own[i] = True
                    flight[i] = _OWNED
            if status == sk.SHORT:  # KV short: its process schedules at its completion
                self._kflush(who, None)
            took &= ~(1 << k0)
            while took:  # steps taken from slots whose processes wait: their waits move (_retarget)
                low = took & -took
                took ^= low
                moved[low.bit_length() - 1] = True
            fb = int(I[ST * m])
            _grown(kv, blocks0 - fb)
            if status != sk.DONE or who < 0:
                break
            c = float(F[8 * who])
            if c >= horizon or who in stops or not self._take_completion(who, c, ahead):
                break
            total += 1
            if who != k0:
                moved[who] = True
            if flight[who] is not None:  # taken, but a request is still explicit: its process schedules at c
                break
            if not self._kput(who, who, stops, kp, F, I, bs):
                flight[who] = (c, None, 0.0, 0.0)
                break
            blocks0 = _free_blocks(kv)  # (the finishes freed blocks)
            I[ST * m] = blocks0
            k = first_k = who  # the loop goes on from this completion, its slot scheduling first
            now = c
        for i in held:
            if own[i]:
                I[ST * i + sk.I_STEADY] = 1
        fl = F[b: b + P + 6].tolist()
        self._stage_free[:] = fl[:P]
        sums[0], sums[1], sums[2] = fl[P], fl[P + 1], int(fl[P + 2])
        self.steps += total
        self.steps_ahead += total
        if fl[P + 4]:
            pr = self.cost.cost.profile
            pr._warn("decode", f"decode batch {I[sk.I_N]} at context {fl[P + 5]:.0f}")
            pr.extrapolations += int(fl[P + 4]) - 1
        self.windows_compiled += 1
        return True

    def _take_completion(self, i: int, c: float, ahead) -> bool:
        """Slot i's completion at c, where the compiled loop stopped (its step finishes requests, or
        the ordinary path scheduled it), accounted as RunAhead._run_ahead_multi accounts it where
        nobody waits; its flight is then None (it schedules next, at c) or, where a request is left
        explicit, (c, None, ...). False, changing nothing but moving the slot out of the arrays,
        where its own process must take it."""
        if self._aown[i]:
            self._kflush(i, STEADY)
        s = self.slots[i]
        _, batch, compute, comm = self._flight[i]
        if batch is None or not s._last_fast or not s.fast:
            return False
        fin = s._finish
        if batch.items or (fin and fin[0][0] <= s.tick + 1):
            if not self._postprocess_ahead(s, batch, c, compute, comm, ahead):
                return False
        else:  # FastSlotBatcher.step_lazy: a steady step the loop did not hold as one (its batch size changed)
            s.step_lazy(compute, comm)
        if batch.items:
            if s.explicit:
                self._flight[i] = (c, None, 0.0, 0.0)  # (postprocessed: its process schedules at c)
                return True
            s.preempted_last = s.admitted_last = 0
            self.nonsteady_ahead += 1
        self._flight[i] = None
        return True

    def _kput(self, i: int, k: int, stops: tuple[int, ...], kp: tuple, F: np.ndarray, I: np.ndarray, bs: int) -> bool:
        """Slot i's state into the arrays (stepkernel.run's layout): its counters, its step in flight
        (none for slot k, which schedules first) and its KV phase counts. False where the cost
        model has no pricing row for its batch size."""
        kn, khd = kp[6], kp[7]
        s = self.slots[i]
        n = s.n_lazy
        can = 0 < n <= s.token_budget
        stop = s._finish[0][0] if s._finish else 1 << 62  # the tick whose step finishes someone
        if can:
            if kn[i] != n and not self._kernel_row(kp, i, n):  # (kept while its batch size stays)
                return False
            head, back, hop_sum = khd[i]
        else:
            head = back = hop_sum = 0.0
        f = self._flight[i] if i != k else None
        if f is not None:  # in flight: the loop takes its completion if it is a steady step
            batch = f[1]
            steady = (batch is not None and not batch.items and s._last_fast and s.fast and s._step_lazy == n
                      and i not in stops)  # (a slot in `stops` admits when it next schedules)
        else:
            f, steady = _IDLE, False
        ST = sk.ST_COLS
        F[8 * i: 8 * i + 8] = [f[0], s.cum_compute, s.cum_comm, f[2], f[3], head, back, hop_sum]
        I[ST * i: ST * (i + 1)] = [n, s.tick, s.ctx_sum, s.sampled, s.fast_steps, stop, can, steady, f is not _IDLE,
                                   0, 0, 0, s._gt]
        g = ST * self.n_active + 1 + bs * i
        I[g: g + bs] = s._gc if can else 0
        return True

    def _kstate(self, m: int, P: int, bs: int) -> tuple[np.ndarray, np.ndarray]:
        """The instance's arrays for several-slot compiled windows (stepkernel.run's F and I for m
        slots, P stages, blocks of bs tokens), kept across windows; new (every slot out of them)
        where the shape changed (a refactor's switch, after every slot was flushed)."""
        st = self._kst  # (None after a switch, the only change of m, P or bs: Instance._set_stages)
        if st is None:
            assert not any(self._aown), "slots still held in the arrays"
            st = self._kst = (np.zeros(8 * m + P + 6), np.zeros(sk.ST_COLS * m + 1 + m * bs, np.int64))
        return st

    def _kdone(self, i: int) -> float:
        """The completion time of held slot i's step in flight."""
        return float(self._kst[0][8 * i])

    def _kflush(self, i: int, batch=STEADY) -> None:
        """Slot i's state out of the arrays into the slot (its counters, the settings of the steady
        step it scheduled) and its step in flight into `_flight` (batch STEADY; None: its process
        schedules at the completion by the ordinary path)."""
        F, I = self._kst
        ST = sk.ST_COLS
        r = I[ST * i: ST * (i + 1)].tolist()
        f = F[8 * i: 8 * i + 8].tolist()
        _counters_back(self.slots[i], r, f)
        done = f[sk.C_DONE]
        self._flight[i] = (done, STEADY, f[sk.C_COMP], f[sk.C_COMM]) if batch is STEADY else (done, None, 0.0, 0.0)
        self._aown[i] = False

    def _kflush_all(self) -> None:
        """Every slot out of the arrays (before Python reads or changes slots other than the one
        whose process runs: the Python window loop, materialise)."""
        own = self._aown
        for i in range(len(own)):
            if own[i]:
                self._kflush(i)


def _free_blocks(kv) -> int:
    """The fewest free blocks of the instance's stages (the simulator's KV: one counter)."""
    ms = kv.managers
    return ms[0].num_free if len(ms) == 1 else min([mg.num_free for mg in ms])


_IDLE = (0.0, None, 0.0, 0.0)  # a slot with no step in flight (or slot k, about to schedule)
_OWNED = (float("nan"), STEADY, 0.0, 0.0)  # the flight of a slot held in the arrays (read it with _kdone)
_NO_LTS = np.empty(1)  # the compiled loop keeps no layer times where nothing will be taken back
