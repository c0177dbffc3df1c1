"""The engine against closed forms: M/D/1 waiting time, pipeline latency and the slowest-stage bound."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from flexpipe_sim.engine.instance import Instance, StageInfo
from flexpipe_core.request import Request

from .fakes import FixedCost


def make_instance(env, stage_s, hop_s=0.0, back_s=0.0, max_seqs=256, kv_blocks=100_000, finished=None):
    stages = [StageInfo(gpu=k, first_layer=k, end_layer=k + 1, kv_blocks=kv_blocks, alloc_bytes=0)
              for k in range(len(stage_s))]
    done = finished if finished is not None else []
    inst = Instance(env, 0, "m", stages, FixedCost(stage_s, hop_s, back_s), block_size=16, token_budget=4096,
                    max_seqs=max_seqs, expected_output=1.0, on_finish=done.append)
    inst.start()
    return inst, done


def feed(env, inst, arrivals, prompt=1, output=1):
    reqs = []

    def proc():
        for i, t in enumerate(arrivals):
            yield env.timeout(t - env.now)
            r = Request(i, "m", float(t), prompt, output)
            reqs.append(r)
            inst.enqueue(r)

    env.process(proc())
    return reqs


@pytest.mark.slow
def test_md1_mean_wait_matches_pollaczek_khinchine():
    # One stage, one request at a time, fixed service D: an M/D/1 queue.
    # Pollaczek-Khinchine: Wq = rho * D / (2 (1 - rho)).
    rng = np.random.default_rng(7)
    lam, d, n = 0.7, 1.0, 200_000
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    env = simpy.Environment()
    inst, done = make_instance(env, [d], max_seqs=1)
    reqs = feed(env, inst, arrivals)
    env.run()
    assert len(done) == n
    wait = np.array([r.first_token_s - r.arrival_s - d for r in reqs])
    rho = lam * d
    expected = rho * d / (2 * (1 - rho))
    assert wait.min() >= -1e-9
    assert abs(wait.mean() - expected) / expected < 0.05, (wait.mean(), expected)


def test_single_request_latency_is_sum_of_stage_and_hop_times():
    stage_s = [0.004, 0.007, 0.002, 0.005]
    hop, back = 0.0015, 0.0007
    env = simpy.Environment()
    inst, done = make_instance(env, stage_s, hop, back)
    reqs = feed(env, inst, [1.0], prompt=100, output=3)
    env.run()
    (r,) = reqs
    one_pass = sum(stage_s) + hop * (len(stage_s) - 1)
    assert r.first_token_s - r.arrival_s == pytest.approx(one_pass, rel=1e-12)
    # Each further token: the sampled token returns to stage 0, then one more pass.
    assert r.finish_s - r.arrival_s == pytest.approx(3 * one_pass + 2 * back, rel=1e-12)
    assert r.compute_s == pytest.approx(3 * sum(stage_s))


def test_saturated_pipeline_is_limited_by_its_slowest_stage():
    stage_s = [0.001, 0.003, 0.001, 0.001]  # slowest stage: 3 ms
    env = simpy.Environment()
    inst, done = make_instance(env, stage_s, hop_s=0.0001, max_seqs=4)
    feed(env, inst, [0.0] * 64, prompt=8, output=200)
    env.run(until=5.0)
    steps_per_s = inst.steps / 5.0
    assert steps_per_s == pytest.approx(1 / max(stage_s), rel=0.02)
    # The bottleneck stage is busy all the time, the others a third of it.
    assert inst.busy_s[1] / 5.0 == pytest.approx(1.0, abs=0.02)


def test_without_enough_micro_batches_the_pipeline_is_latency_bound():
    # One request in flight: steps happen once per full pass, not once per slowest stage.
    stage_s = [0.002, 0.002]
    env = simpy.Environment()
    inst, _ = make_instance(env, stage_s, hop_s=0.001, back_s=0.001)
    feed(env, inst, [0.0], prompt=4, output=10_000)
    env.run(until=1.0)
    cycle = sum(stage_s) + 0.001 + 0.001
    assert inst.steps == pytest.approx(1.0 / cycle, abs=1)


def test_kv_pressure_preempts_and_every_block_comes_back():
    env = simpy.Environment()
    # 40 blocks of 16 tokens per stage: room for ~640 tokens; 12 requests of up to 200 tokens.
    inst, done = make_instance(env, [0.001, 0.001], kv_blocks=40)
    reqs = feed(env, inst, np.linspace(0, 0.01, 12), prompt=60, output=140)
    env.run()
    assert len(done) == 12
    assert sum(r.preemptions for r in reqs) > 0
    assert all(r.generated == r.output_tokens for r in reqs)
    for m in inst.kv.managers:
        m.check_integrity()
        assert m.num_free == m.num_blocks
        assert m.allocated_total == m.freed_total
