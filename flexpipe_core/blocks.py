"""Torch-free paged KV block manager (free list, ref counts, block tables, integrity check).

One instance per pipeline stage: the stage's KV memory is `num_blocks` blocks of `block_size`
tokens for that stage's layers only. The simulator uses it to model KV pressure; the kernel's paged
cache indexes its block pool with the same block ids, so both account KV the same way.
"""

from __future__ import annotations

from collections import deque


class OutOfBlocks(RuntimeError):
    """The pool cannot serve a request; callers wait or preempt, never over-commit."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 0 or block_size <= 0:
            raise ValueError("num_blocks must be >= 0 and block_size > 0")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._ref = [0] * num_blocks
        self.tables: dict[int, list[int]] = {}  # request id -> block ids in token order
        self.allocated_total = 0  # blocks ever handed out (for conservation checks)
        self.freed_total = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def can_grow(self, req_id: int, n_tokens: int) -> bool:
        """Whether the request's table can cover n_tokens in total."""
        have = len(self.tables.get(req_id, ()))
        return self.blocks_for(n_tokens) - have <= len(self._free)

    def grow(self, req_id: int, n_tokens: int) -> None:
        """Extend the request's table to cover n_tokens in total (allocates only what is missing)."""
        table = self.tables.get(req_id, [])
        need = self.blocks_for(n_tokens) - len(table)
        if need <= 0:
            return
        if need > len(self._free):
            raise OutOfBlocks(f"need {need} blocks, {len(self._free)} free")  # and nothing changed
        self.tables[req_id] = table
        for _ in range(need):
            b = self._free.popleft()
            self._ref[b] += 1
            table.append(b)
        self.allocated_total += need

    def free(self, req_id: int) -> int:
        """Release every block of the request; returns how many went back to the pool."""
        table = self.tables.pop(req_id, [])
        returned = 0
        for b in table:
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free.append(b)
                returned += 1
        self.freed_total += len(table)
        return returned

    def fork(self, src_id: int, dst_id: int) -> None:
        """Share all of src's blocks with dst (prefix sharing); ref counts keep them alive."""
        table = self.tables[src_id]
        for b in table:
            self._ref[b] += 1
        self.tables[dst_id] = list(table)
        self.allocated_total += len(table)

    def check_integrity(self) -> None:
        """Every block is either free (ref 0) or referenced exactly as often as tables name it."""
        counts = [0] * self.num_blocks
        for table in self.tables.values():
            for b in table:
                counts[b] += 1
        free = set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("a block is on the free list twice")
        for b in range(self.num_blocks):
            if counts[b] != self._ref[b]:
                raise AssertionError(f"block {b}: ref {self._ref[b]} but named {counts[b]} times")
            if (b in free) != (counts[b] == 0):
                raise AssertionError(f"block {b}: free-list membership disagrees with its references")
        if self.allocated_total - self.freed_total != sum(len(t) for t in self.tables.values()):
            raise AssertionError("allocated - freed != blocks held")


class BlockCounter:
    """BlockManager's accounting without block ids: how many blocks each request holds.

    The simulator never reads which blocks a request holds, only how many are free, so it counts
    (O(1) per grow or free instead of O(blocks)); the kernel needs the ids and keeps BlockManager.
    Same interface and same answers (tests/test_blocks.py checks them against each other)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 0 or block_size <= 0:
            raise ValueError("num_blocks must be >= 0 and block_size > 0")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_free = num_blocks
        self.held: dict[int, int] = {}  # request id -> blocks
        self.allocated_total = 0
        self.freed_total = 0

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def can_grow(self, req_id: int, n_tokens: int) -> bool:
        return self.blocks_for(n_tokens) - self.held.get(req_id, 0) <= self.num_free

    def grow(self, req_id: int, n_tokens: int) -> None:
        have = self.held.get(req_id, 0)
        need = -(-n_tokens // self.block_size) - have
        if need <= 0:
            return
        if need > self.num_free:
            raise OutOfBlocks(f"need {need} blocks, {self.num_free} free")  # and nothing changed
        self.held[req_id] = have + need
        self.num_free -= need
        self.allocated_total += need

    def free(self, req_id: int) -> int:
        n = self.held.pop(req_id, 0)
        self.num_free += n
        self.freed_total += n
        return n

    def check_integrity(self) -> None:
        held = sum(self.held.values())
        if self.num_free < 0 or self.num_free + held != self.num_blocks:
            raise AssertionError(f"free {self.num_free} + held {held} != {self.num_blocks} blocks")
        if self.allocated_total - self.freed_total != held:
            raise AssertionError("allocated - freed != blocks held")
