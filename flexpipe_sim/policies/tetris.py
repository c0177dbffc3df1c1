"""Tetris (Li et al., USENIX ATC '22) as a policy: serverless function autoscaling with tensor
sharing, no pipeline parallelism.

What it models (../shared/research/baselines.md §4, adapted to GPU LLM serving as FlexPipe did):
- An instance is the whole model on the fewest GPUs of one server (no specialised pipelining).
- Runtime sizing: each instance runs the largest batch whose token time stays within
  `slo_headroom` x the TPOT SLO (its batching + concurrency choice); its capacity RPS_max is the
  cost model's steady rate at that batch. Instances are added until the summed RPS_max covers
  `headroom` x the recent arrival rate, and removed when the rate has stayed lower for `keep_alive_s`.
- Tensor sharing: a new instance first goes onto GPUs that already hold the model's weights and
  maps them (`Launch.share_weights`): it pays only workspace and its KV, and starts without a
  weight load. Otherwise it cold-loads onto the server with the most free GPU memory.
- Co-located instances share the GPU's compute (the backend's per-GPU clock), which is where
  Tetris' density turns into high utilisation at modest goodput.
What it simplifies: the CPU-side runtime sharing and the /dev/shm mapping protocol are not modelled;
the attach cost is zero.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from flexpipe_core.policyapi import Action, ClusterView, Launch, ModelView, Retire, StagePlan
from .placement import min_server_depth, place_on_server, servers_of, usable_bytes
from .sizing import planned_batch, replica_rate


class TetrisParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    headroom: float = Field(1.2, ge=1, description="capacity over the recent arrival rate (not given)")
    slo_headroom: float = Field(0.5, gt=0, le=1, description="share of the SLO an instance's step may use (Tetris: e <= SLO/2 when batching)")
    keep_alive_s: float = Field(60.0, ge=0, description="excess instances are released after this long (serverless default)")
    min_instances: int = Field(0, ge=0, description="instances kept per model even when idle (scale to zero: 0)")
    max_instances: int = Field(256, ge=1, description="cap per model")


class TetrisPolicy:
    name = "tetris"

    def __init__(self, params: TetrisParams) -> None:
        self.p = params
        self.notes: list[str] = []
        self._plan: dict[str, tuple[list[tuple[int, int]], float, int] | None] = {}
        self._excess_since: dict[str, float | None] = {}

    def _plan_for(self, view: ClusterView, mv: ModelView):
        d = min_server_depth(view, mv.name)
        if d is None:
            self._note(f"tetris: {mv.name} fits on no single server; its requests wait and time out")
            return None
        ranges = mv.spec.even_split(d)
        shapes, batch = planned_batch(view, mv, ranges, self.p.slo_headroom, typical_gpu=True)  # SLO batch, KV quota fits a median GPU
        kv = int(batch * d * (mv.mean_prompt_tokens + mv.mean_output_tokens))
        return ranges, replica_rate(mv, shapes, batch), kv

    def decide(self, view: ClusterView) -> list[Action]:
        acts: list[Action] = []
        taken: set[int] = set()
        for name, mv in view.models.items():
            if name not in self._plan:
                self._plan[name] = self._plan_for(view, mv)
            if self._plan[name] is not None:
                acts += self._model(view, mv, taken)
        return acts

    def _model(self, view: ClusterView, mv: ModelView, taken: set[int]) -> list[Action]:
        ranges, rps_max, kv = self._plan[mv.name]
        p, now = self.p, view.now
        insts = [i for i in view.instances_of(mv.name) if i.state != "draining"]
        need = math.ceil(p.headroom * mv.arrival_rate / rps_max) if rps_max > 0 else 0
        target = min(p.max_instances, max(p.min_instances, need, 1 if mv.queued else 0))
        acts: list[Action] = []
        if target > len(insts):
            self._excess_since[mv.name] = None
            for _ in range(target - len(insts)):
                launch = self._share(view, mv, ranges, kv, taken) or self._cold(view, mv, ranges, kv, taken)
                if launch is None:
                    self._note(f"tetris: no room for another {mv.name} instance")
                    break
                acts.append(launch)
        elif target < len(insts):
            since = self._excess_since.get(mv.name)
            if since is None:
                since = self._excess_since[mv.name] = now
            if now - since >= p.keep_alive_s:
                ready = [i for i in insts if i.state == "ready"]
                if ready:
                    acts.append(Retire(min(ready, key=lambda i: (i.running + i.queued, -i.id)).id))
                    self._excess_since[mv.name] = now
        else:
            self._excess_since[mv.name] = None
        return acts

    def _share(self, view: ClusterView, mv: ModelView, ranges, kv: int, taken: set[int]) -> Launch | None:
        """Onto GPUs already holding this model's weights for the same ranges: map them."""
        spec, eng = mv.spec, view.engine
        by_id = {g.id: g for g in view.gpus}
        kvb = spec.kv_bytes_per_token_layer
        for inst in view.instances_of(mv.name):
            if list(inst.layer_ranges) != ranges or any(g in taken for g in inst.gpus):
                continue
            ok = all(
                (mv.name, f, e) in by_id[g].shared
                and usable_bytes(by_id[g].free_bytes, eng) >= eng.workspace_bytes + max(kv, spec.max_context) * kvb * (e - f)
                for g, (f, e) in zip(inst.gpus, ranges)
            )
            if ok:
                taken.update(inst.gpus)  # one new instance per GPU set per decision
                return Launch(mv.name, tuple(StagePlan(f, e, g) for g, (f, e) in zip(inst.gpus, ranges)), kv, True)
        return None

    def _cold(self, view: ClusterView, mv: ModelView, ranges, kv: int, taken: set[int]) -> Launch | None:
        servers = sorted(servers_of(view).items(), key=lambda kv_: (-sum(g.free_bytes for g in kv_[1]), kv_[0]))
        for _, gpus in servers:
            launch = place_on_server(view, mv.name, ranges, gpus, taken, kv)
            if launch is not None:
                return Launch(launch.model, launch.stages, kv, True)
        return None

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
