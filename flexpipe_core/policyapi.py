"""What a policy sees (ClusterView) and what it may ask for (Actions).

A policy is pure decision code: `decide(view) -> list[Action]`. It never charges itself a cost,
never touches SimPy or torch, and cannot mutate the view (everything here is frozen). The backend
carries actions out and pays their costs, so every policy meets the same physics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the simulator's catalogue and cost model; core never imports them at run time
    from flexpipe_sim.costmodel import CostModel
    from flexpipe_sim.models import ModelSpec


@dataclass(frozen=True)
class GPUView:
    id: int
    server: int
    rack: int
    rdma: bool
    capacity_bytes: int
    free_bytes: int
    tenant_sm_frac: float
    models: frozenset[str]  # models with a stage on this GPU
    shared: frozenset[tuple[str, int, int]] = frozenset()  # (model, first, end) weights mappable here
    kind: str = ""  # GPU kind (hardware catalogue name); set where the cluster mixes kinds


@dataclass(frozen=True)
class InstanceView:
    id: int
    model: str
    state: str  # "loading", "ready", "refactoring", "draining"
    gpus: tuple[int, ...]
    layer_ranges: tuple[tuple[int, int], ...]
    queued: int
    running: int


@dataclass(frozen=True)
class ModelView:
    name: str
    spec: ModelSpec
    cost: CostModel  # read-only estimator; pricing a hypothetical step charges nothing
    ttft_slo_s: float
    tpot_slo_s: float
    gateway_queue: int
    peak_rate: float  # historical peak arrival rate for this model (req/s over 60 s windows)
    mean_prompt_tokens: float
    mean_output_tokens: float
    # what the gateway saw over the last `stats_window_s` (engine.stats_window_s)
    arrival_rate: float = 0.0
    arrival_cv: float = 0.0  # CV of inter-arrival times (nu_t of Eq. 4)
    rate_slope: float = 0.0  # relative change of the rate per second (d lambda / dt / lambda); 0 unless beyond 3-sigma Poisson noise
    queued: int = 0  # waiting at the gateway and in instance queues
    # the whole history the operator planned from (the trace itself): what offline planners use
    mean_rate: float = 0.0
    hist_cv: float = 0.0
    # the recent request shape (mixed-cluster simulations set them; NaN where none was seen):
    # mean prompt of arrivals and mean output of completions in the stats window
    recent_prompt_tokens: float = float("nan")
    recent_output_tokens: float = float("nan")


@dataclass(frozen=True)
class EngineLimits:
    block_size: int
    token_budget: int
    max_seqs: int
    gpu_memory_utilization: float
    workspace_bytes: int


@dataclass(frozen=True)
class ClusterView:
    now: float
    gpus: tuple[GPUView, ...]
    instances: tuple[InstanceView, ...]
    models: dict[str, ModelView]
    engine: EngineLimits
    gpu_kind: object  # hardware.GPUSpec of the cluster's GPUs
    host_cached: dict[int, frozenset[tuple[str, int, int]]] = field(default_factory=dict)  # server -> stage ranges in its host cache
    storage_bytes_per_s: float = 0.0  # cold-load rate (storage -> host), for startup estimates

    def instances_of(self, model: str) -> list[InstanceView]:
        return [i for i in self.instances if i.model == model]


@dataclass(frozen=True)
class StagePlan:
    first_layer: int
    end_layer: int  # exclusive
    gpu: int


@dataclass(frozen=True)
class Launch:
    """Start a pipeline. `kv_tokens`: KV each stage reserves (None: all that gpu_memory_utilization
    leaves of the GPU's free memory), so several models can share a GPU (MuxServe's quotas).
    `share_weights`: map the weights of an identical stage of this model already on the GPU
    instead of loading a copy (Tetris' tensor sharing); the stage then pays only workspace and KV."""

    model: str
    stages: tuple[StagePlan, ...]
    kv_tokens: int | None = None
    share_weights: bool = False


@dataclass(frozen=True)
class Retire:
    instance_id: int


@dataclass(frozen=True)
class Refactor:
    """Change a running instance's stages in flight (split, merge, move). A stage may stay on its
    GPU only if its layer range is unchanged; new stages need GPUs without this model."""

    instance_id: int
    stages: tuple[StagePlan, ...]


Action = Launch | Retire | Refactor


class Policy(Protocol):
    name: str

    def decide(self, view: ClusterView) -> list[Action]: ...
