"""MuxServe (Duan et al., ICML '24) as a policy: several models multiplexed on shared GPUs, placed
once for the historical peak.

What it models (../shared/research/baselines.md §3):
- Each model gets a mesh of the fewest GPUs it fits on (its pipeline over those GPUs; MuxServe's
  meshes use tensor parallelism inside a node, which fragmented 2-GPU servers rarely allow).
- Replicas per model: ceil(`fraction` x peak / replica rate), as static peak provisioning.
- Placement, MuxServe's greedy: replicas sorted by compute demand (rate x size scale) descending;
  each joins the existing unit (a set of GPUs already hosting other models) where its stages fit
  in memory and the unit's summed compute load stays within 1 + `overload` (code: 20%), choosing
  the least-loaded such unit, which pairs popular with unpopular models; otherwise it opens a new
  unit on fresh GPUs (topology-aware).
- Memory: each replica reserves weights, workspace and a KV quota sized for its batch
  (`Launch.kv_tokens`), so other models fit beside it (the unified KV pool, as fixed quotas).
- Compute: co-located stages share the GPU's clock in the backend (temporal multiplexing).
What it simplifies: MPS spatial sharing (prefill and decode jobs running concurrently at
different SM shares) is charged as turn-taking, which is pessimistic when the GPU is lightly
loaded; ADBS's adaptive KV quota exchange is not modelled (quotas stay as placed).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from flexpipe_core.policyapi import Action, ClusterView, Launch, ModelView, StagePlan
from .placement import fitting_depth, place_pipeline, stage_need_bytes, usable_bytes
from .sizing import planned_batch, replica_rate


class MuxServeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(0.75, gt=0, le=4, description="share of the peak to provision (static systems: ~75%)")
    overload: float = Field(0.2, ge=0, description="compute load a unit may carry beyond 100% (code: 20)")
    slo_headroom: float = Field(0.8, gt=0, le=1, description="share of the TPOT SLO a sized batch may use")


class MuxServePolicy:
    name = "muxserve"

    def __init__(self, params: MuxServeParams) -> None:
        self.p = params
        self.notes: list[str] = []
        self._placed = False

    def _sizing(self, view: ClusterView, mv: ModelView):
        """(ranges, replicas, compute load per replica, KV tokens) at the model's smallest depth."""
        spec = mv.spec
        d = fitting_depth(view, mv.name)
        if d is None:
            return None
        ranges = spec.even_split(d)
        shapes, b = planned_batch(view, mv, ranges, self.p.slo_headroom, typical_gpu=True)  # SLO batch, KV quota fits a median GPU
        rate = replica_rate(mv, shapes, b)
        n = max(1, math.ceil(self.p.fraction * mv.peak_rate / rate))
        load = min(1.0, mv.mean_rate / n / rate)  # share of the unit's compute one replica keeps busy
        kv = int(b * d * (mv.mean_prompt_tokens + mv.mean_output_tokens))
        return ranges, n, load, kv

    def decide(self, view: ClusterView) -> list[Action]:
        if self._placed:
            return []
        self._placed = True
        jobs = []  # (demand, model, ranges, load, kv)
        for name, mv in view.models.items():
            sz = self._sizing(view, mv)
            if sz is None:
                self.notes.append(f"muxserve: {name} fits no GPU mesh")
                continue
            ranges, n, load, kv = sz
            scale = mv.spec.stage_weight_bytes(0, mv.spec.num_layers) / 13.5e9  # 7B = 1, as rate_scale
            jobs += [(mv.mean_rate / n * scale, name, ranges, load, kv)] * n
        jobs.sort(key=lambda j: (-j[0], j[1]))
        free = {g.id: g.free_bytes for g in view.gpus}
        units: list[dict] = []  # {"gpus": [...], "load": float, "models": set}
        acts: list[Action] = []
        taken: set[int] = set()
        eng = view.engine
        for _, name, ranges, load, kv in jobs:
            spec = view.models[name].spec
            needs = [stage_need_bytes(spec, f, e, eng, kv) for f, e in ranges]
            fits = [u for u in units if len(u["gpus"]) >= len(ranges) and name not in u["models"]
                    and u["load"] + load <= 1 + self.p.overload
                    and all(usable_bytes(free[g], eng) >= n for g, n in zip(u["gpus"], needs))]
            if fits:
                u = min(fits, key=lambda u: (u["load"], len(u["gpus"])))
                gpus = u["gpus"][: len(ranges)]
                launch = Launch(name, tuple(StagePlan(f, e, g) for (f, e), g in zip(ranges, gpus)), kv)
            else:
                launch = place_pipeline(view, name, ranges, taken, kv)
                if launch is None:
                    self._note(f"muxserve: no room for another {name} replica")
                    continue
                u = {"gpus": [s.gpu for s in launch.stages], "load": 0.0, "models": set()}
                units.append(u)
                launch = Launch(name, launch.stages, kv)
            u["load"] += load
            u["models"].add(name)
            for s, n in zip(launch.stages, needs):
                free[s.gpu] -= n
            acts.append(launch)
        return acts

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
