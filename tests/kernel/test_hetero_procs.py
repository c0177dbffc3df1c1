"""Processes as devices: one worker process per device (gloo), uneven stages re-cut online onto
other workers with the depth changing; activations and KV cross process boundaries. The tokens
must equal an unreconfigured single-process run's (greedy), no request lost or duplicated."""

from __future__ import annotations

import time

import pytest

from flexpipe_kernel import PipelineEngine
from flexpipe_kernel.refactor import cuts_of, downtime, refactor
from flexpipe_kernel.transfer import HostWeightCache
from flexpipe_kernel.workers import Cluster, ProcFabric

from .helpers import prompts
from .test_hetero import ARGS8, model8, one_thread, unreconfigured  # noqa: F401 - one_thread: autouse fixture


def test_online_reconfiguration_across_worker_processes():
    m = model8()
    ps = prompts([5, 17, 33, 8, 12, 40, 3], seed=4)
    late = prompts([11, 6], seed=5)
    kw = dict(token_budget=64, max_seqs=16)
    with Cluster(["A", "B", "C"]) as cl:
        fab = ProcFabric(cl, HostWeightCache().put_model(m))
        fab.warm(ARGS8)
        eng = PipelineEngine(fab.pipeline(ARGS8, [0, 5, 8], ["A", "B"], kv_blocks=160, block_size=4), **kw)
        ids = [eng.add_request(p, 16) for p in ps]
        records = []
        for k, (cuts, devs) in enumerate([([0, 2, 6, 8], ["C", "B", "A"]), ([0, 6, 8], ["B", "C"])]):
            for _ in range(6):
                eng.step()
            assert eng.running >= 5
            ids.append(eng.add_request(late[k], 16))
            records.append(refactor(eng, cuts, devs, fab))
            assert cuts_of(eng.stages) == cuts and [s.label for s in eng.stages] == devs
            # the old stages are gone from their workers; each worker holds exactly its new stages
            for lab in cl.labels:
                assert cl.ping(lab) == sorted(s.sid for s in eng.stages if s.label == lab)
        eng.run()
        traffic = dict(cl.traffic)
        # KV pressure: requests are preempted (their blocks freed on the coordinator's books, their
        # KV recomputed) while a switch is under way, and still give the same tokens
        for s in eng.stages:
            fab.release(s)
        tight = PipelineEngine(fab.pipeline(ARGS8, [0, 3, 8], ["B", "C"], kv_blocks=34, block_size=4), **kw)
        pids = [tight.add_request(p, 16) for p in ps]
        for _ in range(5):
            tight.step()
        refactor(tight, [0, 6, 8], ["A", "B"], fab, kv_blocks=34, steps_per_round=3)
        tight.run()
        for s in tight.stages:
            s.cache.blocks.check_integrity()
            assert s.cache.blocks.num_free == s.cache.blocks.num_blocks
    assert sum(tight.gens[i].req.preemptions for i in pids) > 0
    assert [tight.gens[i].output for i in pids] == unreconfigured(ps, 16, **kw)
    assert [eng.gens[i].output for i in ids] == unreconfigured(ps + late, 16, **kw)
    assert sorted(g.req.id for g in eng.finished) == sorted(ids)  # none lost, none twice
    assert all(eng.gens[i].req.preemptions == 0 for i in ids)
    first, second = records
    # KV went worker to worker: A held [0,5) and B [5,8); the new C [0,2), B [2,6), A [6,8)
    assert {k for k, lb in first.links.items() if lb.kv} == {"A->C", "A->B", "B->B", "B->A"}
    assert {k for k, lb in second.links.items() if lb.kv} == {"C->B", "B->B", "A->C"}
    for rec in records:
        assert sum(lb.kv for lb in rec.links.values()) == rec.kv_bytes > 0
        assert 0 < rec.pause_s < rec.duration_s and 0 < downtime(eng, rec)
    # activations crossed too: hidden states worker to worker along each pipeline (A->B first,
    # then C->B->A, then B->C), token ids in from the coordinator, logits back from the last stage
    assert all(traffic.get(k, 0) > 0 for k in ("A->B", "C->B", "B->A", "B->C"))
    assert all(traffic.get(k, 0) > 0 for k in ("coord->A", "coord->C", "coord->B", "B->coord", "A->coord", "C->coord"))
    assert "A->C" not in traffic  # no stage on A ever fed one on C


def test_a_dead_worker_fails_the_coordinator_instead_of_hanging():
    cl = Cluster(["A", "B"], timeout_s=5)
    try:
        assert cl.ping("A") == []
        cl.procs[0].kill()  # worker A (started by this test) dies
        cl.procs[0].join(timeout=10)
        t = time.perf_counter()
        with pytest.raises(RuntimeError):
            cl.ping("A")
        assert time.perf_counter() - t < 30
    finally:
        cl.close()
    assert not any(p.is_alive() for p in cl.procs)
