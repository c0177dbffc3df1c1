"""Heterogeneous pipelines in one process: uneven stages on named (logical CPU) devices,
re-cut online into other uneven splits on other devices, depth changing; the tokens must equal an
unreconfigured single-stage run's, and every byte moved must be booked on the link it crossed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from flexpipe_kernel import PRESETS, PipelineEngine, build_model, split_model
from flexpipe_kernel.refactor import cuts_of, downtime, refactor
from flexpipe_kernel.transfer import HostWeightCache, LocalFabric

from .helpers import prompts

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads per process were seen to make
    these tests 10x slower (the worker processes use one each, too)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ARGS8 = replace(PRESETS["tiny"], n_layers=8)  # 8 layers so that splits like [0,5),[5,8) exist
_M: list = []


def model8():
    if not _M:
        _M.append(build_model(ARGS8, seed=1))
    return _M[0]


def unreconfigured(ps: list[list[int]], n: int, **kw) -> list[list[int]]:
    eng = PipelineEngine(split_model(model8(), [0, 8], ["cpu"], kv_blocks=256, block_size=4), **kw)
    ids = [eng.add_request(p, n) for p in ps]
    eng.run()
    return [eng.gens[i].output for i in ids]


def expected_weight_links(old: list[tuple[int, int, str]], rec) -> dict[str, int]:
    state = model8().state_dict()
    out: dict[str, int] = {}
    for c, d, lab in zip(rec.new_cuts, rec.new_cuts[1:], rec.new_devices):
        for layer in range(c, d):
            here = any(ol == lab and a <= layer < b for a, b, ol in old)
            key = f"{lab}->{lab}" if here else f"host->{lab}"
            out[key] = out.get(key, 0) + sum(t.numel() * 4 for n, t in state.items() if n.startswith(f"layers.{layer}."))
        for part, at_first, names in (("emb", c == 0, ("tok_embeddings.",)), ("head", d == 8, ("norm.", "output."))):
            if at_first:
                here = any(ol == lab and (a == 0 if part == "emb" else b == 8) for a, b, ol in old)
                key = f"{lab}->{lab}" if here else f"host->{lab}"
                out[key] = out.get(key, 0) + sum(t.numel() * 4 for n, t in state.items() if n.startswith(names))
    return out


FABRIC = {"A": "cpu", "B": "cpu", "C": "cpu"}  # three logical devices on the host CPU


@pytest.mark.parametrize("plan", [
    # (start cuts, start devices, [(new cuts, new devices), ...])
    ([0, 5, 8], ["A", "B"], [([0, 2, 6, 8], ["C", "B", "A"]), ([0, 6, 8], ["B", "C"])]),  # 2 -> 3 -> 2
    ([0, 1, 8], ["B", "A"], [([0, 7, 8], ["C", "A"]), ([0, 3, 4, 5, 8], ["A", "B", "C", "A"])]),  # move, 2 -> 4
], ids=["deepen-then-shallow", "move-then-deepen"])
def test_uneven_splits_reconfigured_online_keep_every_token(plan):
    start, start_devs, steps = plan
    m = model8()
    fabric = LocalFabric(HostWeightCache().put_model(m), FABRIC)
    ps = prompts([5, 17, 33, 8, 12, 40, 3, 25, 9, 14], seed=2)
    late = prompts([11, 6, 19], seed=3)  # arrive while the pipeline is being changed
    kw = dict(token_budget=64, max_seqs=16)
    eng = PipelineEngine(split_model(m, start, ["cpu"] * len(start_devs), kv_blocks=192, block_size=4,
                                     labels=start_devs), **kw)
    ids = [eng.add_request(p, 24) for p in ps]
    records = []
    for k, (cuts, devs) in enumerate(steps):
        for _ in range(10):
            eng.step()
        assert eng.running >= 6  # requests are mid-decode when the pipeline changes
        ids.append(eng.add_request(late[k], 24))
        old = [(s.first, s.end, s.label) for s in eng.stages]
        rec = refactor(eng, cuts, devs, fabric)
        records.append((old, rec))
        assert cuts_of(eng.stages) == cuts and [s.label for s in eng.stages] == devs
    ids.append(eng.add_request(late[2], 24))
    eng.run()
    want = unreconfigured(ps + late, 24, **kw)
    got = [eng.gens[i].output for i in ids]
    assert got == want  # greedy: bit-identical tokens, nothing lost, nothing duplicated
    assert all(eng.gens[i].req.preemptions == 0 for i in ids)  # nothing was restarted
    assert sorted(g.req.id for g in eng.finished) == sorted(ids)
    for old, rec in records:
        # weights: each new stage's bytes once; a layer its device held already is copied there
        # (link "X->X"), any other comes from the host cache ("host->X")
        assert sum(lb.weights for lb in rec.links.values()) == rec.weight_bytes > 0
        assert {k: lb.weights for k, lb in rec.links.items() if lb.weights} == expected_weight_links(old, rec)
        # KV: booked on exactly the links whose old and new stage share layers
        assert sum(lb.kv for lb in rec.links.values()) == rec.kv_bytes > 0
        new = list(zip(rec.new_cuts, rec.new_cuts[1:], rec.new_devices))
        overlap = {f"{ol}->{nl}" for a, b, ol in old for c, d, nl in new if max(a, c) < min(b, d)}
        assert {k for k, lb in rec.links.items() if lb.kv} == overlap
        assert 0 < rec.pause_s < rec.duration_s and rec.rounds >= 1
        assert rec.t_begin <= rec.t_pause <= rec.t_resume and rec.live_ids
        d = downtime(eng, rec)
        assert 0 < d <= eng.now() - rec.t_begin
    for s in eng.stages:
        s.cache.blocks.check_integrity()
        assert s.cache.blocks.num_free == s.cache.blocks.num_blocks


def test_downtime_is_the_longest_token_gap_across_the_switch():
    """downtime() on a hand-made stream: the gap spanning the pause, not a normal decode gap."""
    from flexpipe_kernel.refactor import RefactorRecord

    class G:
        def __init__(self, ts):
            self.token_times = ts

    class E:
        gens = {1: G([0.0, 1.0, 2.0, 2.5, 9.0, 9.5]), 2: G([1.5, 10.0])}

    rec = RefactorRecord([0, 8], [0, 8], 1, 0, 0, 0.1, 1.0, 0, t_begin=0.9, t_pause=3.0, t_resume=8.0,
                         live_ids=[1, 2])
    assert downtime(E(), rec) == pytest.approx(9.0 - 2.5)
    rec.live_ids = [2]  # request 2 alone: from t_begin to its first token after the switch
    assert downtime(E(), rec) == pytest.approx(10.0 - 1.5)
