"""A live pipeline instance: kernel stages on local devices driven by one PipelineEngine, plus what
the policy's view and the results need (state, placement, busy time)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from flexpipe_core.policyapi import StagePlan
from flexpipe_kernel.engine import PipelineEngine
from flexpipe_kernel.model import ModelArgs
from flexpipe_kernel.stage import Stage
from flexpipe_kernel.transfer import HostWeightCache
from flexpipe_sim.models import ModelSpec


def kernel_args(spec: ModelSpec) -> ModelArgs:
    """The kernel's shape for a catalogue / scenario model (decoders only: the kernel is Llama-style)."""
    if spec.kind != "decoder" or spec.mlp != "swiglu":
        raise ValueError(f"{spec.name}: the live kernel runs Llama-style decoders (swiglu); this is a {spec.kind} "
                         f"with {spec.mlp}")
    return ModelArgs(spec.hidden, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.vocab, spec.intermediate,
                     spec.max_context)


def stage_bytes(stage: Stage) -> int:
    """Weights plus the KV pool: what the stage holds on its device."""
    c = stage.cache
    return stage.weight_bytes + 2 * c.k.numel() * c.k.element_size() if c.k is not None else stage.weight_bytes


@dataclass
class LivePipeline:
    id: int
    model: str
    plan: tuple[StagePlan, ...]
    engine: PipelineEngine
    state: str = "ready"  # "ready" or "draining" (a refactor runs to completion inside one control step)
    busy_s: float = 0.0  # wall time of its stage steps (on CPU the stages of one step run one after another)
    load_s: float = 0.0
    stage_s: float = 0.0  # sum of its stage calls' own times (workers.DeviceWorkers); overlapping ones both count
    refactors: int = 0

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(s.gpu for s in self.plan)

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple((s.first_layer, s.end_layer) for s in self.plan)

    def step(self) -> None:
        t0 = time.perf_counter()
        self.engine.step()
        self.busy_s += time.perf_counter() - t0

    def bytes_on(self, gpu: int) -> int:
        return sum(stage_bytes(st) for st, p in zip(self.engine.stages, self.plan) if p.gpu == gpu)


def kv_blocks_for(kv_tokens: int, block_size: int) -> int:
    return max(2, math.ceil(kv_tokens / block_size))


def build_stages(args: ModelArgs, plan: tuple[StagePlan, ...], devices: list[str], cache: HostWeightCache,
                 kv_blocks: int, block_size: int) -> tuple[list[Stage], int, float]:
    """Stages for `plan` loaded from the host weight cache. Returns (stages, weight bytes, seconds)."""
    t0 = time.perf_counter()
    stages, nbytes = [], 0
    for p in plan:
        st, n, _ = cache.load_stage(args, p.first_layer, p.end_layer, devices[p.gpu], kv_blocks=kv_blocks,
                                    block_size=block_size, dtype=torch.float32)
        stages.append(st)
        nbytes += n
    return stages, nbytes, time.perf_counter() - t0
