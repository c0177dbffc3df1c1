"""FlexPipe's parameters: every one the paper leaves out is a field with its default and reason
(also docs/parameters.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FlexPipeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    granularities: list[int] = Field([1, 2, 4, 8], description="candidate stage counts (paper: 2-32; 4/8/16/32 for OPT-66B)")
    alpha: float = Field(0.5, ge=0, le=1, description="Eq. 4 throughput vs latency weight: equal (not given)")
    sigma: float = Field(1.0, gt=0, description="Eq. 4 sensitivity to |nu_t - nu_k| (not given): one unit of CV")
    nu0: float = Field(1.0, gt=0, description="nu_k of the coarsest candidate; finer ones nu0 * (eta_k/eta_min)^2 (S ~ sqrt CV, §3.3)")
    beta1: float = Field(1.0, gt=0, description="Eq. 5 fixed coordination overhead (not given)")
    beta2: float = Field(0.05, ge=0, description="Eq. 5 overhead per stage: 5% (not given)")
    hysteresis: float = Field(0.2, ge=0, description="a new granularity must score 20% higher ...")
    patience: int = Field(15, ge=1, description="... for this many decisions in a row: one 15 s stats window at 1 s control steps (anti-oscillation)")
    dwell_s: float = Field(120.0, ge=0, description="a granularity is held this long before it may change back "
                           "(not given; anti-oscillation: refactors take ~10 s and pay weight loads)")
    surge: float = Field(0.1, ge=0, description="relative rate rise per second that triggers a finer pipeline at once "
                         "(0.1: the rate doubling within ~10 s; smaller values fire on the noise of a 15 s window)")
    always_ready: float = Field(0.3, ge=0, le=1, description="share of peak capacity (req/s) always on (paper: 30%)")
    reclaim_s: float = Field(300.0, ge=0, description="capacity idle this long is released (paper: 5 minutes)")
    headroom: float = Field(1.2, ge=1, description="capacity over the observed rate (not given)")
    slo_headroom: float = Field(0.8, gt=0, le=1, description="share of the TPOT SLO a sized batch may use")
    q_max: float = Field(64.0, gt=0, description="Eq. 11 queue capacity Q_max (not given)")
    scale_beta: float = Field(4.0, ge=0, description="Eq. 11 sigmoid beta (not given)")
    scale_gamma: float = Field(1.0, ge=0, description="Eq. 11 sigmoid gamma (not given)")
    scale_step: int = Field(2, ge=1, description="most pipelines Eq. 12 adds per decision (not given: unbounded, one "
                            "burst's queue would take the cluster before the first new pipeline reports)")
    w_t: float = Field(1.0, ge=0, description="Eq. 13 weight of recent hosting (not given)")
    w_g: float = Field(0.25, ge=0, description="Eq. 13 weight per free GPU (not given)")
    w_busy: float = Field(0.5, ge=0, description="score lost per stage still loading on a server: avoid paths with recent "
                          "scaling activity (§7; not given: two loading stages outweigh a warm cache)")
    affinity_decay: float = Field(1 / 300, ge=0, description="Eq. 13 lambda: warmth halves in ~3.5 min (not given)")
    refactor: bool = Field(True, description="refactor running pipelines (off: only new ones get the new depth)")
    use_affinity: bool = Field(True, description="Eq. 13 server choice (off: ablation)")
    gamma0: float = Field(0.25, ge=0, description="Eq. 9 gamma_0 (not given): at CV 0 sharing a GPU with our other models "
                          "costs as much as a 25% slower GPU")
    mux_alpha: float = Field(0.5, ge=0, description="Eq. 9 alpha (not given): gamma = gamma_0 (1 + alpha CV^2) passes the "
                             "whole speed term (1) at CV ~2.4, so bursty models share only when nothing else fits")
    balance: bool = Field(True, description="Eq. 8 stage balance and Eq. 2 per-GPU speeds: prefer GPUs whose tenants "
                          "leave more SM time, give a slow GPU fewer layers (off: ablation)")
    balance_eps: float = Field(0.3, ge=0, description="Eq. 8 epsilon (not given): above one layer's share of a stage at "
                               "the finest 7B candidate (4 layers, 25%), so it rejects slow GPUs, not layer granularity")
    topology: bool = Field(True, description="topology-aware stage placement (off: ablation)")
    stage_kv: Literal["all", "sized"] = Field("all", description="KV a stage reserves: all the GPU's free memory allows "
                                              "(vLLM's way) or its sized batch's (leaves room to co-locate)")
    kv_headroom: float = Field(1.0, ge=1, description="sized KV = batch x micro-batches x mean length x this: room for "
                               "the length tail (Azure conversation P90 total length is ~2x its mean)")
    min_kv_share: float = Field(0.25, gt=0, le=1, description="a pipeline whose stages cannot hold this share of its "
                                "sized batch's KV is not worth its GPUs; a candidate depth whose throughput per GPU is "
                                "under this share of the model's best is dropped (the best stays) (not given)")
    refactor_cooldown_s: float = Field(30.0, ge=0, description="at most one refactor per instance in this long")
    launch_order: Literal["eq6", "largest"] = Field("eq6", description="launches across models: Eq. 6 (floors, then "
                                                    "req/s per GB) or largest model first (first-fit decreasing; ablation)")

    def check_scenario(self, sc) -> None:
        for m in sc.models:
            n = m.spec().num_layers
            bad = [g for g in self.granularities if not 1 <= g <= min(n, sc.cluster.gpus)]
            if bad:
                raise ValueError(f"policy.params.granularities: {bad} impossible for {m.name} ({n} layers, {sc.cluster.gpus} GPUs)")
