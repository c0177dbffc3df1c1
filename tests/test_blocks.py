"""The KV block manager: property tests (hypothesis) for conservation and integrity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexpipe_core.blocks import BlockCounter, BlockManager, OutOfBlocks

ops = st.lists(
    st.tuples(st.sampled_from(["grow", "free", "fork"]), st.integers(0, 7), st.integers(1, 200)),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(num_blocks=st.integers(0, 40), block_size=st.sampled_from([1, 4, 16]), ops=ops)
def test_random_operations_keep_the_pool_consistent(num_blocks, block_size, ops):
    m = BlockManager(num_blocks, block_size)
    tokens: dict[int, int] = {}
    for op, rid, n in ops:
        if op == "grow":
            total = tokens.get(rid, 0) + n
            if m.can_grow(rid, total):
                m.grow(rid, total)
                tokens[rid] = total
            else:
                free_before = m.num_free
                with pytest.raises(OutOfBlocks):
                    m.grow(rid, total)
                assert m.num_free == free_before  # a failed grow takes nothing
        elif op == "free":
            m.free(rid)
            tokens.pop(rid, None)
        elif op == "fork" and rid in m.tables and (rid + 1) not in m.tables:
            m.fork(rid, rid + 1)
            tokens[rid + 1] = tokens[rid]
        m.check_integrity()
        assert 0 <= m.num_free <= m.num_blocks
        for r, t in tokens.items():
            if r in m.tables:
                assert len(m.tables[r]) >= m.blocks_for(t) or t == 0
    for rid in list(m.tables):
        m.free(rid)
    m.check_integrity()
    assert m.num_free == m.num_blocks
    assert m.allocated_total == m.freed_total


def test_shared_blocks_survive_until_last_reference():
    m = BlockManager(4, 16)
    m.grow(1, 32)
    m.fork(1, 2)
    assert m.num_free == 2
    m.free(1)
    assert m.num_free == 2  # still referenced by 2
    m.free(2)
    assert m.num_free == 4


@settings(max_examples=200, deadline=None)
@given(num_blocks=st.integers(0, 40), block_size=st.sampled_from([1, 4, 16]),
       ops=st.lists(st.tuples(st.sampled_from(["grow", "free"]), st.integers(0, 7), st.integers(1, 200)), max_size=80))
def test_block_counter_answers_as_the_block_manager(num_blocks, block_size, ops):
    """The simulator's id-free counter (BlockCounter) agrees with BlockManager on every answer."""
    m, c = BlockManager(num_blocks, block_size), BlockCounter(num_blocks, block_size)
    tokens: dict[int, int] = {}
    for op, rid, n in ops:
        if op == "grow":
            total = tokens.get(rid, 0) + n
            assert m.can_grow(rid, total) == c.can_grow(rid, total)
            if m.can_grow(rid, total):
                m.grow(rid, total)
                c.grow(rid, total)
                tokens[rid] = total
            else:
                for x in (m, c):
                    with pytest.raises(OutOfBlocks):
                        x.grow(rid, total)
        else:
            assert m.free(rid) == c.free(rid)
            tokens.pop(rid, None)
        assert (m.num_free, m.num_used, m.allocated_total, m.freed_total) == \
               (c.num_free, c.num_used, c.allocated_total, c.freed_total)
        c.check_integrity()
