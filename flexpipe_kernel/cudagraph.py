"""Decode steps as CUDA graphs: a stage's decode step (one new token per sequence) padded to a
fixed batch-size bucket and block-table-width bucket, run from static input buffers, captured
once per bucket and replayed (the technique of vLLM's CUDA-graph decode; launch overhead is most
of a small-batch decode step on a GPU).

On a CPU (or with `capture=False`) the same static buffers and padding run eagerly, so the
bucketing and padding are what the CPU tests check for equal outputs; only capture/replay needs
CUDA. Prefill and mixed steps always run the stage's ordinary eager forward.

Padding rows must not touch real KV: each wrapped stage reserves one KV block (request id
`SCRATCH`) in its own cache; a padding row is a sequence of context 1 whose only slot is that
block's first, and real rows' tables are padded with the same block (masked out by context).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .model import StepMeta
from .stage import Stage

SCRATCH = -1  # request id of the reserved padding block (engine ids are >= 0)
# Powers of two up to 256 sequences: vLLM captures 1, 2, 4 and multiples of 8 up to 256 (its
# default max batch for graphs); powers of two keep the count of graphs (and their memory) small.
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= n), None)


@dataclass
class _Graph:
    x: torch.Tensor          # [Bb] token ids (first stage) or [Bb, dim] hidden states
    positions: torch.Tensor  # [Bb]
    slots: torch.Tensor      # [Bb]
    tables: torch.Tensor     # [Bb, nbb]
    ctx: torch.Tensor        # [Bb]
    out: torch.Tensor | None = None
    graph: "torch.cuda.CUDAGraph | None" = None


class GraphedStage:
    """A stage whose decode steps run through bucketed static buffers (captured as CUDA graphs on
    CUDA). Called like the stage; every other attribute is the stage's."""

    def __init__(self, stage: Stage, *, batch_buckets: tuple[int, ...] = DEFAULT_BATCH_BUCKETS,
                 capture: bool | None = None) -> None:
        self.stage = stage
        self.capture = stage.device.type == "cuda" if capture is None else capture
        if self.capture and stage.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA stage")
        self.batch_buckets = tuple(sorted(batch_buckets))
        bs = stage.cache.block_size
        self.max_blocks = -(-stage.args.max_seq_len // bs)
        stage.cache.allocate(SCRATCH, 1)
        self.scratch_block = stage.cache.table(SCRATCH)[0]
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.replays = 0  # decode steps served from a bucket (graph replays on CUDA)
        self.eager = 0    # steps that ran the stage's ordinary forward

    def __getattr__(self, name: str):
        if name == "stage":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.stage, name)

    @property
    def graphs(self) -> int:
        return len(self._graphs)

    def __call__(self, x: torch.Tensor, meta: StepMeta) -> torch.Tensor:
        B = len(meta.req_ids)
        bb = _bucket(B, self.batch_buckets)
        if bb is None or any(n != 1 for n in meta.seq_lens):
            self.eager += 1
            return self.stage(x, meta)
        bs = self.stage.cache.block_size
        need = max(-(-c // bs) for c in meta.ctx_lens)
        nbb = min(1 << (need - 1).bit_length(), self.max_blocks)  # width: next power of two
        g = self._graphs.get((bb, nbb))
        fresh = g is None
        if fresh:
            g = self._graphs[(bb, nbb)] = self._buffers(bb, nbb)
        self._fill(g, x, meta, nbb)
        if not self.capture:
            g.out = self._forward(g)
        elif fresh:
            self._capture(g)
        else:
            g.graph.replay()
        self.replays += 1
        # a copy: the next replay of this bucket overwrites g.out while the wavefront still holds it
        return g.out[:B].clone()

    # --- static buffers ----------------------------------------------------------------------------
    def _buffers(self, bb: int, nbb: int) -> _Graph:
        st, dev = self.stage, self.stage.device
        x = (torch.zeros(bb, dtype=torch.long, device=dev) if st.is_first
             else torch.zeros(bb, st.args.dim, dtype=st.dtype, device=dev))
        return _Graph(x, torch.zeros(bb, dtype=torch.long, device=dev), torch.zeros(bb, dtype=torch.long, device=dev),
                      torch.zeros(bb, nbb, dtype=torch.long, device=dev), torch.ones(bb, dtype=torch.long, device=dev))

    def _fill(self, g: _Graph, x: torch.Tensor, meta: StepMeta, nbb: int) -> None:
        """Real rows first, then padding rows: context 1 in the scratch block's first slot."""
        cache, B, bb = self.stage.cache, len(meta.req_ids), g.x.shape[0]
        pad = bb - B
        sb = self.scratch_block
        slots, tables = [], []
        for rid, ctx in zip(meta.req_ids, meta.ctx_lens):
            slots.extend(cache.slots(rid, ctx - 1, 1))
            t = cache.table(rid)[:nbb]
            tables.append(t + [sb] * (nbb - len(t)))
        slots += [sb * cache.block_size] * pad
        tables += [[sb] * nbb] * pad
        g.x[:B].copy_(x.to(g.x.device, g.x.dtype), non_blocking=True)
        if pad:
            g.x[B:].zero_()
        g.positions.copy_(torch.tensor(meta.positions.tolist() + [0] * pad), non_blocking=True)
        g.slots.copy_(torch.tensor(slots), non_blocking=True)
        g.tables.copy_(torch.tensor(tables), non_blocking=True)
        g.ctx.copy_(torch.tensor(list(meta.ctx_lens) + [1] * pad), non_blocking=True)

    def _forward(self, g: _Graph) -> torch.Tensor:
        """The stage's forward on the static buffers (what is captured): the same layers and the
        same batched decode attention as Stage.forward, reading tensors only."""
        st = self.stage
        bb = g.x.shape[0]
        meta = StepMeta(req_ids=list(range(bb)), positions=g.positions, seq_lens=[1] * bb, ctx_lens=[],
                        slots=g.slots, decode_tables=g.tables, decode_ctx=g.ctx)
        with torch.no_grad():
            h = st.tok_embeddings(g.x) if st.is_first else g.x
            for i, layer in enumerate(st.layers):
                h = layer(h, meta, st.rope, st.cache.k[i], st.cache.v[i])
            if not st.is_last:
                return h
            return st.output(st.norm(h)).float()

    def _capture(self, g: _Graph) -> None:
        """Warm up on a side stream (as torch.cuda.graphs' docs require), then capture. The warm-up
        writes the same K/V the captured step writes, so running it is harmless."""
        dev = self.stage.device
        with torch.cuda.device(dev):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # cuBLAS / attention workspaces are set up outside the capture
                    self._forward(g)
            torch.cuda.current_stream().wait_stream(side)
            g.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g.graph, pool=self._pool):
                g.out = self._forward(g)
            g.graph.replay()

    def release(self) -> None:
        """Free the scratch block and the graphs (before the stage is retired or refactored)."""
        self._graphs.clear()
        self.stage.cache.free(SCRATCH)


def graphed(stages: list[Stage], **kw) -> list[GraphedStage]:
    """Wrap every stage: `PipelineEngine(graphed(stages))` runs decode through CUDA graphs on CUDA
    stages and through the same bucketed static buffers eagerly on CPU stages."""
    return [GraphedStage(s, **kw) for s in stages]
