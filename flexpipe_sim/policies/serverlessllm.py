"""ServerlessLLM (Fu et al., OSDI '24) as a policy: serverless scale-from-zero with keep-alive,
locality-aware server choice by estimated startup time, whole model on the GPUs of one server.

What it models (../shared/research/baselines.md §1):
- Parallel config: the whole model on the fewest GPUs of *one* server it fits on (the scheduler
  checks per-node free GPUs; no cross-node parallelism), found once per model.
- Scale-out: every `scale_interval_s` (code: 10 s), if the model's waiting requests exceed
  `queue_per_instance` per instance (code: 5), the target becomes ceil(waiting / 5). A model with
  waiting requests and no instance launches one at once (scale from zero).
- Scale-in: an instance with nothing running or waiting for `keep_alive_s` is retired, down to
  zero (the keep-alive of earlier releases; the current code scales in on queue length instead).
- Server choice: minimum estimated startup t = q_s + n / b, where b is PCIe if the checkpoint is in
  the server's host memory (DRAM tier) and storage then PCIe otherwise (the multi-tier loader);
  q_s is the load time of this policy's instances still loading there (its sequential load queue).
  The backend charges the real load with the same tiers for every policy.
What it simplifies: live migration of other models' instances to free a locality-best server is
not modelled (the backend's migration moves KV, not tokens, so it would not be ServerlessLLM's);
its loader's speed-up over plain reads is not given to it (same storage rate for all policies);
requests are routed by least outstanding work, not round-robin.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from flexpipe_core.policyapi import Action, ClusterView, Launch, ModelView, Retire
from .placement import min_server_depth, place_on_server, servers_of


class ServerlessLLMParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_alive_s: float = Field(60.0, ge=0, description="idle time before an instance is released (serverless default: 60 s)")
    queue_per_instance: int = Field(5, ge=1, description="waiting requests per instance that trigger scale-out (code: 5)")
    scale_interval_s: float = Field(10.0, gt=0, description="autoscaler period (code: 10 s)")
    max_instances: int = Field(64, ge=1, description="cap per model")


class ServerlessLLMPolicy:
    name = "serverlessllm"

    def __init__(self, params: ServerlessLLMParams) -> None:
        self.p = params
        self.notes: list[str] = []
        self._depth: dict[str, int | None] = {}
        self._busy_at: dict[int, float] = {}  # instance -> last time it had work
        self._last_scale: dict[str, float] = {}
        self._load_until: dict[int, float] = {}  # server -> when its queued loads finish (estimate)

    def decide(self, view: ClusterView) -> list[Action]:
        acts: list[Action] = []
        taken: set[int] = set()
        for name, mv in view.models.items():
            if name not in self._depth:
                self._depth[name] = min_server_depth(view, name)
                if self._depth[name] is None:
                    self._note(f"serverlessllm: {name} fits on no single server; its requests wait and time out")
            if self._depth[name] is None:
                continue
            acts += self._model(view, mv, taken)
        return acts

    def _model(self, view: ClusterView, mv: ModelView, taken: set[int]) -> list[Action]:
        p, now = self.p, view.now
        insts = [i for i in view.instances_of(mv.name) if i.state != "draining"]
        for i in insts:
            if i.running or i.queued or i.state != "ready":
                self._busy_at[i.id] = now
        waiting = mv.queued
        target = len(insts)
        if waiting and not insts:
            target = 1  # scale from zero at once
        elif now - self._last_scale.get(mv.name, -math.inf) >= p.scale_interval_s:
            self._last_scale[mv.name] = now
            if waiting > p.queue_per_instance * len(insts):
                target = math.ceil(waiting / p.queue_per_instance)
        target = min(target, p.max_instances)
        acts: list[Action] = []
        for _ in range(target - len(insts)):
            launch = self._place(view, mv, taken)
            if launch is None:
                self._note(f"serverlessllm: no server with {self._depth[mv.name]} free GPU(s) for {mv.name}")
                break
            acts.append(launch)
        if target <= len(insts):
            for i in insts:
                if i.state == "ready" and now - self._busy_at.get(i.id, now) >= p.keep_alive_s:
                    acts.append(Retire(i.id))
                    self._busy_at.pop(i.id, None)
        return acts

    def _place(self, view: ClusterView, mv: ModelView, taken: set[int]) -> Launch | None:
        spec, now = mv.spec, view.now
        ranges = spec.even_split(self._depth[mv.name])
        pcie = mv.cost.host_to_gpu_bytes_per_s(view.gpu_kind)
        options = []
        for server, gpus in servers_of(view).items():
            cached = view.host_cached.get(server, frozenset())
            worst = 0.0
            for f, e in ranges:
                n = spec.stage_weight_bytes(f, e)
                t = n / pcie + (0.0 if (mv.name, f, e) in cached else n / view.storage_bytes_per_s)
                worst = max(worst, t)
            queue = max(0.0, self._load_until.get(server, 0.0) - now)
            options.append((queue + worst, server, gpus, worst))
        for est, server, gpus, load in sorted(options, key=lambda o: (o[0], o[1])):
            launch = place_on_server(view, mv.name, ranges, gpus, taken)
            if launch is not None:
                self._load_until[server] = max(self._load_until.get(server, 0.0), now) + load
                return launch
        return None

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
