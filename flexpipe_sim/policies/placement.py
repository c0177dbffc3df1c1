"""Placement helpers shared by policies: which GPU hosts each stage of a new pipeline.

Rules every placement obeys (DESIGN.md): a stage fits in the GPU's free memory (weights, workspace
and KV for at least one full-context request, within gpu_memory_utilization), and two stages of one
model never share a GPU. Among fitting GPUs, a stage goes next to the previous stage (same server,
then same rack, then an RDMA server), then to the GPU whose tenants use the least SM time, then to
the one with most free memory.
"""

from __future__ import annotations

from ..costmodel import slowdown
from ..models import ModelSpec
from flexpipe_core.policyapi import ClusterView, EngineLimits, GPUView, Launch, StagePlan


def stage_need_bytes(spec: ModelSpec, first: int, end: int, eng: EngineLimits, kv_tokens: int = 0) -> int:
    """Footprint a stage needs: weights + workspace + KV for `kv_tokens` tokens (at least one
    full-context request, the least any stage can run with)."""
    kv = max(kv_tokens, spec.max_context) * spec.kv_bytes_per_token_layer * (end - first)
    return spec.stage_weight_bytes(first, end) + eng.workspace_bytes + kv


def usable_bytes(free_bytes: int, eng: EngineLimits) -> int:
    return int(free_bytes * eng.gpu_memory_utilization)


def _proximity(prev: GPUView | None, g: GPUView) -> int:
    if prev is None:
        return 0
    if g.server == prev.server:
        return 0
    if g.rack == prev.rack and g.rdma and prev.rdma:
        return 1
    if g.rdma and prev.rdma:
        return 2
    return 3


def could_fit(view: ClusterView, model: str, ranges: list[tuple[int, int]], taken: set[int], kv_tokens: int = 0,
              fixed: dict[int, int] | None = None, isolate: int = 0) -> bool:
    """False where `place_pipeline` surely returns None. Its filters other than memory are the
    same for every stage, and two stages never share a GPU: the stages, largest need first, need
    as many distinct GPUs with room (the i-th largest need, i GPUs that hold it). One pass, no
    ranking; most of FlexPipe's refactor placements, tried every tick on a full cluster, end here."""
    spec, eng = view.models[model].spec, view.engine
    needs = sorted((stage_need_bytes(spec, f, e, eng, kv_tokens) for k, (f, e) in enumerate(ranges)
                    if not fixed or k not in fixed), reverse=True)
    if not needs:
        return True
    util, least = eng.gpu_memory_utilization, needs[-1]
    room = [u for g in view.gpus
            if (u := int(g.free_bytes * util)) >= least and g.id not in taken and model not in g.models
            and not (isolate >= 2 and g.models)]
    if len(room) < len(needs):
        return False
    room.sort(reverse=True)
    return all(u >= n for u, n in zip(room, needs))


def place_pipeline(
    view: ClusterView,
    model: str,
    ranges: list[tuple[int, int]],
    taken: set[int],
    kv_tokens: int = 0,
    server_score: dict[int, float] | None = None,
    topology: bool = True,
    isolate: int = 0,
    balance: bool = False,
    mux_penalty: float | None = None,
    fixed: dict[int, int] | None = None,
) -> Launch | None:
    """Greedy placement of one pipeline; `taken` holds GPUs already promised in this decision
    (updated on success); every stage gets room for `kv_tokens` tokens of KV. Returns None when
    some stage fits nowhere. Options, in the order they rank GPUs:
    - `isolate=1` puts GPUs already running our other models' stages last (they would share its
      compute: Eq. 9's multiplexing penalty); `isolate=2` never uses them.
    - `balance` ranks GPUs by their tenants' SM load in 10% steps: a pipeline runs at its slowest
      stage, so one busy GPU slows all of it (Eq. 8's stage balance on GPUs of unequal speed).
    - proximity to the previous stage (same server, rack, RDMA); `topology=False` ignores it (ablation).
    - `server_score` (higher first): FlexPipe's affinity (Eq. 13).
    Then least tenant SM load, most free memory.
    `mux_penalty` (FlexPipe, replaces `isolate`): rank GPUs first by Eq. 6's per-GPU term,
    speed - gamma * [the GPU runs our other models' stages], speed = 1 / tenant slowdown (1 without
    `balance`), in 0.1 steps: a penalty (Eq. 9), so a shared GPU is used when nothing better fits.
    `fixed`: stage index -> GPU that already holds this model's stage and keeps a subset of its
    layers (in-place refactoring, Fig. 6): taken as is, no memory check (it only shrinks).
    """
    if not could_fit(view, model, ranges, taken, kv_tokens, fixed, isolate):
        return None
    spec = view.models[model].spec
    eng = view.engine
    chosen: list[GPUView] = []
    by_id = {g.id: g for g in view.gpus}
    fixed = fixed or {}
    roof = view.models[model].cost.roofline if mux_penalty is not None and balance else None
    for k, (first, end) in enumerate(ranges):
        if k in fixed:
            chosen.append(by_id[fixed[k]])
            continue
        need = stage_need_bytes(spec, first, end, eng, kv_tokens)
        prev = chosen[-1] if chosen else None
        used = {c.id for c in chosen}
        fits = [
            g
            for g in view.gpus
            if g.id not in taken
            and model not in g.models
            and g.id not in used
            and usable_bytes(g.free_bytes, eng) >= need
            and not (isolate >= 2 and g.models)
        ]
        if not fits:
            return None
        aff = (lambda g: -server_score.get(g.server, 0.0)) if server_score else (lambda g: 0.0)
        mux = (lambda g: len(g.models)) if isolate else (lambda g: 0)
        speed = (lambda g: round(g.tenant_sm_frac, 1)) if balance else (lambda g: 0)
        if mux_penalty is not None:
            pen = mux_penalty

            def mux(g: GPUView) -> float:  # noqa: F811 - Eq. 6 term, higher first
                fast = 1.0 / slowdown(g.tenant_sm_frac, roof) if balance else 1.0
                return -round(fast - pen * bool(g.models), 1)

            speed = lambda g: 0  # noqa: E731 - folded into the Eq. 6 term
        if prev is None:
            key = lambda g: (mux(g), speed(g), aff(g), round(g.tenant_sm_frac, 2), -g.free_bytes, g.id)  # noqa: E731
        elif topology:
            key = lambda g: (mux(g), speed(g), _proximity(prev, g), aff(g), round(g.tenant_sm_frac, 2), -g.free_bytes, g.id)  # noqa: E731
        else:
            key = lambda g: (mux(g), speed(g), aff(g), g.id)  # noqa: E731
        best = min(fits, key=key)
        chosen.append(best)
    taken.update(g.id for k, g in enumerate(chosen) if k not in fixed)
    return Launch(model, tuple(StagePlan(f, e, g.id) for (f, e), g in zip(ranges, chosen)))


def servers_of(view: ClusterView) -> dict[int, list[GPUView]]:
    out: dict[int, list[GPUView]] = {}
    for g in view.gpus:
        out.setdefault(g.server, []).append(g)
    return out


def place_on_server(view: ClusterView, model: str, ranges: list[tuple[int, int]], gpus: list[GPUView],
                    taken: set[int], kv_tokens: int = 0) -> Launch | None:
    """All stages on GPUs of one server (ServerlessLLM and Tetris never span servers), each on
    the fitting GPU with the most free memory. Returns None if the server cannot host it."""
    spec, eng = view.models[model].spec, view.engine
    free = sorted((g for g in gpus if g.id not in taken and model not in g.models), key=lambda g: (-g.free_bytes, g.id))
    chosen: list[GPUView] = []
    for first, end in ranges:
        need = stage_need_bytes(spec, first, end, eng, kv_tokens)
        g = next((g for g in free if g not in chosen and usable_bytes(g.free_bytes, eng) >= need), None)
        if g is None:
            return None
        chosen.append(g)
    taken.update(g.id for g in chosen)
    return Launch(model, tuple(StagePlan(f, e, g.id) for (f, e), g in zip(ranges, chosen)))


def min_server_depth(view: ClusterView, model: str) -> int | None:
    """Fewest GPUs of one server the whole model fits on in an empty-of-us cluster (None: nowhere)."""
    spec = view.models[model].spec
    most = max(len(gs) for gs in servers_of(view).values())
    for d in range(1, min(most, spec.num_layers) + 1):
        ranges = spec.even_split(d)
        if any(place_on_server(view, model, ranges, gs, set()) for gs in servers_of(view).values()):
            return d
    return None


def fitting_depth(view: ClusterView, model: str, at_least: int = 1) -> int | None:
    """Smallest even-split depth >= at_least whose every stage fits some GPU's free memory."""
    spec, eng = view.models[model].spec, view.engine
    best_free = max(usable_bytes(g.free_bytes, eng) for g in view.gpus)
    for d in range(at_least, spec.num_layers + 1):
        if all(stage_need_bytes(spec, f, e, eng) <= best_free for f, e in spec.even_split(d)):
            return d
    return None
