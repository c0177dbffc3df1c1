"""Inflight refactoring: split and merge while 8+ requests decode; exactly the same tokens."""

from __future__ import annotations

import pytest

from flexpipe_kernel import PipelineEngine, split_model
from flexpipe_kernel.refactor import cuts_of, refactor
from flexpipe_kernel.transfer import HostWeightCache

from .helpers import prompts, reference, tiny


@pytest.mark.parametrize("plan", [
    ([0, 2, 4], [[0, 1, 2, 3, 4], [0, 2, 4]]),  # split 2 -> 4, merge back 4 -> 2
    ([0, 4], [[0, 1, 4], [0, 3, 4], [0, 4]]),  # split, move the cut, merge
])
def test_split_and_merge_mid_decode_keep_every_token(plan):
    start, steps = plan
    m = tiny()
    cache = HostWeightCache().put_model(m)
    ps = prompts([5, 17, 33, 8, 12, 40, 3, 25, 9, 14])
    stages = split_model(m, start, ["cpu"] * (len(start) - 1), kv_blocks=160, block_size=4)
    eng = PipelineEngine(stages, token_budget=64, max_seqs=16)
    ids = [eng.add_request(p, 30) for p in ps]
    records = []
    for new in steps:
        for _ in range(6):  # a refactor serves a step per layer loaded; keep requests mid-decode
            eng.step()
        assert eng.running >= 8  # requests are mid-decode when the pipeline changes
        records.append(refactor(eng, new, ["cpu"] * (len(new) - 1), cache))
        assert cuts_of(eng.stages) == new
    eng.run()
    assert [eng.gens[i].output for i in ids] == reference(m, ps, 30)
    assert all(eng.gens[i].req.preemptions == 0 for i in ids)  # nothing was restarted
    for rec in records:
        assert rec.kv_bytes > 0 and rec.weight_bytes > 0 and rec.rounds >= 1
        assert 0 < rec.pause_s < rec.duration_s
    for s in eng.stages:
        s.cache.blocks.check_integrity()
        assert s.cache.blocks.num_free == s.cache.blocks.num_blocks


def test_refactor_with_preemptions_in_flight():
    m = tiny()
    cache = HostWeightCache().put_model(m)
    ps = prompts([30, 28, 25, 31, 27, 29, 26, 24])
    eng = PipelineEngine(split_model(m, [0, 2, 4], ["cpu"] * 2, kv_blocks=40, block_size=4), token_budget=64)
    ids = [eng.add_request(p, 24) for p in ps]
    for _ in range(10):
        eng.step()
    refactor(eng, [0, 1, 4], ["cpu"] * 2, cache, kv_blocks=40, steps_per_round=3)
    eng.run()
    assert [eng.gens[i].output for i in ids] == reference(m, ps, 24)
