"""The gateway's queue timeout with WaitQueue's bound (engine/waitqueue.py) drops exactly what a scan
of every instance queue at every tick drops: random queues of never-admitted and admitted (then
preempted) requests, entering by routing (append) and preemption (appendleft), leaving by
admission, with timeouts checked at increasing times."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flexpipe_core.request import Request
from flexpipe_sim.engine.gateway import Gateway
from flexpipe_sim.engine.waitqueue import WaitQueue


class _Inst:
    """What Gateway.expire reads and calls of an instance."""

    def __init__(self) -> None:
        self.waiting = WaitQueue()

    def remove_waiting(self, r: Request) -> None:
        self.waiting.remove(r)


ops = st.lists(st.tuples(st.sampled_from(["route", "preempt", "admit", "tick"]), st.floats(0.0, 30.0),
                         st.booleans()), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(ops=ops, wait=st.sampled_from([2.0, 5.0, 20.0]))
def test_expire_with_the_bound_drops_what_a_full_scan_drops(ops, wait):
    dropped: list[int] = []
    gw = Gateway(["m"], lambda r, why: dropped.append(r.id))
    inst = _Inst()
    gw.instances["m"].append(inst)
    now, n = 0.0, 0
    for op, x, flag in ops:
        q = inst.waiting
        if op == "route":  # arrives now (or, re-routed, earlier)
            q.append(Request(n, "m", max(0.0, now - x if flag else now), 10, 10))
            n += 1
        elif op == "preempt":  # an admitted request back in line: recomputed (num_computed 0) or not
            r = Request(n, "m", max(0.0, now - x), 10, 10, generated=0 if flag else 3)
            q.appendleft(r)
            n += 1
        elif op == "admit" and q:
            q.popleft()
        elif op == "tick":
            now += x / 3
            expect = [r.id for r in q if r.generated == 0 and r.num_computed == 0 and now - r.arrival_s > wait]
            before = len(dropped)
            gw.expire(now, wait)
            assert dropped[before:] == expect
            assert all(not (r.generated == 0 and r.num_computed == 0) or r.arrival_s >= q.oldest for r in q)
