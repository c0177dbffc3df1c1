"""What one micro-batch step computes, aggregated so any backend prices it in O(1)."""

from __future__ import annotations

from typing import NamedTuple


class BatchWork(NamedTuple):
    """One micro-batch, aggregated so a stage step is priced in O(1). (A NamedTuple: one is built
    on every simulated step, about 3x cheaper than a frozen dataclass.)

    n_tokens: tokens computed this step (prefill chunk lengths + 1 per decode).
    n_seqs: sequences in the batch (each gets one LM-head row on the last stage).
    attn_pairs: sum over computed tokens of the context each attends to (causal).
    n_decode: how many of the sequences are decodes (kv_tokens / n_decode is their mean context).
    kv_tokens: KV entries read by decoding sequences (their context after this step). Prefill
        chunks attend through a fused kernel and are priced as compute (attn_pairs) plus the write.
    """

    n_tokens: int
    n_seqs: int
    attn_pairs: int
    kv_tokens: int
    n_decode: int = 0  # sequences decoding one token (the rest of n_tokens are prefill tokens)
