"""The run-ahead window loop (engine/runahead.py), compiled with numba: steady decode steps at a few
nanoseconds each instead of microseconds of Python.

`advance` is `RunAhead._run_ahead`'s loop (and `_run_ahead_single`'s, its one-slot one-stage case)
over flat arrays: slots' completions in time order (ties to the lower slot, as the heap of
(time, slot) pops them), each completion accounted (FastSlotBatcher.step_lazy) and the slot's next
step scheduled (its KV growth, then `_schedule_ahead`'s pricing and submission through the stages).
Every float operation is the Python loop's, in the same order, so the records are the same to the
bit: numba compiles `+ - * /` to IEEE double operations without fused multiply-adds (no fastmath)
and calls the C library's `log`/`exp`, as CPython's math module does
(tests/test_stepkernel.py checks both, and the records of whole runs against the Python loop).

What the loop cannot do in arrays it hands back: a step priced beyond the profile's grid is priced
here by the fitted roofline (profiles.Profile.decode_layer_s) and counted, so the caller can warn
and count as the Python lookup would.

A KV growth is counted per lazy request: `gnext[j]` is the tick at which request j fills its last
block; a step scheduled at tick t grows every request with gnext <= t by one block (all of them, or
none where fewer blocks are free: the ordinary path then decides), and that request is next due at
t + block size, as FastSlotBatcher._add_block pushes it.
"""

from __future__ import annotations

import math

import numpy as np

try:  # numba is a dependency; without it (a broken install) run-ahead uses the Python loop
    from numba import njit

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False

    def njit(*args, **kwargs):
        return (lambda f: f) if not args or not callable(args[0]) else args[0]


# advance's status
DONE = 0  # stopped at the horizon, a finishing step, a step that is not steady, or the heap ran dry
FIRST_FAILED = 1  # slot k's own step cannot be taken this way: nothing changed
SHORT = 2  # a slot could not schedule (KV short): its process schedules by the ordinary path at its completion

# columns of the per-slot float state `fs`
C_DONE, C_CUMC, C_CUMM, C_COMP, C_COMM, C_HEAD, C_BACK, C_HOPSUM = range(8)
# columns of the per-slot int state `st`
I_N, I_TICK, I_CTX, I_SAMPLED, I_FAST, I_STOP, I_CAN, I_STEADY, I_ACTIVE, I_TAKEN, I_KV, I_NEW = range(12)


@njit(cache=True)
def _price(i, kv, n, rows, lcs, c_max, fit, ext):
    """A decode layer's time for slot i's n sequences holding kv tokens of context in all:
    profiles.row_at on its row where the context is on the grid (at most c_max[i]), else the fitted
    roofline fit = (a, b, c, t_min) (profiles.Profile.decode_layer_s; counted in ext)."""
    ctx = kv / n
    if ctx < 1.0:
        ctx = 1.0
    L = lcs.shape[0]
    if ctx <= c_max[i]:  # c_max[i] = -1.0: n is beyond the measured batches (no row)
        lc = math.log(ctx) if ctx > 0 else lcs[0]
        if lc < lcs[0]:
            lc = lcs[0]
        if L == 1:
            return math.exp(rows[i, 0])
        # bisect.bisect_left(lcs, lc) - 1, clamped to [0, L - 2]
        lo, hi = 0, L
        while lo < hi:
            mid = (lo + hi) // 2
            if lcs[mid] < lc:
                lo = mid + 1
            else:
                hi = mid
        j = lo - 1
        if j < 0:
            j = 0
        elif j > L - 2:
            j = L - 2
        x0 = lcs[j]
        t = (lc - x0) / (lcs[j + 1] - x0)
        y0 = rows[i, j]
        return math.exp(y0 + t * (rows[i, j + 1] - y0))
    if ext[0] == 0:
        ext[1] = ctx  # the first one's context, for the warning
    ext[0] += 1
    v = fit[0] + fit[1] * n + fit[2] * n * ctx
    return v if v > fit[3] else fit[3]  # max(v, t_min)


@njit(cache=True)
def _schedule(i, t, fs, st, hops, rows, lcs, c_max, fit, ext, gnext, goff, gcnt, free_blocks, bs,
              nl, hh, sd, oh, free, rec, rec_n, sums, lts, keep_lts):
    """Slot i's steady step scheduled at t (RunAhead._schedule_ahead): KV growth, pricing, the
    stages' clocks. Returns the blocks it grew, or -1 where it cannot (the caller stops)."""
    if st[i, I_CAN] == 0:
        return -1
    tick = st[i, I_TICK]
    need = 0
    for j in range(goff[i], goff[i + 1]):
        if gnext[j] <= tick:
            need += 1
    if need:
        if free_blocks[0] < need:
            return -1
        free_blocks[0] -= need
        for j in range(goff[i], goff[i + 1]):
            if gnext[j] <= tick:
                gnext[j] = tick + bs
                gcnt[j] += 1
    n = st[i, I_N]
    st[i, I_FAST] += 1
    kv = st[i, I_CTX] + n
    lt = _price(i, kv, n, rows, lcs, c_max, fit, ext)
    if keep_lts:
        lts[int(sums[3])] = lt
        sums[3] += 1.0
    head = fs[i, C_HEAD]
    sums[0] += lt
    sums[1] += head
    sums[2] += 1.0
    t = t + fs[i, C_BACK]
    compute = 0.0
    P = free.shape[0]
    for k in range(P):
        if hh[k]:
            dt = (nl[k] * lt + head + oh) * sd[k]
        else:
            dt = (nl[k] * lt + oh) * sd[k]
        f = free[k]
        if f > t:
            t = f
        end = t + dt
        w = rec_n[k] % rec.shape[1]  # the stage's last steps (Instance._recent, a deque of maxlen P)
        rec[k, w, 0] = t
        rec[k, w, 1] = end
        rec_n[k] += 1
        free[k] = end
        compute += dt
        t = end + hops[i, k]
    fs[i, C_DONE] = t
    fs[i, C_COMP] = compute
    fs[i, C_COMM] = fs[i, C_HOPSUM] + fs[i, C_BACK]
    st[i, I_KV] = kv
    st[i, I_STEADY] = 1
    st[i, I_ACTIVE] = 1
    st[i, I_NEW] = 1
    return need


@njit(cache=True)
def advance(k, now, horizon, fs, st, hops, rows, lcs, c_max, fit, ext, gnext, goff, gcnt, free_blocks,
            bs, nl, hh, sd, oh, free, rec, rec_n, sums, lts, keep_lts):
    """RunAhead._run_ahead's loop: slot k schedules at now, then completions in (time, slot) order
    are accounted and their slots' next steps scheduled, up to the first completion at or after
    the horizon, one that finishes a request, or one that is not steady. Returns (status, slot
    that stopped the run or -1, steps taken)."""
    if _schedule(k, now, fs, st, hops, rows, lcs, c_max, fit, ext, gnext, goff, gcnt, free_blocks, bs,
                 nl, hh, sd, oh, free, rec, rec_n, sums, lts, keep_lts) < 0:
        return FIRST_FAILED, k, 0
    m = st.shape[0]
    taken = 0
    while True:
        i = -1
        c = 0.0
        for q in range(m):  # the heap's top: least completion time, then least slot
            if st[q, I_ACTIVE] and (i < 0 or fs[q, C_DONE] < c):
                i = q
                c = fs[q, C_DONE]
        if i < 0:
            return DONE, -1, taken
        if c >= horizon or st[i, I_STEADY] == 0 or st[i, I_TICK] + 1 >= st[i, I_STOP]:
            return DONE, i, taken  # its own process takes it
        # FastSlotBatcher.step_lazy: the step completed, every lazy request computed a token
        n = st[i, I_N]
        st[i, I_TICK] += 1
        fs[i, C_CUMC] += fs[i, C_COMP]
        fs[i, C_CUMM] += fs[i, C_COMM]
        st[i, I_SAMPLED] += n
        st[i, I_CTX] += n
        st[i, I_TAKEN] += 1
        taken += 1
        if _schedule(i, c, fs, st, hops, rows, lcs, c_max, fit, ext, gnext, goff, gcnt, free_blocks, bs,
                     nl, hh, sd, oh, free, rec, rec_n, sums, lts, keep_lts) < 0:
            st[i, I_STEADY] = 0
            st[i, I_NEW] = 2  # its process schedules at c, by the ordinary path
            return SHORT, i, taken


def warm() -> None:
    """Compile (or load from numba's cache) `advance` for the argument types the simulator passes,
    on a one-step window: a run pays the compilation once, before its clock matters."""
    if not AVAILABLE:
        return
    fs = np.zeros((1, 8))
    st = np.zeros((1, 12), np.int64)
    st[0, I_N] = st[0, I_CAN] = 1
    st[0, I_STOP] = 2
    advance(0, 0.0, 1.0, fs, st, np.zeros((1, 1)), np.zeros((1, 2)), np.array([0.0, 1.0]), np.full(1, 2.0),
            np.zeros(4), np.zeros(2), np.zeros(1, np.int64), np.zeros(2, np.int64), np.zeros(1, np.int64),
            np.zeros(1, np.int64), 16, np.ones(1), np.zeros(1, np.bool_), np.ones(1), 0.0, np.zeros(1),
            np.zeros((1, 1, 2)), np.zeros(1, np.int64), np.zeros(4), np.zeros(1), True)
