"""hetero_phase: one pipeline per model on a mixed cluster, reconfigured when the request mix
changes phase (issue 15).

Each decision it reads the recent shape (heterosim's view: mean prompt of the stats window's
arrivals, mean output of its completions) and classifies it as prefill-heavy when prompt / output
is at least `prefill_ratio`. While a phase has held for `patience` decisions (the shape is not in
transition) it plans the configuration (hetero_plan: which kinds, how many stages, cut where) for
that shape at `headroom` x the smoothed arrival rate: the cheapest by `gpu_weight` that serves it.
The running configuration stays while it still serves that rate and costs at most `switch_gain`
more (hysteresis), and switches are at least `cooldown_s` apart. A different plan is carried out as an inflight refactor (FlexPipe
§6.3; engine/refactor.py): weights load while the old pipeline serves, KV pre-copies, a short pause.
With `switch: false` it keeps its first plan (the baseline switchcost.py compares against).

On a cluster of one kind it still plans depth and cuts per phase (where the view carries the recent
shape: heterosim's). GPUs: for each stage kind, a free GPU of that kind (or one of the pipeline's own), next to the
previous stage where possible (same server, then an RDMA server); the pipeline's own GPUs are
preferred when the stage's layers stay on them (Fig. 6: a stage that stays keeps its weights).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from flexpipe_core.policyapi import Action, ClusterView, GPUView, Launch, Refactor, StagePlan
from .hetero_plan import Plan, candidates, choose, plan
from .placement import stage_need_bytes, usable_bytes


class HeteroPhaseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_ratio: float = Field(20.0, gt=0, description="prompt/output tokens at or above which a phase is "
                                 "prefill-heavy (azure-code: 71, azure-conv: 5.5; 20 is between, on a log scale)")
    patience: int = Field(5, ge=1, description="decisions a new phase must hold before a switch (5 s at the "
                          "default 1 s control interval: a 15 s window's mean moves that long after a shift)")
    max_depth: int = Field(4, ge=1, le=16, description="most stages a plan may have")
    headroom: float = Field(1.5, gt=0, description="capacity planned per observed req/s")
    rate_smoothing_s: float = Field(30.0, gt=0, description="time constant of the arrival-rate average plans "
                                    "size for (a 15 s window's rate at 7 req/s is +-18% by chance alone)")
    cooldown_s: float = Field(60.0, ge=0, description="least time between two switches of one pipeline (a switch "
                              "loads weights for 0.3-15 s and pre-copies KV: the next one waits for its effect)")
    gpu_weight: dict[str, float] = Field(default_factory=dict, description="relative cost of a GPU of each "
                                         "kind (default 1 each: the fewest GPUs); plans minimise the sum")
    switch_gain: float = Field(0.5, ge=0, description="keep the running configuration while it serves the "
                               "phase and costs at most this much more (in gpu_weight units) than the best plan")
    switch: bool = Field(True, description="false: keep the first plan (the no-switch baseline)")
    kinds: list[str] | None = Field(None, description="GPU kinds to plan with, in pipeline order (default: the "
                                    "cluster's, in the order of cluster.mix)")

    def check_scenario(self, sc) -> None:
        have = [g.gpu for g in sc.cluster.mix] if sc.cluster.mix is not None else [sc.cluster.gpu]
        for k in self.kinds or []:
            if k not in have:
                raise ValueError(f"policy.params.kinds: {k} is not in cluster.mix ({', '.join(have)})")


class HeteroPhasePolicy:
    name = "hetero_phase"

    def __init__(self, params: HeteroPhaseParams) -> None:
        self.p = params
        self.notes: list[str] = []
        self.decisions: list[dict] = []  # every plan chosen: time, phase, kinds, cuts, capacity
        self._phase: dict[str, str] = {}
        self._pending: dict[str, tuple[str, int]] = {}  # model -> (candidate phase, decisions held)
        self._last_switch: dict[str, float] = {}
        self._rate: dict[str, tuple[float, float]] = {}  # model -> (time, smoothed arrival rate)

    def _kinds(self, view: ClusterView) -> list[str]:
        if self.p.kinds:
            return list(self.p.kinds)
        seen: list[str] = []
        for g in view.gpus:
            if _kind(view, g) not in seen:
                seen.append(_kind(view, g))
        return seen

    def decide(self, view: ClusterView) -> list[Action]:
        acts: list[Action] = []
        taken: set[int] = set()
        for name in sorted(view.models):
            acts += self._decide_model(view, name, taken)
        return acts

    def _shape(self, mv) -> tuple[float, float]:
        p = mv.recent_prompt_tokens if not math.isnan(mv.recent_prompt_tokens) else mv.mean_prompt_tokens
        o = mv.recent_output_tokens if not math.isnan(mv.recent_output_tokens) else mv.mean_output_tokens
        return p, o

    def _decide_model(self, view: ClusterView, name: str, taken: set[int]) -> list[Action]:
        mv = view.models[name]
        prompt, output = self._shape(mv)
        seen = "prefill" if prompt >= self.p.prefill_ratio * max(output, 1.0) else "decode"
        insts = [i for i in view.instances_of(name) if i.state != "draining"]
        rate = self._smoothed(view.now, name, mv.arrival_rate, mv.mean_rate)
        if not insts:
            return self._launch(view, name, seen, prompt, output, rate, taken)
        inst = insts[0]
        if not self.p.switch or inst.state != "ready":
            return []
        ph, n = self._pending.get(name, (seen, 0))
        n = n + 1 if ph == seen else 1
        self._pending[name] = (seen, n)  # decisions the current phase has held
        if n < self.p.patience or view.now - self._last_switch.get(name, -math.inf) < self.p.cooldown_s:
            return []
        pl = self._plan(view, name, prompt, output, rate)
        if pl is None:
            return []
        self._phase[name] = seen
        if self._keep(view, name, inst, pl, prompt, output, rate):
            return []
        gpus = self._gpus(view, name, pl, taken, own=dict(zip(inst.gpus, inst.layer_ranges)))
        if gpus is None:
            self._note(f"hetero_phase: no free GPUs for {name}'s {seen} plan {'+'.join(pl.kinds)}")
            return []
        stages = tuple(StagePlan(f, e, g) for (f, e), g in zip(pl.cuts, gpus))
        if stages == tuple(StagePlan(f, e, g) for (f, e), g in zip(inst.layer_ranges, inst.gpus)):
            return []  # the phase changed but its best plan is what runs
        self._record(view, name, seen, pl, gpus)
        self._last_switch[name] = view.now
        return [Refactor(inst.id, stages)]

    def _keep(self, view: ClusterView, name: str, inst, pl: Plan, prompt: float, output: float, rate: float) -> bool:
        """Hysteresis: the running configuration stays while it still serves the new phase's rate and
        costs at most `switch_gain` more than the new plan (a switch is not free: switchcost.py)."""
        kinds = tuple(next(_kind(view, g) for g in view.gpus if g.id == gid) for gid in inst.gpus)
        cur = plan(view, view.models[name], kinds, prompt, output, cuts=tuple(inst.layer_ranges))
        w = self.p.gpu_weight
        cost = lambda p: sum(w.get(k, 1.0) for k in p.kinds)  # noqa: E731
        return cur is not None and cur.capacity >= self.p.headroom * rate and cost(cur) <= cost(pl) + self.p.switch_gain

    def _smoothed(self, now: float, name: str, rate: float, start: float) -> float:
        """Exponential average of the window's rate with time constant rate_smoothing_s, starting from
        `start` (the history's mean rate, what the operator planned the launch from)."""
        t, r = self._rate.get(name, (now, start))
        r += (rate - r) * (1.0 - math.exp(-(now - t) / self.p.rate_smoothing_s))
        self._rate[name] = (now, r)
        return r

    def _plan(self, view: ClusterView, name: str, prompt: float, output: float, rate: float) -> Plan | None:
        mv = view.models[name]
        plans = candidates(view, mv, self._kinds(view), self.p.max_depth, prompt, output)
        pl = choose(plans, self.p.headroom * rate, self.p.gpu_weight)
        if pl is None:
            self._note(f"hetero_phase: no configuration of {name} fits the cluster's GPU kinds")
        return pl

    def _launch(self, view, name, phase, prompt, output, rate, taken) -> list[Action]:
        pl = self._plan(view, name, prompt, output, rate)
        if pl is None:
            return []
        gpus = self._gpus(view, name, pl, taken, own={})
        if gpus is None:
            self._note(f"hetero_phase: no free GPUs for {name}'s plan {'+'.join(pl.kinds)}")
            return []
        self._phase[name] = phase
        self._last_switch[name] = view.now
        self._record(view, name, phase, pl, gpus)
        return [Launch(name, tuple(StagePlan(f, e, g) for (f, e), g in zip(pl.cuts, gpus)))]

    def _gpus(self, view: ClusterView, name: str, pl: Plan, taken: set[int],
              own: dict[int, tuple[int, int]]) -> list[int] | None:
        """A GPU per stage: its own GPU where that stage's layers are a subset of what it holds (no
        reload), else a free GPU of the kind whose free memory (other tenants') holds the stage,
        nearest the previous stage (same server, RDMA, any), then the emptiest."""
        chosen: list[int] = []
        used = set(taken)
        by_id = {g.id: g for g in view.gpus}
        for (f, e), kind in zip(pl.cuts, pl.kinds):
            keep = [g for g, (of, oe) in own.items() if _kind(view, by_id[g]) == kind and of <= f and e <= oe
                    and g not in used]
            if keep:
                pick = keep[0]
            else:
                need = stage_need_bytes(view.models[name].spec, f, e, view.engine)
                free = [g for g in view.gpus if _kind(view, g) == kind and g.id not in used and g.id not in own
                        and not g.models and need <= usable_bytes(g.free_bytes, view.engine)]
                if not free:
                    return None
                prev = by_id[chosen[-1]] if chosen else None
                pick = min(free, key=lambda g: (_distance(prev, g), -g.free_bytes, g.id)).id
            chosen.append(pick)
            used.add(pick)
        taken.update(chosen)
        return chosen

    def _record(self, view, name, phase, pl: Plan, gpus) -> None:
        self.decisions.append({"time_s": view.now, "model": name, "phase": phase, "kinds": "+".join(pl.kinds),
                               "cuts": " ".join(f"{f}-{e}" for f, e in pl.cuts), "gpus": " ".join(map(str, gpus)),
                               "batch": pl.batch, "capacity_rps": pl.capacity,
                               "stage_ms": " ".join(f"{1e3 * t:.2f}" for t in pl.stage_s)})

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _kind(view: ClusterView, g: GPUView) -> str:
    """A GPU's kind: the view's where the cluster mixes kinds, else the cluster's one kind."""
    return g.kind or view.gpu_kind.name


def _distance(prev: GPUView | None, g: GPUView) -> int:
    if prev is None:
        return 0
    if g.server == prev.server:
        return 0
    return 1 if g.rdma and prev.rdma else 2
