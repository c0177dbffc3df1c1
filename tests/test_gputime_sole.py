"""A GPU's only stage books nothing on the shared timeline (engine/gputime.py): it must give the
same timings as booking every step, including when other stages join its GPU while its steps are
in flight (the hand-over), leave again, and join once more."""

from __future__ import annotations

import simpy

from flexpipe_core.request import Request
from flexpipe_sim.costmodel import CostModel, PipelineCost, StageShape
from flexpipe_sim.engine.gputime import GpuTimeline
from flexpipe_sim.engine.instance import Instance, StageInfo
from flexpipe_sim.hardware import LinkKind, get_gpu, link_spec
from flexpipe_sim.models import get_model


def _run(sole: bool):
    env = simpy.Environment()
    tl = GpuTimeline(sole_stages=sole)
    spec = get_model("llama2-7b")
    gpu = get_gpu("a100-80gb")
    cost = CostModel(spec)
    adopted: list[int] = []
    adopt = tl.adopt
    tl.adopt = lambda g, steps, now: (adopted.append(sum(e > now for _, e in steps)), adopt(g, steps, now))[1]

    def make(iid: int, gpus: list[int], cuts: list[tuple[int, int]]) -> Instance:
        stages = [StageInfo(g, a, b, 50_000, 0) for g, (a, b) in zip(gpus, cuts)]
        shapes = [StageShape(b - a, a == 0, b == spec.num_layers, gpu) for a, b in cuts]
        link = link_spec(LinkKind.NVLINK, gpu)
        hops = [link] * (len(stages) - 1)
        pc = PipelineCost(cost, shapes, hops, link if len(stages) > 1 else None)
        assert pc.uniform
        return Instance(env, iid, "llama2-7b", stages, pc, block_size=16, token_budget=2048, max_seqs=64,
                        expected_output=64.0, on_finish=lambda r: None, gpu_time=tl, fast_forward=True)

    a = make(0, [0, 1], [(0, 16), (16, 32)])  # 2 stages on GPUs 0-1
    b = make(1, [1], [(0, 32)])  # joins GPU 1 at 0.31 s, retires at 0.9 s
    c = make(2, [1], [(0, 32)])  # joins GPU 1 at 3.5 s
    reqs: list[Request] = []

    def traffic(inst: Instance, first: int, every: float, start: float, end: float):
        yield env.timeout(start)
        i = first
        while env.now < end:
            r = Request(i, "llama2-7b", env.now, 40 + 7 * (i % 5), 20 + 13 * (i % 4))
            reqs.append(r)
            inst.enqueue(r)
            i += 1
            yield env.timeout(every)

    def lifecycle():
        a.start()
        yield env.timeout(0.31)
        assert a.inflight > 0  # A's steps are in flight when B joins GPU 1
        b.start()
        yield env.timeout(0.59)
        b.retire()
        if b.running or b.waiting:
            yield b.drained
        b.release_gpus()  # as Transitions does: A is GPU 1's only stage again
        assert env.now < 3.5  # B drained in time
        yield env.timeout(3.5 - env.now)
        c.start()

    env.process(lifecycle())
    env.process(traffic(a, 0, 0.04, 0.0, 4.5))
    env.process(traffic(b, 10_000, 0.1, 0.31, 0.8))
    env.process(traffic(c, 20_000, 0.1, 3.5, 4.5))
    env.run(until=7.0)
    for inst in (a, b, c):
        inst.materialize()
    rec = sorted((r.id, r.first_token_s, r.finish_s, r.generated) for r in reqs)
    return rec, (a.steps, b.steps, c.steps), [round(x, 12) for x in a.busy_s], adopted


def test_sole_stages_time_steps_exactly_as_booking_every_one():
    booked, steps_b, busy_b, _ = _run(sole=False)
    sole, steps_s, busy_s, adopted = _run(sole=True)
    assert adopted and max(adopted) > 0  # a hand-over with steps still running happened
    assert steps_s == steps_b and min(steps_s) > 10
    assert busy_s == busy_b
    assert len(sole) == len(booked) > 100
    assert sole == booked  # same first-token and finish times, bit for bit
