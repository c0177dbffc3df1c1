"""Model catalogue: the shapes the simulator needs to price a pipeline stage.

Only shapes matter here (no weights): bytes and FLOPs per decoder layer, KV bytes per token per
layer, activation bytes per token crossing a stage boundary. Shapes are the published configs of
each checkpoint (Hugging Face `config.json`). The paper's "WHISPER-9B" and "BERT-21B" match no public
checkpoint: `whisper-9b` is Whisper's encoder-decoder and `bert-21b` BERT's encoder, each widened to
that size (docs/paper-evaluation.md, "How we model BERT-21B and WHISPER-9B"). The older Llama-style
stand-ins `paper-9b` and `paper-21b` stay for old scenarios.

`kind` says how a request uses the model:
- decoder: prefill the prompt, then decode output tokens (LM head on the last stage);
- encoder: one forward pass over the prompt, no decode: the workload gives it 1 output token, so it
  finishes at its first token (TTFT = E2E) and keeps no KV after the pass; no LM head;
- encoder-decoder: the encoder reads a fixed-length input (`encoder_tokens`, the "prompt") and a
  decoder writes a short output. Layers are stored fused, one encoder layer + one decoder layer
  (with cross-attention) per `num_layers` entry, so the per-token KV of a layer is the decoder's
  cross-attention K/V over the encoder output plus its self-attention K/V over the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class ModelSpec:
    """A transformer by shape. All sizes in elements unless the name says bytes."""

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
    kind: str = "decoder"  # "decoder", "encoder" or "encoder-decoder" (module docstring)
    encoder_tokens: int = 0  # encoder-decoder: fixed encoder input length (the request's prompt)
    max_output_tokens: int | None = None  # decoder positions, where smaller than max_context

    def __post_init__(self) -> None:
        assert self.num_layers > 0 and self.hidden > 0 and self.num_heads > 0
        assert self.hidden % self.num_heads == 0, "hidden must divide into heads"
        assert self.num_heads % self.num_kv_heads == 0, "query heads must group over KV heads"
        assert self.mlp in ("swiglu", "gelu")
        assert self.kind in KINDS, f"kind must be one of {KINDS}"
        assert (self.kind == "encoder-decoder") == (self.encoder_tokens > 0), \
            "encoder_tokens is the encoder input length of an encoder-decoder (and only of one)"
        assert self.encoder_tokens < self.max_context

    @property
    def has_lm_head(self) -> bool:
        """An encoder ends in a pooler/classifier of hidden x hidden size, not a vocab-sized head."""
        return self.kind != "encoder"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @cached_property
    def _block_params(self) -> tuple[int, int]:
        """(one transformer block's parameters, its attention projections' parameters)."""
        h, kv = self.hidden, self.num_kv_heads * self.head_dim
        attn = h * h * 2 + h * kv * 2  # q, o and k, v projections
        if self.mlp == "swiglu":
            mlp = 3 * h * self.intermediate
            norms = 2 * h
        else:  # OPT, BERT, Whisper: fc1, fc2 with biases, layer norms with bias, attention biases
            mlp = 2 * h * self.intermediate + self.intermediate + h
            norms = 4 * h + 2 * h + 2 * kv
        return attn + mlp + norms, attn

    @cached_property
    def params_per_layer(self) -> int:
        layer, attn = self._block_params
        if self.kind == "encoder-decoder":
            # Fused: encoder block + decoder block, which adds cross-attention (q, k, v, o with
            # biases) and its layer norm to a block of the same shape.
            h, kv = self.hidden, self.num_kv_heads * self.head_dim
            return 2 * layer + attn + 2 * h + 2 * kv + 2 * h
        return layer

    @property
    def layer_bytes(self) -> int:
        return self.params_per_layer * self.dtype_bytes

    @property
    def embedding_bytes(self) -> int:
        """Token embedding on the first stage; the LM head (same size) lives on the last stage."""
        return self.vocab * self.hidden * self.dtype_bytes

    @property
    def head_bytes(self) -> int:
        """Last stage: the LM head (vocab x hidden), or an encoder's pooler (hidden x hidden + bias)."""
        if self.has_lm_head:
            return self.embedding_bytes
        return (self.hidden * self.hidden + self.hidden) * self.dtype_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_layers * self.layer_bytes + self.embedding_bytes + self.head_bytes

    def stage_weight_bytes(self, first_layer: int, end_layer: int) -> int:
        """Weights of layers [first_layer, end_layer), plus the embedding on the first stage and the
        head on the last."""
        n = end_layer - first_layer
        head = self.head_bytes if end_layer == self.num_layers else 0
        return n * self.layer_bytes + (first_layer == 0) * self.embedding_bytes + head

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
        """Matmul FLOPs per token per layer, excluding attention over the context (2 * params).

        Encoder-decoder (fused layers): 2 x (one block + the cross-attention's k, v projections).
        That is exact for both phases: an input frame passes the encoder block and is projected
        once into the decoder's cross-attention K/V; a decoded token passes the decoder's self-
        attention, cross-attention q and o and MLP, the same count. (Weights streamed per decode
        step are still the whole fused layer: docs/paper-evaluation.md.)"""
        if self.kind == "encoder-decoder":
            layer, _ = self._block_params
            return 2 * (layer + 2 * self.hidden * self.num_kv_heads * self.head_dim)
        return 2 * self.params_per_layer

    @property
    def attn_flops_per_pair(self) -> int:
        """FLOPs per (query token, context token) pair per layer: QK^T and AV, 2 FLOPs each per dim."""
        return 4 * self.num_heads * self.head_dim


KINDS = ("decoder", "encoder", "encoder-decoder")


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
        # The paper's "BERT-21B" as a BERT encoder (Devlin et al. 2019: post-LN, GELU MLP of 4x
        # hidden, biases, 30,522-token WordPiece vocabulary, 512 positions) widened to 21.0B
        # parameters: BERT-large's 24 layers x 1024 scaled to 46 x 6144 (48 heads of 128).
        ModelSpec("bert-21b", 46, 6144, 48, 48, 24576, 30522, 512, mlp="gelu", kind="encoder"),
        # The paper's "WHISPER-9B" as Whisper's encoder-decoder (Radford et al. 2022; large-v3
        # config.json: 32 encoder + 32 decoder layers, heads of 64, GELU MLP of 4x d_model, vocab
        # 51,866, 1,500 encoder positions = 30 s of audio, 448 decoder positions) widened from
        # d_model 1280 to 3136 (49 heads of 64): 9.0B parameters. 32 fused layers (see docstring).
        ModelSpec("whisper-9b", 32, 3136, 49, 49, 12544, 51866, 1500 + 448, mlp="gelu",
                  kind="encoder-decoder", encoder_tokens=1500, max_output_tokens=448),
        # A tiny shape for tests and CPU runs (kernel tests use the same preset).
        _llama("tiny", 4, 256, 8, 4, 688, 1024, 2048),
    ]
}


def get_model(name: str) -> ModelSpec:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(CATALOGUE))}") from None
