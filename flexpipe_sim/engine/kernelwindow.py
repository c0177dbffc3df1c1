"""Run-ahead windows through the compiled loop (engine/stepkernel.py): Instance's mixin that copies
its slots, stages and KV phase counts into flat arrays, runs the loop and writes the result back,
exactly where RunAhead's Python loops would have left it (tests/test_stepkernel.py).

The copy costs several microseconds per slot, so RunAhead._run_ahead sends a window here only where
it is likely long enough to gain (one slot on one stage, the most common, has its own direct copy:
`_run_ahead_compiled_one`). KV growth goes in as each slot's lazy requests per phase
(FastSlotBatcher._gc) and comes back as its last grown tick and the blocks taken.

A several-slot instance keeps its arrays across windows (`_run_ahead_kept`): a slot the loop
scheduled stays held there (`_aown`; its `_flight` entry is `_OWNED`, its completion `_kdone`)
instead of being written back, until its process wakes (Instance._slot_loop), a window stops at it,
or Python reads the instance's slots (materialise, the Python loop: `_kflush_all`). A window then
copies in only the slots Python changed: mostly the one whose process runs. Where the loop stops at
a step that finishes requests or one the ordinary path scheduled, that completion is taken in
Python as the Python loop takes it (nobody waiting) and the loop goes on from it.

A several-slot window that stays in RunAhead's Python loop still prices its steps and clocks the
stages here (`_hybrid_start`/`_hybrid_end` around stepkernel.stage_step): only the stage clocks
and busy sums are copied per window. Both kinds of window leave each stage's last steps in the
instance's rings (`_kbuffers`, kept across windows), which Instance.set_sole reads with its deques
when a second stage joins a GPU.
"""

from __future__ import annotations

import numpy as np

from flexpipe_core.blocks import BlockCounter

from . import stepkernel as sk
from .runahead import STEADY, Window


class CompiledRunAhead:
    """Mixed into Instance beside RunAhead."""

    def _run_ahead_compiled(self, k: int, horizon: float, single: bool, stops: tuple[int, ...] = (),
                            wake: bool = False) -> bool | None:
        """_run_ahead's loop (and _run_ahead_single's) in engine/stepkernel.py: the instance's state
        copied into flat arrays (stepkernel.run says their layout), advanced there, and written
        back. None, changing nothing, where the cost model or the KV has no array form (the Python
        loop then runs)."""
        kp = self._kplan
        if kp is None:
            kp = self._kplan = self._kernel_plan()
        if kp is False:
            return None
        if single:
            return self._run_ahead_compiled_one(horizon, kp)
        return self._run_ahead_kept(k, horizon, stops, kp, wake)

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
        blocks0 = min([mg.num_free for mg in kv.managers])
        I[ST * m] = blocks0
        _, RN, REC = self._kbuffers(P)
        ahead = self._finish_ahead if not self.waiting else None
        k0, total, first = k, 0, True
        first_k = -1 if wake else k
        while True:
            status, who, taken = sk.run(first_k, now, horizon, K, F, I, _NO_LTS, kind, bs, oh, False, m, len(kn), P, R,
                                        REC, RN)
            if status == sk.FIRST_FAILED:
                if first:
                    for i in held:
                        I[ST * i + sk.I_STEADY] = 1
                    return False
                flight[k] = (now, None, 0.0, 0.0)  # its process schedules at its completion (ordinary path)
                break
            total += taken
            first = False
            new = I[sk.I_NEW: ST * m: ST].tolist()
            took = I[sk.I_TAKEN: ST * m: ST].tolist()
            for i in range(m):
                if new[i] == 1:  # a steady step scheduled: the slot stays in the arrays
                    own[i] = True
                    flight[i] = _OWNED
                elif new[i] == 2:  # KV short: its process schedules at its completion
                    self._kflush(i, None)
                if took[i] and i != k0:
                    moved[i] = True
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
            blocks0 = min([mg.num_free for mg in kv.managers])  # (the finishes freed blocks)
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
            if ahead is None or not ahead(len(fin) + len(batch.items)):
                return False
            for r in s.postprocess(batch, c, compute, comm):
                self.outstanding_work -= self.work_of(r)
                self._on_finish(r)
                self.finished_ahead += 1
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
        st = self._kst
        if st is None or st[2] != (m, P, bs):
            assert not any(self._aown), "slots still held in the arrays"
            st = self._kst = (np.zeros(8 * m + P + 6), np.zeros(sk.ST_COLS * m + 1 + m * bs, np.int64), (m, P, bs))
        return st[0], st[1]

    def _kdone(self, i: int) -> float:
        """The completion time of held slot i's step in flight."""
        return float(self._kst[0][8 * i])

    def _kflush(self, i: int, batch=STEADY) -> None:
        """Slot i's state out of the arrays into the slot (its counters, the settings of the steady
        step it scheduled) and its step in flight into `_flight` (batch STEADY; None: its process
        schedules at the completion by the ordinary path)."""
        F, I, _ = self._kst
        ST = sk.ST_COLS
        r = I[ST * i: ST * (i + 1)].tolist()
        f = F[8 * i: 8 * i + 8].tolist()
        s = self.slots[i]
        if r[sk.I_FAST] != s.fast_steps:  # it scheduled: _schedule_ahead's settings
            s.preempted_last = s.admitted_last = 0
            s._step_lazy = r[sk.I_N]
            s._last_fast = True
        s.tick, s.ctx_sum, s.sampled, s.fast_steps, s._gt = r[sk.I_TICK], r[sk.I_CTX], r[sk.I_SAMPLED], r[sk.I_FAST], r[sk.I_GT]
        s.cum_compute, s.cum_comm = f[sk.C_CUMC], f[sk.C_CUMM]
        self._flight[i] = (f[sk.C_DONE], STEADY, f[sk.C_COMP], f[sk.C_COMM]) if batch is STEADY else (f[sk.C_DONE], None, 0.0, 0.0)
        self._aown[i] = False

    def _kflush_all(self) -> None:
        """Every slot out of the arrays (before Python reads or changes slots other than the one
        whose process runs: the Python window loop, materialise)."""
        own = self._aown
        for i in range(len(own)):
            if own[i]:
                self._kflush(i)

    def _run_ahead_compiled_one(self, horizon: float, kp: tuple) -> bool | None:
        """_run_ahead_compiled for one slot on one stage (most baselines' instances, whose windows
        are many): the same arrays and write-back as the general copy with m = P = 1, k = 0 (slot 0
        schedules first, nothing in flight), built directly (~20 us less per window)."""
        K, kind, oh, rows, cmax, hops, kn, khd, R = kp
        s = self.slots[0]
        n = s.n_lazy
        if not 0 < n <= s.token_budget:
            return False
        fin = s._finish
        if not fin:
            return None
        if kn[0] != n and not self._kernel_row(kp, 0, n):
            return None
        head, back, hop_sum = khd[0]
        stop, tick = fin[0][0], s.tick
        lts = self._lts_buf
        if lts is None or len(lts) < stop - tick + 2:  # at most one step per tick before the finishing one
            lts = self._lts_buf = np.empty(max(stop - tick + 2, 256))
        sums, free0, kv, now = self._sums, self._stage_free[0], self.kv, self.env.now
        # F: the slot (nothing in flight), the stage clock, sums and ext;
        # I: the slot, free blocks, its KV phase counts (stepkernel.run)
        F = np.array([0.0, s.cum_compute, s.cum_comm, 0.0, 0.0, head, back, hop_sum, free0,
                      sums[0], sums[1], float(sums[2]), 0.0, 0.0, 0.0])
        blocks0 = min([mg.num_free for mg in kv.managers])
        I = np.array([n, tick, s.ctx_sum, s.sampled, s.fast_steps, stop, 1, 0, 0, 0, 0, 0, s._gt, blocks0] + s._gc,
                     np.int64)
        w0 = (now, free0, tick, s.cum_compute, s.sampled, s.ctx_sum, sums[0], sums[1], sums[2], s.fast_steps,
              self.steps, self.steps_ahead, n)
        _ONE_RN[0] = 0
        status, _, taken = sk.run(0, now, horizon, K, F, I, lts, kind, kv.block_size, oh, True, 1, len(kn), 1, R,
                                  _ONE_REC, _ONE_RN)
        if status == sk.FIRST_FAILED:
            return False
        fl, il = F.tolist(), I.tolist()
        if il[sk.I_NEW] or il[sk.I_TAKEN]:
            _slot_back(s, il, fl, self._flight, 0)  # the slot's row leads both lists
        self._stage_free[0] = fl[8]
        sums[0], sums[1], sums[2] = fl[9], fl[10], int(fl[11])
        n_lts, n_ext = int(fl[12]), int(fl[13])
        if _ONE_RN[0]:  # the stage's last step (in its deque, which `settle` may overwrite)
            self._recent[0].append(tuple(_ONE_REC.tolist()))
        self.steps += taken
        self.steps_ahead += taken
        _grown(kv, blocks0 - il[sk.ST_COLS])
        if n_ext:
            pr = self.cost.cost.profile
            pr._warn("decode", f"decode batch {n} at context {fl[14]:.0f}")
            pr.extrapolations += n_ext - 1
        self._window = Window(*w0, lts[:n_lts].tolist())
        self.windows_compiled += 1
        return True

    def _kernel_row(self, kp: tuple, i: int, n: int) -> bool:
        """Slot i's pricing row in the kernel plan for a batch of n (the cost model's decode_kernel),
        kept while its batch size stays. False where the cost model has none for n."""
        tab = self.cost.decode_kernel(n)
        if tab is None:
            return False
        _, _, _, rows, cmax, hops, kn, khd, _ = kp
        rows[i] = tab[1]
        cmax[i] = tab[2]
        hops[i] = tab[6]
        khd[i] = (tab[4], tab[5], tab[7])
        kn[i] = n
        return True

    def _hybrid_start(self, k: int, kp: tuple) -> tuple | None:
        """RunAhead._run_ahead_multi with compiled stage steps (stepkernel.stage_step): the stage
        clocks and busy sums copied into the instance's buffer, then slot k's step scheduled now
        (_schedule_ahead's settings and prices). Returns what the loop needs, or None, changing
        nothing, where slot k's step cannot be taken this way."""
        K, kind, oh, _, _, _, kn, khd, R = kp
        s = self.slots[k]
        n = s.n_lazy
        if not n or n > s.token_budget or (kn[k] != n and not self._kernel_row(kp, k, n)):
            return None
        if not s._grow_phase(s.tick):
            return None
        P, mk = len(self._plan), len(kn)
        S, RN, _ = self._kbuffers(P)
        sums = self._sums
        S[: P + 5] = self._stage_free + [sums[0], sums[1], float(sums[2]), 0.0, 0.0]
        s.preempted_last = s.admitted_last = 0
        s._step_lazy = n
        s._last_fast = True
        s.fast_steps += 1
        head, back, hop_sum = khd[k]
        t, compute = sk.stage_step(k, self.env.now + back, s.ctx_sum + n, n, head, K, S, RN, kind, oh, P, mk, R)
        self._flight[k] = (t, STEADY, compute, hop_sum + back)
        return K, kind, oh, kn, khd, R, S, RN, P, mk

    def _kbuffers(self, P: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The instance's buffers for compiled steps of its P stages: S (stage clocks, sums (4),
        ext (3), then the last-step rings, P x P x 2), the rings' counts per stage, and the rings
        (a view of S). The rings keep every compiled step's last steps across windows (whole-window
        or stage steps); Instance.set_sole reads them with the deques."""
        buf = self._kbuf
        if buf is None:
            S = np.zeros(P + 7 + 2 * P * P)
            buf = self._kbuf = (S, np.zeros(P, np.int64), S[P + 7:])
        return buf

    def _hybrid_end(self, S: np.ndarray, P: int) -> None:
        """_hybrid_start's buffer written back: stage clocks, busy sums, and the steps priced beyond
        the profile's grid (warned and counted as the Python lookup does). The stages' last steps
        stay in the buffer's rings (Instance.set_sole reads them with the deques)."""
        sl = S[: P + 7].tolist()
        self._stage_free[:] = sl[:P]
        sums = self._sums
        sums[0], sums[1], sums[2] = sl[P], sl[P + 1], int(sl[P + 2])
        n_ext = int(sl[P + 4])
        if n_ext:
            pr = self.cost.cost.profile
            pr._warn("decode", f"decode batch {sl[P + 6]:.0f} at context {sl[P + 5]:.0f}")
            pr.extrapolations += n_ext - 1

    def _rings_kept(self, k: int) -> list[tuple[float, float]]:
        """Stage k's last steps taken by compiled windows (its ring, at most P, oldest first), and
        the ring emptied (Instance.set_sole)."""
        if self._kbuf is None:
            return []
        S, RN, _ = self._kbuf
        P = RN.shape[0]
        cnt = int(RN[k])
        RN[k] = 0
        ring = S[P + 7 + 2 * P * k: P + 7 + 2 * P * (k + 1)].tolist()
        steps = list(zip(ring[0::2], ring[1::2]))
        return steps[cnt % P:] + steps[: cnt % P] if cnt >= P else steps[:cnt]

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


def _slot_back(s, r: list[int], f: list[float], flight: list, i: int) -> None:
    """Slot i's row of the compiled loop's output (r: its integers, f: its floats) written back
    into it, and its step in flight where it scheduled one."""
    if r[sk.I_FAST] != s.fast_steps:  # it scheduled: _schedule_ahead's settings
        s.preempted_last = s.admitted_last = 0
        s._step_lazy = r[sk.I_N]
        s._last_fast = True
    s.tick, s.ctx_sum, s.sampled, s.fast_steps, s._gt = r[sk.I_TICK], r[sk.I_CTX], r[sk.I_SAMPLED], r[sk.I_FAST], r[sk.I_GT]
    s.cum_compute, s.cum_comm = f[sk.C_CUMC], f[sk.C_CUMM]
    if r[sk.I_NEW] == 1:
        flight[i] = (f[sk.C_DONE], STEADY, f[sk.C_COMP], f[sk.C_COMM])
    elif r[sk.I_NEW] == 2:
        flight[i] = (f[sk.C_DONE], None, 0.0, 0.0)  # its process schedules at its completion


def _grown(kv, k: int) -> None:
    """The compiled loop's KV growths, k blocks in all (each request's own: FastSlotBatcher.kv_owed),
    counted on every stage's block counter."""
    if k:
        for mg in kv.managers:
            mg.num_free -= k
            mg.allocated_total += k


_ONE_REC, _ONE_RN = np.zeros(2), np.zeros(1, np.int64)  # a one-stage window's last step (scratch)
_IDLE = (0.0, None, 0.0, 0.0)
_OWNED = (float("nan"), STEADY, 0.0, 0.0)  # the flight of a slot held in the arrays (read it with _kdone)  # a slot with no step in flight (or slot k, about to schedule)
_NO_LTS = np.empty(1)  # the compiled loop keeps no layer times where nothing will be taken back
