"""Decode through bucketed static buffers (cudagraph.py): on CPU the padded path runs eagerly and
must give the eager engine's tokens and logits; on a GPU the captured graphs must too."""

from __future__ import annotations

import pytest
import torch

from flexpipe_kernel import PipelineEngine, split_model
from flexpipe_kernel.cudagraph import SCRATCH, GraphedStage, graphed

from .helpers import prompts, reference, tiny


def _run(stages, ps, n, **kw):
    """Tokens per request and the last stage's output of every step."""
    logits = []
    last = stages[-1]
    if isinstance(last, GraphedStage):
        orig = last.__call__
        last_call = lambda x, meta: logits.append(orig(x, meta)) or logits[-1]  # noqa: E731
        stages = [*stages[:-1], _Hook(last, last_call)]
    else:
        orig = last.forward
        last.forward = lambda x, meta: logits.append(orig(x, meta)) or logits[-1]
    eng = PipelineEngine(stages, **kw)
    ids = [eng.add_request(p, n) for p in ps]
    eng.run()
    return [eng.gens[i].output for i in ids], logits


class _Hook:
    def __init__(self, inner, call):
        self.inner, self.call = inner, call

    def __call__(self, x, meta):
        return self.call(x, meta)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_padded_bucketed_decode_equals_eager_on_cpu():
    m = tiny()
    # 5, then fewer as requests finish at different lengths: batch sizes 5, 3, ... padded to 8, 4, ...
    ps = prompts([5, 17, 33, 8, 26], seed=1)
    n = 10
    eager, eager_logits = _run(split_model(m, [0, 1, 3, 4], ["cpu"] * 3, kv_blocks=96, block_size=4), ps, n,
                               token_budget=64, max_seqs=8)
    stages = graphed(split_model(m, [0, 1, 3, 4], ["cpu"] * 3, kv_blocks=96, block_size=4), batch_buckets=(1, 2, 4, 8))
    padded, padded_logits = _run(stages, ps, n, token_budget=64, max_seqs=8)
    assert padded == eager == reference(m, ps, n)
    assert len(padded_logits) == len(eager_logits)
    for a, b in zip(padded_logits, eager_logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for st in stages:
        assert st.replays > 0 and st.eager > 0  # decode went through buckets, prefill did not
        assert st.graphs >= 2  # more than one (batch, width) bucket was used
        st.cache.blocks.check_integrity()
        assert set(st.cache.blocks.tables) == {SCRATCH}  # only the scratch block is left
        st.release()
        assert st.cache.blocks.tables == {}


def test_batches_beyond_the_largest_bucket_run_eager():
    m = tiny()
    ps = prompts([3, 4, 5], seed=2)
    stages = graphed(split_model(m, [0, 2, 4], ["cpu"] * 2, kv_blocks=64, block_size=4), batch_buckets=(1, 2))
    got, _ = _run(stages, ps, 6, token_budget=64, max_seqs=8)
    assert got == reference(m, ps, 6)
    assert all(st.eager > 1 for st in stages)  # the 3-sequence decode steps had no bucket


@pytest.mark.gpu
def test_cuda_graph_decode_equals_eager_on_gpu():
    m = tiny()
    ps = prompts([5, 17, 33, 8, 26, 3, 12], seed=3)
    n = 12
    mk = lambda: split_model(m, [0, 2, 4], ["cuda:0", "cuda:0"], kv_blocks=128, block_size=16)  # noqa: E731
    eager, eager_logits = _run(mk(), ps, n, token_budget=128, max_seqs=8)
    stages = graphed(mk())
    assert all(st.capture for st in stages)
    captured, graph_logits = _run(stages, ps, n, token_budget=128, max_seqs=8)
    assert captured == eager
    for a, b in zip(graph_logits, eager_logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for st in stages:
        assert st.replays > st.graphs > 0  # captured once per bucket, then replayed
