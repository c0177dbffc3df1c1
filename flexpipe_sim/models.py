"""Model catalogue: the shapes the simulator needs to price a pipeline stage.

Only shapes matter here (no weights): bytes and FLOPs per decoder layer, KV bytes per token per
layer, activation bytes per token crossing a stage boundary. Shapes are the published configs of
each checkpoint (Hugging Face `config.json`); the paper's "WHISPER-9B" and "BERT-21B" match no
public checkpoint, so they are Llama-style decoders of that size (an assumption, see docs/parameters.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer by shape. All sizes in elements unless the name says bytes."""

    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    intermediate: int
    vocab: int
    max_context: int
    mlp: str = "swiglu"  # "swiglu" (3 matrices, Llama) or "gelu" (2 matrices + biases, OPT)
    dtype_bytes: int = 2  # fp16/bf16

    def __post_init__(self) -> None:
        assert self.num_layers > 0 and self.hidden > 0 and self.num_heads > 0
        assert self.hidden % self.num_heads == 0, "hidden must divide into heads"
        assert self.num_heads % self.num_kv_heads == 0, "query heads must group over KV heads"
        assert self.mlp in ("swiglu", "gelu")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @cached_property
    def params_per_layer(self) -> int:
        h, kv = self.hidden, self.num_kv_heads * self.head_dim
        attn = h * h * 2 + h * kv * 2  # q, o and k, v projections
        if self.mlp == "swiglu":
            mlp = 3 * h * self.intermediate
            norms = 2 * h
        else:  # OPT: fc1, fc2 with biases, layer norms with bias, attention biases
            mlp = 2 * h * self.intermediate + self.intermediate + h
            norms = 4 * h + 2 * h + 2 * kv
        return attn + mlp + norms

    @property
    def layer_bytes(self) -> int:
        return self.params_per_layer * self.dtype_bytes

    @property
    def embedding_bytes(self) -> int:
        """Token embedding on the first stage; the LM head (same size) lives on the last stage."""
        return self.vocab * self.hidden * self.dtype_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_layers * self.layer_bytes + 2 * self.embedding_bytes

    def stage_weight_bytes(self, first_layer: int, end_layer: int) -> int:
        """Weights of layers [first_layer, end_layer), plus the embedding on the first stage and the
        LM head on the last."""
        n = end_layer - first_layer
        extra = (first_layer == 0) + (end_layer == self.num_layers)
        return n * self.layer_bytes + extra * self.embedding_bytes

    def even_split(self, stages: int) -> list[tuple[int, int]]:
        """Contiguous layer ranges as equal as possible (larger ones first)."""
        if not 1 <= stages <= self.num_layers:
            raise ValueError(f"{self.name}: cannot cut {self.num_layers} layers into {stages} stages")
        base, extra = divmod(self.num_layers, stages)
        out, start = [], 0
        for k in range(stages):
            end = start + base + (1 if k < extra else 0)
            out.append((start, end))
            start = end
        return out

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """K and V for one token in one layer: 2 * kv_heads * head_dim * dtype (DESIGN.md)."""
        return 2 * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def activation_bytes_per_token(self) -> int:
        """Hidden state handed from one stage to the next."""
        return self.hidden * self.dtype_bytes

    @property
    def flops_per_token_layer(self) -> int:
        """Matmul FLOPs per token per layer, excluding attention over the context (2 * params)."""
        return 2 * self.params_per_layer

    @property
    def attn_flops_per_pair(self) -> int:
        """FLOPs per (query token, context token) pair per layer: QK^T and AV, 2 FLOPs each per dim."""
        return 4 * self.num_heads * self.head_dim


def _llama(name: str, layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int, ctx: int) -> ModelSpec:
    return ModelSpec(name, layers, hidden, heads, kv, inter, vocab, ctx, mlp="swiglu")


CATALOGUE: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        # meta-llama/Llama-2-7b-hf config.json
        _llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
        # meta-llama/Llama-2-13b-hf config.json
        _llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
        # meta-llama/Meta-Llama-3-8B config.json
        _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
        # facebook/opt-66b config.json: 64 layers, d_model 9216, 72 heads, ffn 36864, 2048 positions
        ModelSpec("opt-66b", 64, 9216, 72, 72, 36864, 50272, 2048, mlp="gelu"),
        # The paper's "WHISPER-9B" and "BERT-21B": Llama-style decoders scaled to ~9B and ~21B
        # parameters (assumption; no public checkpoint has these names and sizes).
        _llama("paper-9b", 36, 4096, 32, 32, 14336, 32000, 4096),
        _llama("paper-21b", 46, 6144, 48, 48, 16384, 32000, 4096),
        # A tiny shape for tests and CPU runs (kernel tests use the same preset).
        _llama("tiny", 4, 256, 8, 4, 688, 1024, 2048),
    ]
}


def get_model(name: str) -> ModelSpec:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(CATALOGUE))}") from None
