"""Inflight refactoring in the simulator (FlexPipe §6.3, Fig. 6), the same protocol the kernel runs
(flexpipe_kernel/refactor.py), priced by the cost model and the cluster's links:

1. New stages load their weights (host cache first, storage on a miss) while the old pipeline
   serves, sharing storage and PCIe bandwidth with every other load (engine/loads.py).
2. KV pre-copy rounds: each new stage pulls the KV of its layers from the old stages holding them,
   over the link between the two GPUs. Round 1 copies every running request's computed tokens;
   each later round copies the tokens computed during the previous one (the dirty set, the
   validity mask of Eq. 10). Rounds stop when a round would take under STOP_S, or after MAX_ROUNDS.
3. Pause: no new micro-batches; in-flight ones finish; the last dirty tokens are copied; the
   instance switches to the new stages; old stages free their GPUs.
Recorded per refactor: weight load time, KV bytes, rounds, pause (downtime), total duration; and
for switch costs (flexpipe_sim/switchcost.py, issue 15): KV bytes per link kind, the weights'
source, the ids of the requests in flight at the pause, and the times at which those requests got
tokens around the switch (`watch_tokens`, where the simulation asks for it: polled every WATCH_S,
so a gap is exact to WATCH_S).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .instance import Instance, StageInfo

if TYPE_CHECKING:
    from .transitions import Transitions

MAX_ROUNDS = 4  # constant: PipeLive-style pre-copy converges in 2-3 rounds; 4 bounds the worst case
STOP_S = 1e-3  # constant: a final delta under 1 ms is what the paper's "short switch" implies
WATCH_S = 5e-4  # constant: token-watch resolution; 0.5 ms is 1/20 of the 10 ms PipeLive switch target
WATCH_TAIL_S = 0.5  # constant: keep watching this long after the switch (several TPOTs at 10-100 ms)


def copy_seconds(tr: Transitions, inst: Instance, new: list[StageInfo], tokens: int,
                 by_link: dict[str, int] | None = None) -> tuple[float, int]:
    """Time and bytes to copy `tokens` tokens of KV into every new stage from the old ones (new
    stages in parallel; one stage's pieces from several old stages one after another). `by_link`:
    bytes added per link kind (nvlink, pcie, rdma, tcp)."""
    kvb = tr.specs[inst.model].kv_bytes_per_token_layer
    worst, total = 0.0, 0
    old_gpus = {s.gpu for s in inst.stages}
    for ns in new:
        if ns.gpu in old_gpus:
            continue  # the stage stayed on its GPU (same layers or a subset): its KV is already there
        t = 0.0
        for os_ in inst.stages:
            a, b = max(ns.first_layer, os_.first_layer), min(ns.end_layer, os_.end_layer)
            if a < b and tokens > 0:
                nbytes = tokens * kvb * (b - a)
                link = tr.cluster.link_between(os_.gpu, ns.gpu)
                t += link.latency_s + nbytes / link.bytes_per_s
                total += nbytes
                if by_link is not None:
                    by_link[link.kind.value] = by_link.get(link.kind.value, 0) + nbytes
        worst = max(worst, t)
    return worst, total


def _computed(inst: Instance) -> dict[int, int]:
    inst.materialize()
    return {r.id: r.num_computed for s in inst.slots[: inst.n_active] for r in s.running}


def _dirty(before: dict[int, int], inst: Instance) -> int:
    """Tokens whose KV changed since `before`: new tokens of known requests; all tokens of new ones
    and of those recomputing after a preemption (their count went down)."""
    now = _computed(inst)
    return sum(c - before.get(rid, 0) if c >= before.get(rid, 0) else c for rid, c in now.items())


def _requests(inst: Instance) -> list:
    return [r for s in inst.slots[: inst.n_active] for r in s.running] + list(inst.waiting)


def watch_tokens(env, inst: Instance, until: list[float | None], times: list[float]):
    """Append the time of every poll at which the instance sampled a token (for any of its requests:
    while it is paused none gets one, so its gaps are the in-flight requests' gaps); stops
    WATCH_TAIL_S after until[0] is set (the switch)."""
    last = inst.tokens_generated
    while until[0] is None or env.now < until[0] + WATCH_TAIL_S:
        yield env.timeout(WATCH_S)
        now = inst.tokens_generated
        if now != last:
            times.append(env.now)
            last = now


def refactor_process(tr: Transitions, inst: Instance, new: list[StageInfo]):
    env = tr.env
    t0 = env.now
    until: list[float | None] = [None]
    token_times: list[float] = []
    if getattr(tr, "watch_switches", False):  # set by heterosim.HeteroSimulation: polling costs events
        env.process(watch_tokens(env, inst, until, token_times))
    by_link: dict[str, int] = {}
    old = list(inst.stages)
    old_gpus, new_gpus = {s.gpu for s in old}, {s.gpu for s in new}
    fresh = [s for s in new if s.gpu not in old_gpus]  # a stage that stays keeps its weights (Fig. 6)
    cold, weight_bytes = yield env.process(tr.load_stages(inst.model, fresh))  # shares the load fabric
    load_s = env.now - t0
    rounds, kv_bytes = 0, 0
    before: dict[int, int] = {}
    while rounds < MAX_ROUNDS:
        rounds += 1
        snap = _computed(inst)
        secs, nbytes = copy_seconds(tr, inst, new, _dirty(before, inst), by_link)
        kv_bytes += nbytes
        before = snap
        if secs > 0:
            inst.refactor_next = env.now + secs  # its next read (the instance's run-ahead horizon)
            yield env.timeout(secs)
        if copy_seconds(tr, inst, new, _dirty(before, inst))[0] < STOP_S:
            break
    t_pause = env.now
    inst.materialize()  # fast-forwarded slots lag (engine/fastbatch.py)
    inflight = [r.id for r in _requests(inst)]
    kv_tokens_at_pause = sum(r.num_computed for s in inst.slots[: inst.n_active] for r in s.running)
    yield inst.pause()  # in-flight micro-batches complete; nothing new starts
    t_drained = env.now
    secs, nbytes = copy_seconds(tr, inst, new, _dirty(before, inst), by_link)
    kv_bytes += nbytes
    if secs > 0:
        inst.refactor_next = env.now + secs  # (paused: nothing runs ahead)
        yield env.timeout(secs)
    for s in old:
        if s.gpu not in new_gpus:
            tr.free_stage(inst.model, inst.id, s)
    final_copy_s, final_kv_bytes = secs, nbytes
    preempted = inst.switch(new, tr.pipeline_cost(inst.model, new), tr.block_size)
    tr.joined(s.gpu for s in new)
    until[0] = env.now
    inst.refactoring = False
    tr.refactors.append({
        "instance": inst.id, "model": inst.model, "requested_s": t0, "switched_s": env.now,
        "old_stages": len(old), "new_stages": len(new), "weight_load_s": load_s, "cold_stages": cold,
        "weight_bytes": weight_bytes, "kv_bytes": kv_bytes, "rounds": rounds, "pause_s": env.now - t_pause,
        "duration_s": env.now - t0, "preempted": preempted,
        "old_gpus": " ".join(str(s.gpu) for s in old), "new_gpus": " ".join(str(s.gpu) for s in new),
        "old_layers": " ".join(f"{s.first_layer}-{s.end_layer}" for s in old),
        "new_layers": " ".join(f"{s.first_layer}-{s.end_layer}" for s in new),
        "paused_s": t_pause, "drain_s": t_drained - t_pause, "final_copy_s": final_copy_s,
        "final_kv_bytes": final_kv_bytes,
        "kv_tokens_at_pause": kv_tokens_at_pause,
        "weight_source": f"{cold} cold (storage, then PCIe), {len(fresh) - cold} warm (host cache, PCIe)",
        # lists and maps for switchcost.py; "_" keys stay out of refactors.csv
        "_kv_bytes_by_link": dict(by_link), "_inflight_ids": inflight, "_token_times": token_times,
    })
