"""A pipeline stage: a contiguous range of decoder layers on one device with its own paged KV cache.
The first stage embeds token ids; the last holds the final norm and the LM head."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .kvcache import PagedKVCache
from .model import Block, ModelArgs, RMSNorm, StepMeta, Transformer, rope_tables


class Stage(nn.Module):
    def __init__(self, args: ModelArgs, first: int, end: int, device: str | torch.device, *,
                 kv_blocks: int, block_size: int, dtype: torch.dtype = torch.float32, label: str | None = None) -> None:
        super().__init__()
        assert 0 <= first < end <= args.n_layers
        self.args, self.first, self.end = args, first, end
        self.device = torch.device(device)
        # Which device of the cluster this stage is on, by name ("A", "l40s-0"): several logical
        # devices may share one torch device (CPU tests), and a refactor records links by label.
        self.label = label or str(self.device)
        self.dtype = dtype
        # Built on the meta device and then given real (uninitialised) memory: a stage's weights
        # always come from load_from / a transfer, so default random init would be wasted time.
        with torch.device("meta"):
            self.layers = nn.ModuleList(Block(args) for _ in range(first, end))
            self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim) if first == 0 else None
            self.norm = RMSNorm(args.dim, args.norm_eps) if end == args.n_layers else None
            self.output = nn.Linear(args.dim, args.vocab_size, bias=False) if end == args.n_layers else None
        self.to(dtype=dtype)
        self.to_empty(device=self.device)
        self.rope = rope_tables(args, self.device)
        self.cache = PagedKVCache(end - first, kv_blocks, block_size, args.n_kv_heads, args.head_dim, dtype, self.device)

    @property
    def is_first(self) -> bool:
        return self.first == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.args.n_layers

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def load_from(self, state: dict[str, torch.Tensor]) -> int:
        """Copy this stage's weights from a full-model state dict (Transformer names, any device,
        e.g. a pinned host cache). Returns bytes copied."""
        n = 0
        with torch.no_grad():
            for name, p in self.named_parameters():
                src = state[_full_name(name, self.first)]
                p.copy_(src, non_blocking=True)
                n += p.numel() * p.element_size()
        return n

    @torch.no_grad()
    def forward(self, x: torch.Tensor, meta: StepMeta) -> torch.Tensor:
        """x: token ids [T] (first stage) or hidden states [T, dim]. Returns hidden [T, dim], or for
        the last stage logits [B, vocab] at each sequence's last new token."""
        return self.run_local(x, local_meta(self.cache, meta, self.device))

    @torch.no_grad()
    def run_local(self, x: torch.Tensor, m: StepMeta) -> torch.Tensor:
        """forward() with `m` already holding this stage's slots and block tables (a worker process
        gets them from the coordinator, which keeps the block accounting)."""
        h = self.tok_embeddings(x.to(self.device)) if self.is_first else x.to(self.device, self.dtype)
        for i, layer in enumerate(self.layers):
            h = layer(h, m, self.rope, self.cache.k[i], self.cache.v[i])
        if not self.is_last:
            return h
        h = self.norm(h[m.last_token_index])
        return self.output(h).float()


def local_meta(cache, meta: StepMeta, device: torch.device | str = "cpu") -> StepMeta:
    """Slots and block tables from one stage's cache (tables differ between stages). `cache` is
    anything with table(rid) and slots(rid, start, n): a PagedKVCache or a worker's block view."""
    slots: list[int] = []
    for rid, n, ctx in zip(meta.req_ids, meta.seq_lens, meta.ctx_lens):
        slots.extend(cache.slots(rid, ctx - n, n))
    tables = [cache.table(rid) for rid in meta.req_ids]
    return replace(meta, positions=meta.positions.to(device),
                   slots=torch.tensor(slots, dtype=torch.long, device=device), block_tables=tables)


def _full_name(stage_name: str, first: int) -> str:
    if stage_name.startswith("layers."):
        _, idx, rest = stage_name.split(".", 2)
        return f"layers.{first + int(idx)}.{rest}"
    return stage_name


def split_model(model: Transformer, cuts: list[int], devices: list[str | torch.device], *, kv_blocks: int,
                block_size: int, labels: list[str] | None = None) -> list[Stage]:
    """Stages for layer boundaries `cuts` (e.g. [0, 3, 8, 16] -> 3 stages), one device each;
    `labels` name the cluster devices (default: the torch device)."""
    assert cuts[0] == 0 and cuts[-1] == model.args.n_layers and len(devices) == len(cuts) - 1
    dtype = next(model.parameters()).dtype
    state = model.state_dict()
    stages = []
    labels = labels or [None] * len(devices)
    for (a, b), dev, lab in zip(zip(cuts, cuts[1:]), devices, labels):
        st = Stage(model.args, a, b, dev, kv_blocks=kv_blocks, block_size=block_size, dtype=dtype, label=lab)
        st.load_from(state)
        stages.append(st)
    return stages
