"""Paged KV cache of one pipeline stage: a block pool per layer plus the shared torch-free
block accounting (flexpipe_core.blocks.BlockManager), so the simulator and the kernel count KV the
same way.

Pool layout: k, v of shape [n_layers, num_blocks, block_size, n_kv_heads, head_dim] for the
stage's own layers. A request's token at position p lives in block table[p // block_size] at
offset p % block_size, i.e. flat slot block * block_size + offset.
"""

from __future__ import annotations

import torch

from flexpipe_core.blocks import BlockManager, OutOfBlocks


class KVCacheFull(RuntimeError):
    """The stage's block pool cannot hold what was asked; the caller waits or preempts."""


class BlockTables:
    """A stage's KV block accounting: which blocks hold each request's tokens (flexpipe_core's
    BlockManager). PagedKVCache adds the tensors; a stage whose tensors live in another process
    (a worker, `workers.BlockView`; live's device processes) keeps only this half."""

    def __init__(self, num_blocks: int, block_size: int, device: str | torch.device = "cpu") -> None:
        self.blocks = BlockManager(num_blocks, block_size)
        self.block_size = block_size
        self.device = torch.device(device)

    def allocate(self, req_id: int, n_tokens: int) -> None:
        """Make req_id's table cover n_tokens tokens in total."""
        try:
            self.blocks.grow(req_id, n_tokens)
        except OutOfBlocks as e:
            raise KVCacheFull(f"KV cache full on {self.device}: request {req_id} needs {n_tokens} tokens ({e})") from None

    def free(self, req_id: int) -> None:
        self.blocks.free(req_id)

    def table(self, req_id: int) -> list[int]:
        return self.blocks.tables.get(req_id, [])

    def slots(self, req_id: int, start: int, n: int) -> list[int]:
        """Flat slots of positions start .. start + n - 1."""
        table, bs = self.table(req_id), self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, start + n)]


class PagedKVCache(BlockTables):
    # BlockTables' methods, over its own pools; `device` is the tensors' (a property below)
    def __init__(self, n_layers: int, num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        shape = (n_layers, num_blocks, block_size, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.blocks = BlockManager(num_blocks, block_size)
        self.block_size = block_size

    @property
    def device(self) -> torch.device:
        return self.k.device

    @property
    def bytes_per_block(self) -> int:
        return 2 * self.k[:, 0].numel() * self.k.element_size()

    # --- moving KV (migration, refactoring) -----------------------------------------------------
    def export_blocks(self, req_id: int, first_block: int = 0, layers: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the request's blocks from `first_block` on: [layers, nb, block_size, kvh, D]."""
        idx = torch.tensor(self.table(req_id)[first_block:], dtype=torch.long, device=self.device)
        return self.k[layers].index_select(1, idx), self.v[layers].index_select(1, idx)

    def import_blocks(self, req_id: int, k: torch.Tensor, v: torch.Tensor, first_block: int = 0) -> int:
        """Write blocks (as exported) into this cache's blocks first_block.. of req_id (which must be
        allocated). Returns bytes written."""
        table = self.table(req_id)
        nb = k.shape[1]
        if first_block + nb > len(table):
            raise KVCacheFull(f"request {req_id}: {first_block + nb} blocks needed, table has {len(table)}")
        idx = torch.tensor(table[first_block:first_block + nb], dtype=torch.long, device=self.device)
        self.k.index_copy_(1, idx, k.to(self.device, non_blocking=True))
        self.v.index_copy_(1, idx, v.to(self.device, non_blocking=True))
        return 2 * k.numel() * k.element_size()
