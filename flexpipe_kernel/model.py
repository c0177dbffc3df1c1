"""A Llama-style decoder in one file: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Tokens are processed flattened ("varlen"): a step's input is every new token of every sequence in
one [T, dim] tensor, with per-token positions and per-sequence lengths in `StepMeta`. Attention
reads and writes a paged KV cache (kvcache.py). Pipeline stages run contiguous layer ranges of
this model (stage.py); `Transformer.forward` runs all of them, which is what a 1-stage pipeline
must equal exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim: int
    max_seq_len: int = 4096
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        assert self.dim % self.n_heads == 0 and self.n_heads % self.n_kv_heads == 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


PRESETS: dict[str, ModelArgs] = {
    # meta-llama/Llama-2-7b-hf
    "llama2-7b": ModelArgs(4096, 32, 32, 32, 32000, 11008, 4096),
    # meta-llama/Meta-Llama-3-8B (rope theta 500000, 8 KV heads)
    "llama3-8b": ModelArgs(4096, 32, 32, 8, 128256, 14336, 8192, norm_eps=1e-5, rope_theta=500000.0),
    # OPT-66B's sizes (d 9216, 64 layers, 72 heads) as a Llama-style block; SwiGLU width 24576 gives
    # the same MLP parameter count as OPT's 2 x 9216 x 36864 GELU MLP.
    "opt-66b-sized": ModelArgs(9216, 64, 72, 72, 50272, 24576, 2048),
    # Small shapes for CPU tests and benchmarks (same as flexpipe_sim's "tiny").
    "tiny": ModelArgs(256, 4, 8, 4, 1024, 688, 2048),
    "small": ModelArgs(512, 8, 8, 8, 4096, 1376, 2048),
}


@dataclass
class StepMeta:
    """Where each new token goes. T = total new tokens, B = sequences in the step.

    req_ids: the B sequences, in token order.
    positions: [T] absolute position of each token in its sequence.
    seq_lens: new tokens per sequence (python ints, B of them), in token order.
    ctx_lens: context per sequence after this step (cached + new), python ints.
    slots: [T] flat KV slot (block * block_size + offset) of each new token, per stage cache;
        a stage sets `slots` from its own block tables before running (tables differ per stage).
    block_tables: per sequence, the block ids covering its context (per stage, like `slots`).
    decode_tables, decode_ctx: a decode step's block tables [B, nb] and context lengths [B] already
        as device tensors (cudagraph.py's static buffers); when set, the batched decode attention
        reads them instead of building them from the lists, so the step has no host-to-device copy
        and can be captured in a CUDA graph.
    """

    req_ids: list[int]
    positions: torch.Tensor
    seq_lens: list[int]
    ctx_lens: list[int]
    slots: torch.Tensor | None = None
    block_tables: list[list[int]] = field(default_factory=list)
    decode_tables: torch.Tensor | None = None
    decode_ctx: torch.Tensor | None = None

    @property
    def last_token_index(self) -> torch.Tensor:
        """Index in [T] of each sequence's last new token (its logits predict the next token)."""
        ends = torch.tensor(self.seq_lens).cumsum(0) - 1
        return ends.to(self.positions.device)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(args: ModelArgs, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [max_seq_len, head_dim / 2] (fp32)."""
    half = args.head_dim // 2
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, half, dtype=torch.float32, device=device) / half))
    t = torch.arange(args.max_seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(t, inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim], rotate-half convention (as Hugging Face Llama)."""
    c = cos.index_select(0, positions).unsqueeze(1)  # [T, 1, D/2]; index_select: far faster than [] on CPU
    s = sin.index_select(0, positions).unsqueeze(1)
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, meta: StepMeta, rope: tuple[torch.Tensor, torch.Tensor],
                cache_k: torch.Tensor, cache_v: torch.Tensor) -> torch.Tensor:
        """x: [T, dim]; cache_k/v: this layer's pool [num_blocks, block_size, kv_heads, head_dim]."""
        T = x.shape[0]
        q = self.wq(x).view(T, self.n_heads, self.head_dim)
        k = self.wk(x).view(T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(T, self.n_kv_heads, self.head_dim)
        q = apply_rope(q, *rope, meta.positions)
        k = apply_rope(k, *rope, meta.positions)
        # write the new K, V into their slots of the paged pool
        bs = cache_k.shape[1]
        flat_k = cache_k.view(-1, self.n_kv_heads, self.head_dim)  # [num_blocks * block_size, kvh, D]
        flat_v = cache_v.view(-1, self.n_kv_heads, self.head_dim)
        flat_k.index_copy_(0, meta.slots, k)
        flat_v.index_copy_(0, meta.slots, v)
        out = paged_attention(q, flat_k, flat_v, meta, bs)  # [T, H, D]
        return self.wo(out.reshape(T, self.n_heads * self.head_dim))


def paged_attention(q: torch.Tensor, flat_k: torch.Tensor, flat_v: torch.Tensor, meta: StepMeta,
                    block_size: int) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its whole cached context.

    q: [T, H, D]; flat_k/v: [slots, KVH, D]. Query j of a sequence with c cached tokens sits at
    position c + j and sees positions 0..c+j. KV is gathered block by block through the block
    table; grouped-query heads are handled by folding each KV head's query group into the query
    axis (no KV expansion). A decode-only batch (one new token per sequence) runs as one padded
    batched call; otherwise one call per sequence.
    """
    T, H, D = q.shape
    kvh = flat_k.shape[1]
    group = H // kvh
    k_blocks = flat_k.view(-1, block_size, kvh, D)  # [num_blocks, block_size, KVH, D]
    v_blocks = flat_v.view(-1, block_size, kvh, D)
    scale = 1.0 / math.sqrt(D)
    if all(n == 1 for n in meta.seq_lens):
        return _decode_attention(q, k_blocks, v_blocks, meta, scale)
    outs = []
    start = 0
    for n, ctx, table in zip(meta.seq_lens, meta.ctx_lens, meta.block_tables):
        idx = torch.tensor(table[: -(-ctx // block_size)], device=q.device)
        k = k_blocks.index_select(0, idx).flatten(0, 1)[:ctx].permute(1, 0, 2)  # [KVH, ctx, D]
        v = v_blocks.index_select(0, idx).flatten(0, 1)[:ctx].permute(1, 0, 2)
        qi = q[start:start + n].view(n, kvh, group, D).permute(1, 2, 0, 3).reshape(kvh, group * n, D)
        if n == ctx:  # a whole prompt from position 0: plain causal
            mask = torch.ones(n, ctx, dtype=torch.bool, device=q.device).tril()
        else:  # mask[j, p] = p <= (ctx - n) + j
            mask = torch.arange(ctx, device=q.device)[None, :] <= torch.arange(ctx - n, ctx, device=q.device)[:, None]
        o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask.repeat(group, 1), scale=scale)
        outs.append(o.view(kvh, group, n, D).permute(2, 0, 1, 3).reshape(n, H, D))
        start += n
    return torch.cat(outs, dim=0)


def _decode_attention(q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor, meta: StepMeta,
                      scale: float) -> torch.Tensor:
    """B sequences, one query each: pad every context to the longest, mask the padding."""
    bs = k_blocks.shape[1]
    if meta.decode_tables is not None:
        return decode_attention(q, k_blocks, v_blocks, meta.decode_tables, meta.decode_ctx, scale)
    nb = max(-(-c // bs) for c in meta.ctx_lens)
    tables = torch.tensor([t[:nb] + [0] * (nb - len(t[:nb])) for t in meta.block_tables], device=q.device)
    return decode_attention(q, k_blocks, v_blocks, tables, torch.tensor(meta.ctx_lens, device=q.device), scale)


def decode_attention(q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor, tables: torch.Tensor,
                     ctx: torch.Tensor, scale: float) -> torch.Tensor:
    """The batched decode attention on tensors only: tables [B, nb] block ids (padding: any valid
    block), ctx [B] context lengths (>= 1); positions at or past ctx are masked out."""
    B, H, D = q.shape
    bs, kvh = k_blocks.shape[1], k_blocks.shape[2]
    nb = tables.shape[1]
    k = k_blocks.index_select(0, tables.view(-1)).view(B, nb * bs, kvh, D).transpose(1, 2)  # [B, KVH, L, D]
    v = v_blocks.index_select(0, tables.view(-1)).view(B, nb * bs, kvh, D).transpose(1, 2)
    mask = (torch.arange(nb * bs, device=q.device)[None, :] < ctx[:, None])[:, None, None, :]  # [B, 1, 1, L]
    qg = q.view(B, kvh, H // kvh, D)  # each KV head's query group
    o = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    return o.reshape(B, H, D)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.ffn_dim, bias=False)  # gate
        self.w3 = nn.Linear(args.dim, args.ffn_dim, bias=False)  # up
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, meta, rope, cache_k, cache_v):
        h = x + self.attention(self.attention_norm(x), meta, rope, cache_k, cache_v)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)

    @torch.no_grad()
    def forward_dense(self, tokens: torch.Tensor) -> torch.Tensor:
        """Reference forward of one whole sequence, no cache: tokens [L] -> logits [L, vocab].
        Plain causal attention, the ground truth the paged, pipelined path must reproduce."""
        dev = self.output.weight.device
        L = tokens.shape[0]
        cos, sin = rope_tables(self.args, dev)
        pos = torch.arange(L, device=dev)
        h = self.tok_embeddings(tokens.to(dev))
        for layer in self.layers:
            a = layer.attention
            x = layer.attention_norm(h)
            q = apply_rope(a.wq(x).view(L, a.n_heads, a.head_dim), cos, sin, pos)
            k = apply_rope(a.wk(x).view(L, a.n_kv_heads, a.head_dim), cos, sin, pos)
            v = a.wv(x).view(L, a.n_kv_heads, a.head_dim)
            group = a.n_heads // a.n_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                               is_causal=True, scale=1.0 / math.sqrt(a.head_dim))
            h = h + a.wo(o.transpose(0, 1).reshape(L, -1))
            h = h + layer.feed_forward(layer.ffn_norm(h))
        return self.output(self.norm(h)).float()

    @torch.no_grad()
    def generate_dense(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding by full recomputation each token (slow, obviously correct)."""
        tokens = list(prompt)
        for _ in range(max_new_tokens):
            logits = self.forward_dense(torch.tensor(tokens))
            tokens.append(int(torch.argmax(logits[-1])))
        return tokens[len(prompt):]


def init_random(model: Transformer, seed: int) -> Transformer:
    """Deterministic random weights: N(0, 0.02) linears and embeddings, unit norms (GPT-2 style)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def build_model(args: ModelArgs | str, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> Transformer:
    if isinstance(args, str):
        args = PRESETS[args]
    return init_random(Transformer(args), seed).to(dtype=dtype, device=device)


# Hugging Face Llama checkpoint names -> ours.
_HF_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}


def _our_name(name: str) -> str:
    if name in _HF_NAMES:
        return _HF_NAMES[name]
    if name.startswith("model.layers."):
        _, _, idx, rest = name.split(".", 3)
        mod, _, param = rest.rpartition(".")
        return f"layers.{idx}.{_HF_LAYER.get(mod, mod)}.{param}"
    return name


def load_safetensors(model: Transformer, paths: list[str | Path], strict: bool = True) -> Transformer:
    """Load weights from safetensors files (ours or Hugging Face Llama names), memory-mapped.

    Note: HF Llama checkpoints permute q/k for their rotary layout; our RoPE uses the same
    rotate-half convention, so weights load as they are."""
    from safetensors import safe_open

    own = model.state_dict()
    seen = set()
    with torch.no_grad():
        for path in paths:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    ours = _our_name(name)
                    if ours not in own:
                        if strict:
                            raise KeyError(f"{path}: unexpected tensor {name!r}")
                        continue
                    t = f.get_tensor(name)
                    if t.shape != own[ours].shape:
                        raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, model expects {tuple(own[ours].shape)}")
                    own[ours].copy_(t)
                    seen.add(ours)
    missing = set(own) - seen
    if strict and missing:
        raise KeyError(f"missing tensors: {', '.join(sorted(missing)[:5])}{' ...' if len(missing) > 5 else ''}")
    return model
