"""The run-ahead window loop (engine/runahead.py), compiled with numba: a steady decode step costs
~0.1 microseconds here against ~2-10 in Python (one stage to eight).

`advance` is `RunAhead._run_ahead`'s loop (and `_run_ahead_single`'s, its one-slot one-stage case)
over flat arrays: slots' completions in time order (ties to the lower slot, as the heap of
(time, slot) pops them), each completion accounted (FastSlotBatcher.step_lazy) and the slot's next
step scheduled (its KV growth, then `_schedule_ahead`'s pricing and submission through the stages).
Every float operation is the Python loop's, in the same order, so the records are the same to the
bit: numba compiles `+ - * /` to IEEE double operations without fused multiply-adds (no fastmath)
and calls the C library's `log`/`exp`, as CPython's math module does
(tests/test_stepkernel.py checks both, and the records of whole runs against the Python loop).

A step priced beyond the profile's grid gets the fitted roofline (profiles.Profile.decode_layer_s)
here too; the loop counts such steps (ext) so the caller warns and counts them as the Python
lookup would.

KV growth is counted by phase, as FastSlotBatcher._grow_phase does: a step of slot i scheduled at
tick t grows `gc[i, t % bs]` lazy requests by a block each (all of them, or none where fewer blocks
are free: the ordinary path then decides); the slot's last grown tick goes back into its `_gt`.

`stage_step` is one step's pricing and pass through the stages alone (`_schedule`'s second half),
for the Python window loop, which keeps the bookkeeping where a window is too short to repay
`run`'s copy. Both write each stage's last steps into the instance's rings (kernelwindow.py
`_kbuffers`), kept across windows.
"""

from __future__ import annotations

import math

try:  # numba is a dependency; without it (a broken install) run-ahead uses the Python loop
    from numba import njit as _njit

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False

    def _njit(*args, **kwargs):
        return lambda f: f


def njit(cache: bool = True, **kwargs):
    """numba.njit, its machine code cached next to this file (compiling takes ~4 s, loading
    ~0.3 s); where no cache can be written (a read-only install without a writable home), compiled
    anew in each process instead of failing."""
    def wrap(f):
        try:
            return _njit(cache=cache, **kwargs)(f)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return _njit(cache=False, **kwargs)(f)
    return wrap


# advance's status
DONE = 0  # stopped at the horizon, a finishing step, a step that is not steady, or the heap ran dry
FIRST_FAILED = 1  # slot k's own step cannot be taken this way: nothing changed
SHORT = 2  # a slot could not schedule (KV short): its process schedules by the ordinary path at its completion

# columns of the per-slot float state `fs`
C_DONE, C_CUMC, C_CUMM, C_COMP, C_COMM, C_HEAD, C_BACK, C_HOPSUM = range(8)
# columns of the per-slot int state `st`
I_N, I_TICK, I_CTX, I_SAMPLED, I_FAST, I_STOP, I_CAN, I_STEADY, I_ACTIVE, I_TAKEN, I_KV, I_NEW, I_GT = range(13)
ST_COLS = 13


@njit(inline="always")
def _price(kind, i, kv, n, rows, cmax, sh, ext):
    """A decode layer's time for slot i's n sequences holding kv tokens of context in all, as the
    cost model's decode_layer_fn gives it (costmodel.py decode_table says what the arrays hold).
    kind 0, a profile: profiles.row_at on the slot's row where the context is on the grid (at most
    cmax[i]; -1.0: n is beyond the measured batches), else the fitted roofline (counted in ext).
    kind 1, the roofline: compute or memory time, the longer."""
    if kind == 1:
        t_compute = (rows[i, 0] + kv * sh[0]) / sh[1]
        t_memory = rows[i, 1] + kv * sh[2] / sh[3]
        return t_compute if t_compute > t_memory else t_memory
    ctx = kv / n
    if ctx < 1.0:
        ctx = 1.0
    L = sh.shape[0] - 4  # sh: log contexts, then the fit's a, b, c, t_min
    if ctx <= cmax[i]:
        lc = math.log(ctx) if ctx > 0 else sh[0]
        if lc < sh[0]:
            lc = sh[0]
        if L == 1:
            return math.exp(rows[i, 0])
        # bisect.bisect_left(lcs, lc) - 1, clamped to [0, L - 2]
        lo, hi = 0, L
        while lo < hi:
            mid = (lo + hi) // 2
            if sh[mid] < lc:
                lo = mid + 1
            else:
                hi = mid
        j = lo - 1
        if j < 0:
            j = 0
        elif j > L - 2:
            j = L - 2
        x0 = sh[j]
        t = (lc - x0) / (sh[j + 1] - x0)
        y0 = rows[i, j]
        return math.exp(y0 + t * (rows[i, j + 1] - y0))
    if ext[0] == 0:
        ext[1] = ctx  # the first one's context (and batch, where there is room), for the warning
        if ext.shape[0] > 2:
            ext[2] = n
    ext[0] += 1
    v = sh[L] + sh[L + 1] * n + sh[L + 2] * n * ctx
    return v if v > sh[L + 3] else sh[L + 3]  # max(v, t_min)


@njit(inline="always")
def _plan(K, P, mk, R):
    """K's parts (run's layout): layers, slowdown and head per stage; per slot its largest
    context, hop times and pricing row; the cost model's shared numbers."""
    nl, sd, hh = K[0:P], K[P:2 * P], K[2 * P:3 * P]
    a = 3 * P
    cmax = K[a:a + mk]
    a += mk
    hops = K[a:a + mk * P].reshape((mk, P))
    a += mk * P
    rows = K[a:a + mk * R].reshape((mk, R))
    return nl, sd, hh, cmax, hops, rows, K[a + mk * R:]


@njit(inline="always")
def _through_stages(i, t, lt, head, oh, nl, hh, sd, hops, free, rec, rec_n):
    """Slot i's step, ready at t with layer time lt, through the stages (Instance._submit's FIFO
    clocks for a uniform pipeline): each stage's clock, its last steps (Instance._recent, a ring of
    P per stage) and the hop after it. Returns (completion, compute)."""
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
        w = rec_n[k] % P
        rec[k, w, 0] = t
        rec[k, w, 1] = end
        rec_n[k] += 1
        free[k] = end
        compute += dt
        t = end + hops[i, k]
    return t, compute


@njit(inline="always")
def _schedule(i, t, fs, st, hops, kind, rows, cmax, sh, ext, gc, free_blocks, bs,
              nl, hh, sd, oh, free, rec, rec_n, sums, lts, keep_lts):
    """Slot i's steady step scheduled at t (RunAhead._schedule_ahead): KV growth (by phase,
    FastSlotBatcher._grow_phase), pricing, the stages' clocks. Returns the blocks it grew, or -1
    where it cannot (the caller stops)."""
    if st[i, I_CAN] == 0:
        return -1  # its batch cannot be taken this way (none, or over the token budget)
    tick = st[i, I_TICK]
    need = gc[i, tick % bs] if st[i, I_GT] != tick else 0
    if need:
        if free_blocks[0] < need:
            return -1
        free_blocks[0] -= need
    st[i, I_GT] = tick
    n = st[i, I_N]
    st[i, I_FAST] += 1
    kv = st[i, I_CTX] + n
    lt = _price(kind, i, kv, n, rows, cmax, sh, ext)
    if keep_lts:
        lts[int(sums[3])] = lt
        sums[3] += 1.0
    head = fs[i, C_HEAD]
    sums[0] += lt
    sums[1] += head
    sums[2] += 1.0
    t, compute = _through_stages(i, t + fs[i, C_BACK], lt, head, oh, nl, hh, sd, hops, free, rec, rec_n)
    fs[i, C_DONE] = t
    fs[i, C_COMP] = compute
    fs[i, C_COMM] = fs[i, C_HOPSUM] + fs[i, C_BACK]
    st[i, I_KV] = kv
    st[i, I_STEADY] = 1
    st[i, I_ACTIVE] = 1
    st[i, I_NEW] = 1
    return need


@njit()
def stage_step(i, t, kv, n, head, K, S, RN, kind, oh, P, mk, R):
    """One steady step of slot i submitted at t (its token return added), for RunAhead's Python
    window loop: the layer priced and the step pushed through the stages as `_schedule` does (the
    same float operations in the same order), its steps kept in the last-step ring. K is `run`'s;
    S holds the stage clocks (P), the sums (4), ext (count, context, batch) and the ring (P x P x 2);
    RN the ring's counts per stage. Returns (completion, compute)."""
    nl, sd, hh, cmax, hops, rows, sh = _plan(K, P, mk, R)
    free = S[0:P]
    sums = S[P:P + 4]
    ext = S[P + 4:P + 7]
    rec = S[P + 7:P + 7 + 2 * P * P].reshape((P, P, 2))
    lt = _price(kind, i, kv, n, rows, cmax, sh, ext)
    sums[0] += lt
    sums[1] += head
    sums[2] += 1.0
    return _through_stages(i, t, lt, head, oh, nl, hh, sd, hops, free, rec, RN)


@njit()
def run(k, now, horizon, K, F, I, lts, kind, bs, oh, keep_lts, m, mk, P, R, REC, RN):
    """`advance` on flat arrays (a compiled call costs a type check per argument, so fewer
    arguments is most of a short window's cost): K, the instance's plan and pricing (nl, sd, hh per
    stage; per slot the largest context, hop times, pricing row; the cost model's shared numbers),
    F, the floats that change (slot state fs, stage clocks, sums, ext), and I, the integers (slot
    state st, free blocks, then each slot's lazy requests per KV phase, m x bs); REC and RN, the
    instance's last-step rings (P x P x 2) and their counts per stage, kept across windows
    (kernelwindow.py `_kbuffers`). m slots are active of the mk that K holds rows for; P stages; R
    numbers in a pricing row; bs tokens in a KV block. Returns advance's (status, slot, steps taken)
    and two bit masks (m < 63): the slots that scheduled a steady step, those whose completions
    were taken."""
    nl, sd, hh, cmax, hops, rows, sh = _plan(K, P, mk, R)
    fs = F[0:8 * m].reshape((m, 8))
    b = 8 * m
    free = F[b:b + P]
    sums = F[b + P:b + P + 4]
    ext = F[b + P + 4:b + P + 6]
    rec = REC[0:2 * P * P].reshape((P, P, 2))
    st = I[0:ST_COLS * m].reshape((m, ST_COLS))
    c = ST_COLS * m
    free_blocks = I[c:c + 1]
    gc = I[c + 1:c + 1 + m * bs].reshape((m, bs))
    status, who, taken = advance(k, now, horizon, fs, st, hops, kind, rows, cmax, sh, ext, gc, free_blocks,
                                 bs, nl, hh, sd, oh, free, rec, RN, sums, lts, keep_lts)
    scheduled = took = 0  # bit masks of the slots that scheduled a steady step, whose completions were taken
    for q in range(m if m < 63 else 0):
        if st[q, I_NEW] == 1:
            scheduled |= 1 << q
        if st[q, I_TAKEN]:
            took |= 1 << q
    return status, who, taken, scheduled, took


@njit()
def advance(k, now, horizon, fs, st, hops, kind, rows, cmax, sh, ext, gc, free_blocks,
            bs, nl, hh, sd, oh, free, rec, rec_n, sums, lts, keep_lts):
    """RunAhead._run_ahead's loop: slot k schedules at now (k < 0: nobody does; heldslots.py's
    window begun at a held slot's completion), then completions in (time, slot) order are
    accounted and their slots' next steps scheduled, up to the first completion at or after the
    horizon, one that finishes a request, or one that is not steady. Returns (status, slot that
    stopped the run or -1, steps taken)."""
    m = st.shape[0]
    for q in range(m):  # (slots kept in the arrays from the last window: what this one does)
        st[q, I_TAKEN] = 0
        st[q, I_NEW] = 0
    if k >= 0 and _schedule(k, now, fs, st, hops, kind, rows, cmax, sh, ext, gc, free_blocks, bs,
                            nl, hh, sd, oh, free, rec, rec_n, sums, lts, keep_lts) < 0:
        return FIRST_FAILED, k, 0  # (k < 0: nobody schedules first, the loop starts at the least completion)
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
        if _schedule(i, c, fs, st, hops, kind, rows, cmax, sh, ext, gc, free_blocks, bs,
                     nl, hh, sd, oh, free, rec, rec_n, sums, lts, keep_lts) < 0:
            st[i, I_STEADY] = 0
            st[i, I_NEW] = 2  # its process schedules at c, by the ordinary path
            return SHORT, i, taken
