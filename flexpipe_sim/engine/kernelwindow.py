"""Run-ahead windows through the compiled loop (engine/stepkernel.py): Instance's mixin that copies
its slots, stages and KV phase counts into flat arrays, runs the loop and writes the result back,
exactly where RunAhead's Python loops would have left it (tests/test_stepkernel.py).

The copy costs several microseconds per slot, so RunAhead._run_ahead sends a window here only where
it is likely long enough to gain (one slot on one stage, the most common, has its own direct copy:
`_run_ahead_compiled_one`). KV growth goes in as each slot's lazy requests per phase
(FastSlotBatcher._gc) and comes back as its last grown tick and the blocks taken.

A several-slot window goes to `_run_ahead_kept` (engine/heldslots.py), whose arrays hold the
instance's slots across windows.

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
        status, _, taken, _, _ = sk.run(0, now, horizon, K, F, I, lts, kind, kv.block_size, oh, True, 1, len(kn), 1, R,
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


def _counters_back(s, r: list[int], f: list[float]) -> None:
    """A slot's row of the compiled loop's arrays (r: its integers, f: its floats) written back
    into it: its counters and, where it scheduled, _schedule_ahead's settings."""
    if r[sk.I_FAST] != s.fast_steps:
        s.preempted_last = s.admitted_last = 0
        s._step_lazy = r[sk.I_N]
        s._last_fast = True
    s.tick, s.ctx_sum, s.sampled = r[sk.I_TICK], r[sk.I_CTX], r[sk.I_SAMPLED]
    s.fast_steps, s._gt = r[sk.I_FAST], r[sk.I_GT]
    s.cum_compute, s.cum_comm = f[sk.C_CUMC], f[sk.C_CUMM]


def _slot_back(s, r: list[int], f: list[float], flight: list, i: int) -> None:
    """Slot i's row of the compiled loop's output written back into it (_counters_back), and its
    step in flight where it scheduled one."""
    _counters_back(s, r, f)
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
