"""Static provisioning: fixed replicas of a fixed pipeline depth, placed once at start.

Models the paper's "always-on" baseline: operators keep ~75% of the historical peak capacity
always running (§3.1, §2.2): the default `fraction: 0.75`; `fraction: 1.0` provisions for the
full peak. A depth at which a stage fits no GPU is raised to the smallest one that fits (noted). Replicas per model = ceil(fraction * peak_rate / replica_rate) where replica_rate is
the cost model's steady-state estimate (policies/sizing.py) at the largest decode batch whose token
time stays within `slo_headroom` x the model's TPOT SLO (or at `target_batch`, if given).
Simplifications: it never scales, never refactors, never moves; if the cluster cannot hold all
the replicas it asked for, it runs with those that fit and says so in the run's action log.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from flexpipe_core.policyapi import Action, ClusterView
from .placement import fitting_depth, place_pipeline
from .sizing import planned_batch, replica_rate


class StaticParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: int | dict[str, int] = Field(1, description="pipeline depth, one for all models or per model")
    replicas: int | dict[str, int] | None = Field(None, description="fixed replica count; None = size for the peak")
    fraction: float = Field(0.75, gt=0, le=4, description="share of the peak to provision (the paper's always-on baseline: 75%)")
    target_batch: int | None = Field(None, ge=1, description="sequences per micro-batch the sizing assumes (None: from the SLO)")
    slo_headroom: float = Field(0.8, gt=0, le=1, description="share of the TPOT SLO the sized batch may use")

    def depth(self, model: str) -> int:
        return self.stages if isinstance(self.stages, int) else self.stages.get(model, 1)

    def check_scenario(self, sc) -> None:
        for m in sc.models:
            d = self.depth(m.name)
            spec = m.spec()
            if not 1 <= d <= spec.num_layers:
                raise ValueError(f"policy.params.stages: {m.name} has {spec.num_layers} layers, cannot make {d} stages")
            if d > sc.cluster.gpus:
                raise ValueError(f"policy.params.stages: {d} stages need {d} GPUs, the cluster has {sc.cluster.gpus}")
        if isinstance(self.replicas, int) and self.replicas < 1:
            raise ValueError("policy.params.replicas: must be at least 1")


class StaticPolicy:
    name = "static"

    def __init__(self, params: StaticParams) -> None:
        self.p = params
        self._placed = False
        self.notes: list[str] = []  # what the policy could not do, surfaced in the run summary

    def plan(self, view: ClusterView, model: str, ranges: list[tuple[int, int]]) -> tuple[int, int]:
        """(replicas, KV tokens each stage must hold) for one model."""
        mv = view.models[model]
        shapes, fit = planned_batch(view, mv, ranges, self.p.slo_headroom)  # SLO batch capped by KV fit
        batch = self.p.target_batch or fit
        # KV for every micro-batch's sequences at their full length, so the sized batch never preempts.
        kv_tokens = int(batch * len(ranges) * (mv.mean_prompt_tokens + mv.mean_output_tokens))
        if isinstance(self.p.replicas, int):
            return self.p.replicas, kv_tokens
        if isinstance(self.p.replicas, dict) and model in self.p.replicas:
            return self.p.replicas[model], kv_tokens
        rate = replica_rate(mv, shapes, batch)
        return max(1, math.ceil(self.p.fraction * mv.peak_rate / rate)), kv_tokens

    def decide(self, view: ClusterView) -> list[Action]:
        if self._placed:
            return []
        self._placed = True
        actions: list[Action] = []
        taken: set[int] = set()
        for model, mv in view.models.items():
            depth = self.p.depth(model)
            fits = fitting_depth(view, model, depth)
            if fits is None:
                self.notes.append(f"static: {model} fits no GPU at any depth")
                continue
            if fits != depth:
                self.notes.append(f"static: {model} does not fit {depth} stage(s) per GPU; using {fits}")
            ranges = mv.spec.even_split(fits)
            wanted, kv_tokens = self.plan(view, model, ranges)
            for placed in range(wanted):
                # Room for the sized batch where possible, else the minimum (one full-context request).
                launch = place_pipeline(view, model, ranges, taken, kv_tokens) or place_pipeline(
                    view, model, ranges, taken
                )
                if launch is None:
                    self.notes.append(f"static: placed {placed} of {wanted} {model} replicas; no room for more")
                    break
                actions.append(launch)
        return actions
