"""FlexPipe's pieces against brute force and hand-computed cases, and the policy in a full run."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexpipe_sim.engine.simulator import Simulation
from flexpipe_core.policyapi import Launch, Refactor, Retire
from flexpipe_sim.policies.flexpipe.autoscale import affinity, scale_depth, slo_ok
from flexpipe_sim.policies.flexpipe.granularity import Candidate, Chooser, best, replicas, score
from flexpipe_sim.policies.flexpipe.partition import merge, objective, partition
from flexpipe_sim.scenario import parse_scenario

from .helpers import small_raw
from .test_run import check_conservation


def brute_force(t_c, s_p, k, bw, mem):
    n = len(t_c)
    best_v, best_cuts = math.inf, None
    for cut in itertools.combinations(range(1, n), k - 1):
        bounds = [0, *cut, n]
        cuts = list(zip(bounds, bounds[1:]))
        if any(sum(s_p[a:b]) > mem for a, b in cuts):
            continue
        v = objective(t_c, s_p, cuts, bw)
        if v < best_v - 1e-12:
            best_v, best_cuts = v, cuts
    return best_v, best_cuts


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_dp_partition_is_optimal_against_brute_force(data):
    n = data.draw(st.integers(2, 9))
    k = data.draw(st.integers(1, n))
    t_c = data.draw(st.lists(st.floats(0.1, 10), min_size=n, max_size=n))
    s_p = data.draw(st.lists(st.floats(1, 100), min_size=n, max_size=n))
    mem = data.draw(st.floats(50, 500))
    bw = 10.0
    want, _ = brute_force(t_c, s_p, k, bw, mem)
    if want == math.inf:
        with pytest.raises(ValueError):
            partition(t_c, s_p, k, bw, mem)
        return
    cuts = partition(t_c, s_p, k, bw, mem)
    assert objective(t_c, s_p, cuts, bw) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert cuts[0][0] == 0 and cuts[-1][1] == n and all(b == c for (_, b), (c, _) in zip(cuts, cuts[1:]))
    assert all(sum(s_p[a:b]) <= mem for a, b in cuts)


def test_uniform_layers_split_evenly_and_merges_are_unions():
    t_c, s_p = [1.0] * 32, [1.0] * 32
    finest = partition(t_c, s_p, 8, 1e9, 1e9)
    assert finest == [(4 * i, 4 * i + 4) for i in range(8)]
    assert merge(finest, t_c, s_p, 2, 1e9, 1e9) == [(0, 16), (16, 32)]
    with pytest.raises(ValueError, match="fits"):
        partition(t_c, s_p, 2, 1e9, 10.0)  # 16 layers per stage > 10 bytes allowed


def test_eq4_score_hand_computed():
    c = Candidate(stages=4, throughput=5.0, latency=2.0, nu=4.0)
    # alpha=0.5: 0.5*5/10 + 0.5*1/2 = 0.5; exp(-|2-4|/1) = e^-2
    assert score(c, cv=2.0, t_max=10.0, l_min=1.0, alpha=0.5, sigma=1.0) == pytest.approx(0.5 * math.exp(-2))
    coarse, fine = Candidate(1, 10.0, 1.0, 1.0), Candidate(4, 8.0, 1.5, 16.0)
    assert best([coarse, fine], cv=1.0, alpha=0.5, sigma=1.0) is coarse
    assert best([coarse, fine], cv=16.0, alpha=0.5, sigma=1.0) is fine


def test_eq5_replicas_hand_computed():
    c = Candidate(stages=4, throughput=6.0, latency=1.0, nu=1.0)
    # mu_k = 6 / (1 + 0.05 * 4) = 5 -> ceil(12 / 5) = 3
    assert replicas(c, demand=12.0, beta1=1.0, beta2=0.05) == 3
    assert replicas(c, demand=0.0, beta1=1.0, beta2=0.05) == 0


def test_chooser_hysteresis_and_surge():
    cands = [Candidate(1, 10.0, 1.0, 1.0), Candidate(2, 9.0, 1.1, 4.0), Candidate(4, 8.0, 1.3, 16.0)]
    ch = Chooser(cands, alpha=0.5, sigma=1.0, hysteresis=0.1, patience=3, surge=0.05)
    assert ch.update(cv=4.0, slope=0.0).stages == 1  # 1st vote for 2 stages
    assert ch.update(cv=4.0, slope=0.0).stages == 1  # 2nd
    assert ch.update(cv=4.0, slope=0.0).stages == 2  # 3rd: switch
    assert ch.update(cv=4.0, slope=0.2).stages == 4  # a surge goes finer at once
    assert ch.update(cv=1.0, slope=0.0).stages == 4  # and back only after `patience` votes


def test_eq11_eq12_eq13_hand_computed():
    # floor(8 / (1 + 4 e^{-1 * 2 * 0.5})) = floor(8 / 2.4715) = 3
    assert scale_depth(8, cv=2.0, queue=32, q_max=64, beta=4.0, gamma=1.0) == 3
    assert scale_depth(8, cv=8.0, queue=640, q_max=64, beta=4.0, gamma=1.0) == 7
    assert slo_ok(2.0, 0.5, [4.0, 4.0], queue=10, required=1.0) is True  # 1.5 * 8 / 10 = 1.2 >= 1
    assert slo_ok(2.0, 0.5, [1.0], queue=10, required=1.0) is False  # 1.5 * 1 / 10 = 0.15
    assert affinity(100.0, 100.0, 2, 1.0, 0.25, 0.01) == pytest.approx(1.5)
    assert affinity(100.0, None, 2, 1.0, 0.25, 0.01) == pytest.approx(0.5)


def test_flexpipe_policy_runs_with_invariants():
    raw_sc = small_raw(**{"policy": {"name": "flexpipe", "params": {"granularities": [1, 2, 4]}},
                          "workload.arrivals.cv": 4.0, "horizon_s": 90})
    sim = Simulation(parse_scenario(raw_sc))
    seen: list = []
    decide = sim.policy.decide
    sim.policy.decide = lambda view: seen.append(decide(view)) or seen[-1]
    raw = sim.run()
    check_conservation(sim, raw)
    acts = [a for batch in seen for a in batch]
    assert all(isinstance(a, (Launch, Retire, Refactor)) for a in acts)
    assert any(isinstance(a, Launch) for a in acts)
    # never two stages of one model on one GPU, at any launch or refactor
    for a in acts:
        if isinstance(a, (Launch, Refactor)):
            gpus = [p.gpu for p in a.stages]
            assert len(set(gpus)) == len(gpus)


def test_compare_runs_every_policy_on_the_same_arrivals(tmp_path, write_scenario):
    import pandas as pd
    from typer.testing import CliRunner

    from flexpipe_sim.cli import app

    path = write_scenario(small_raw(**{"horizon_s": 40}))
    out = tmp_path / "c"  # not tmp_path itself: it holds the scenario (a folder without results is refused)
    res = CliRunner().invoke(app, ["compare", str(path), "--policies", "static,flexpipe", "-o", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "comparison.csv")
    assert list(df.policy) == ["static", "flexpipe"]
    assert df.requests.nunique() == 1  # the same arrivals for both
    assert (out / "comparison.md").exists() and (out / "comparison.png").exists()
    assert (out / "small" / "flexpipe" / "summary.json").exists()
    bad = CliRunner().invoke(app, ["compare", str(path), "--policies", "static,nope"])
    assert bad.exit_code == 2 and "valid policies" in bad.output


# --- issue 11: capacity accounting, sizing with KV, Eqs. 2/6/8/9/12, reclamation, in-place refactor ---

import dataclasses  # noqa: E402

from flexpipe_core.policyapi import InstanceView, StagePlan  # noqa: E402
from flexpipe_sim.policies.flexpipe.policy import (  # noqa: E402
    FlexPipeParams, FlexPipePolicy, _ModelState, _Want, eq12_new)
from flexpipe_sim.policies.flexpipe.partition import rebalance, stage_times  # noqa: E402
from flexpipe_sim.policies.flexpipe.profiles import ModelProfile  # noqa: E402
from flexpipe_sim.policies.placement import place_pipeline  # noqa: E402
from flexpipe_sim.policies.sizing import (  # noqa: E402
    kv_batch, planned_batch, replica_rate, slo_batch, token_cycle, typical_shapes)

PAPER_MODELS = [
    {"name": "llama2-7b", "share": 8, "slo": {"ttft_s": 2.0, "tpot_s": 0.12}},
    {"name": "paper-21b", "share": 3, "slo": {"ttft_s": 3.0, "tpot_s": 0.4}},
    {"name": "opt-66b", "share": 1, "slo": {"ttft_s": 5.0, "tpot_s": 1.1}},
]


def _sim(**changes) -> Simulation:
    raw = small_raw(**{"models": PAPER_MODELS, "cluster.servers": 16, "cluster.gpus": 32, "cluster.tenant_scale": 0.0,
                       "policy": {"name": "flexpipe", "params": {}}, "horizon_s": 1, **changes})
    return Simulation(parse_scenario(raw))


def test_sized_batch_fits_the_kv_memory_at_every_depth():
    # 21B (46 layers, 42 GB) at one stage: the TPOT SLO allows 28 sequences, ~21 fit an 80 GB GPU.
    view = _sim().view()
    mv, eng = view.models["paper-21b"], view.engine
    length = mv.mean_prompt_tokens + mv.mean_output_tokens
    usable = view.gpu_kind.memory_bytes * eng.gpu_memory_utilization
    for depth in (1, 2, 4, 8):
        ranges = mv.spec.even_split(depth)
        shapes, b = planned_batch(view, mv, ranges, 0.8)
        assert b == min(kv_batch(view, mv, ranges), slo_batch(mv, shapes, eng.max_seqs, 0.8))
        for f, e in ranges:  # S micro-batches of b sequences, each stage its own layers
            kv = depth * b * length * mv.spec.kv_bytes_per_token_layer * (e - f)
            assert mv.spec.stage_weight_bytes(f, e) + eng.workspace_bytes + kv <= usable
    assert planned_batch(view, mv, mv.spec.even_split(1), 0.8)[1] < 25  # was 28 (SLO only)


def test_stage_kv_reservation_in_bytes_does_not_grow_with_depth():
    # A stage holds S x b sequences over L/S layers: for equal b the bytes are the same at any S.
    view = _sim().view()
    prof = ModelProfile(view.models["llama2-7b"], view, FlexPipeParams())
    spec = view.models["llama2-7b"].spec
    # tokens per micro-batch (kv_tokens / S) never grow with depth: deeper pipelines split, not multiply, KV
    per_mb = [prof.kv_tokens[g] / g for g in sorted(prof.kv_tokens)]
    assert all(b <= a * 1.01 for a, b in zip(per_mb, per_mb[1:]))
    bytes_ = {g: prof.kv_tokens[g] * spec.kv_bytes_per_token_layer * spec.num_layers / g for g in prof.kv_tokens}
    assert max(bytes_.values()) <= 1.01 * bytes_[1]  # never more than the 1-stage reservation


def test_token_cycle_has_bottleneck_and_bubbles():
    view = _sim().view()
    mv = view.models["llama2-7b"]
    one = typical_shapes(view, mv, [(0, 32)])
    eight = typical_shapes(view, mv, mv.spec.even_split(8))
    t1 = token_cycle(mv, one, 8)
    t8 = token_cycle(mv, eight, 8)
    # the last stage carries the LM head: 8 x slowest stage exceeds the sum of stage times
    assert t8 > t1
    # hops longer than a stage step leave the stages idle: the pass sets the cycle
    assert token_cycle(mv, eight, 8, hop_s=1.0) == pytest.approx(t1 + 8.0, rel=0.05)
    assert replica_rate(mv, eight, 8, hop_s=1.0) < replica_rate(mv, eight, 8)


def test_candidate_profiles_know_depth():
    view = _sim().view()
    prof = ModelProfile(view.models["opt-66b"], view, FlexPipeParams(granularities=[2, 4, 8], min_kv_share=0.01))
    mv = view.models["opt-66b"]
    # KV fit: two 66 GB stages leave room for a few sequences per micro-batch, so T_2 is far below
    # half of T_4 (the SLO alone would allow 46)...
    assert prof.by_depth[2].throughput < 0.3 * prof.by_depth[4].throughput
    # ... and under min_kv_share of the best throughput per GPU the depth is no candidate at all
    per_gpu = {g: c.throughput / g for g, c in prof.by_depth.items()}
    assert per_gpu[2] < 0.5 * max(per_gpu.values())
    assert 2 not in ModelProfile(mv, view, FlexPipeParams(granularities=[2, 4, 8], min_kv_share=0.5)).by_depth
    assert len(ModelProfile(mv, view, FlexPipeParams(granularities=[2, 4, 8], min_kv_share=1.0)).by_depth) == 1
    # L_k is the latency at each depth's own operating batch: not the same at every depth
    assert len({round(c.latency, 3) for c in prof.cands}) == len(prof.cands)
    for g, c in prof.by_depth.items():
        shapes = typical_shapes(view, mv, prof.ranges[g])
        assert c.latency > mv.mean_output_tokens * token_cycle(mv, shapes, 1)


def _policy_view(sim: Simulation, insts: tuple = (), now: float = 0.0, **model_changes):
    view = sim.view()
    models = {k: dataclasses.replace(v, **model_changes.get(k, {})) for k, v in view.models.items()}
    return dataclasses.replace(view, instances=insts, now=now, models=models)


def test_floor_counts_capacity_at_the_launched_depth():
    # OPT-66B, peak 16 req/s, the chooser at 8 stages: the 30% floor is 4.8 req/s of capacity,
    # which one 8-stage pipeline covers (Eq. 5 mu_8 ~5.6). The old rule counted the floor in
    # pipelines at the coarsest depth (4 stages) and launched them at 8: 2 pipelines, 16 GPUs.
    sim = _sim(**{"policy.params": {"granularities": [4, 8], "dwell_s": 1e9}})
    pol: FlexPipePolicy = sim.policy
    view = _policy_view(sim, **{m: {"arrival_rate": 0.0, "peak_rate": 16.0 if m == "opt-66b" else 0.0} for m in sim.specs})
    pol._models["opt-66b"] = st = _ModelState(view.models["opt-66b"], view, pol.p)
    st.chooser.current = st.by_depth[8]
    acts = [a for a in pol.decide(view) if a.model == "opt-66b"]
    floor = 0.3 * 16.0
    assert all(len(a.stages) == 8 for a in acts)
    assert len(acts) == math.ceil(floor / st.mu[8]) == 1
    assert sum(st.capacity(len(a.stages)) for a in acts) >= floor


def test_idle_capacity_is_reclaimed_at_once_after_the_window():
    sim = _sim(**{"models": PAPER_MODELS[:1], "policy.params": {"granularities": [1], "reclaim_s": 300.0}})
    pol: FlexPipePolicy = sim.policy
    insts = tuple(InstanceView(i, "llama2-7b", "ready", (i,), ((0, 32),), 0, 0) for i in range(6))
    quiet = {"llama2-7b": {"arrival_rate": 0.5, "peak_rate": 1.0}}
    retired = []
    for t in range(0, 302, 1):
        acts = pol.decide(_policy_view(sim, insts, float(t), **quiet))
        retired += [(t, a.instance_id) for a in acts if isinstance(a, Retire)]
    st = pol._models["llama2-7b"]
    keep = math.ceil(max(0.3 * 1.0, 1.2 * 0.5) / st.mu[1] - 1e-9)
    # every idle pipeline goes in one decision after 300 s, not one per window
    assert len({t for t, _ in retired}) == 1 and retired[0][0] == 300
    assert len(retired) == 6 - keep


def test_eq12_counts_initialisation_time():
    assert eq12_new(2.0, 0.0, have=1.0, mu_new=1.0, queue=10) == 4  # 2*1 + 2*n*1 >= 10
    assert eq12_new(2.0, 1.0, have=1.0, mu_new=1.0, queue=10) == 8  # new ones serve 1 s of the 2
    assert eq12_new(2.0, 5.0, have=1.0, mu_new=1.0, queue=10) == 1  # too slow to help in time: one
    assert eq12_new(2.0, 1.0, have=10.0, mu_new=1.0, queue=10) == 0


def test_eq9_is_a_penalty_not_a_ban():
    view = _sim().view()
    g0, g1 = view.gpus[0], view.gpus[1]
    shared = dataclasses.replace(g0, models=frozenset({"paper-9b"}))
    ranges = [(0, 32)]
    both = dataclasses.replace(view, gpus=(shared, g1))
    assert place_pipeline(both, "llama2-7b", ranges, set(), mux_penalty=2.0).stages[0].gpu == g1.id
    only = dataclasses.replace(view, gpus=(shared,))
    assert place_pipeline(only, "llama2-7b", ranges, set(), mux_penalty=2.0) is not None  # used when nothing else fits


def test_eq2_gives_a_slow_gpu_fewer_layers_and_eq8_bounds_imbalance():
    t_c, s_p = [1.0] * 12, [0.0] * 12
    cuts = rebalance(t_c, s_p, [1.0, 2.0], 1e9)
    assert cuts == [(0, 8), (8, 12)]  # times 8 and 8
    times = stage_times(t_c, cuts, [1.0, 2.0])
    assert max(times) == min(times)
    # memory limits still bind: the fast GPU can hold only 6 layers
    assert rebalance(t_c, s_p, [1.0, 2.0], 1e9, mem=[1.0] * 12, limits=[6.0, 100.0]) == [(0, 6), (6, 12)]
    # the policy on two GPUs, one with a tenant using all its SMs (2x slower): the slow GPU gets
    # about a third of the layers; with Eq. 8's bound at 0 and whole layers, no set passes
    sim = _sim(**{"models": PAPER_MODELS[:1]})
    view = sim.view()
    slow = dataclasses.replace(view.gpus[0], tenant_sm_frac=1.0)
    view = dataclasses.replace(view, gpus=(slow, view.gpus[1]))
    pol: FlexPipePolicy = sim.policy
    st = _ModelState(view.models["llama2-7b"], view, pol.p)
    launch = pol._place(view, view.models["llama2-7b"], st.ranges[2], set(), st)
    layers = {p.gpu: p.end_layer - p.first_layer for p in launch.stages}
    assert layers[slow.id] < 14 and sum(layers.values()) == 32  # was 16 / 16 (even split)
    strict = FlexPipePolicy(FlexPipeParams(balance_eps=0.0))
    assert strict._place(view, view.models["llama2-7b"], st.ranges[2], set(), st) is None


def test_eq6_launch_order_is_value_per_gb_not_largest_first():
    sim = _sim()
    pol: FlexPipePolicy = sim.policy
    view = _policy_view(sim)
    sts = {m: _ModelState(view.models[m], view, pol.p) for m in ("llama2-7b", "opt-66b")}
    wants = [_Want(view.models["opt-66b"], sts["opt-66b"], 4, 5.0, 0.0),
             _Want(view.models["llama2-7b"], sts["llama2-7b"], 1, 5.0, 0.0)]
    acts = pol._launch(view, wants, set())
    assert acts[0].model == "llama2-7b"  # more req/s per GB than the 66B pipeline
    # an unmet always-ready floor comes first whatever its value; floors go largest first
    wants = [_Want(view.models["opt-66b"], sts["opt-66b"], 4, 0.3, 0.3),
             _Want(view.models["llama2-7b"], sts["llama2-7b"], 1, 5.0, 0.0)]
    assert pol._launch(view, wants, set())[0].model == "opt-66b"
    wants = [_Want(view.models["llama2-7b"], sts["llama2-7b"], 1, 0.3, 0.3),
             _Want(view.models["opt-66b"], sts["opt-66b"], 4, 0.3, 0.3)]
    assert [a.model for a in pol._launch(view, wants, set())] == ["opt-66b", "llama2-7b"]


def test_refactor_keeps_the_stage_that_stays():
    # Fig. 6: a 1-stage pipeline split into 2 keeps layers 0-16 on its GPU and loads only 16-32
    sim = _sim(**{"models": PAPER_MODELS[:1]})
    tr = sim.transitions
    spec = sim.specs["llama2-7b"]
    sim.env.run(until=1)
    inst = tr.launch(Launch("llama2-7b", (StagePlan(0, 32, 0),)))
    sim.env.run(until=60)
    before = sim.cluster.gpus[0].used_bytes
    blocks_before, cap_before = inst.stages[0].kv_blocks, inst.capacity_tokens_per_s(1000.0)
    tr.refactor(Refactor(inst.id, (StagePlan(0, 16, 0), StagePlan(16, 32, 2))))
    assert tr.rejected == []
    sim.env.run(until=120)
    rec = tr.refactors[-1]
    assert rec["weight_bytes"] == spec.stage_weight_bytes(16, 32)  # only the new GPU loads
    assert rec["new_gpus"] == "0 2" and [s.gpu for s in inst.stages] == [0, 2]
    assert sim.cluster.gpus[0].used_bytes == before  # same allocation, the dropped layers became KV room
    assert inst.stages[0].kv_blocks > blocks_before and inst.kv.capacity_tokens > 0  # half the layers: more tokens
    # routing sees the new pipeline (the capacity cache was kept across the switch before)
    assert inst.capacity_tokens_per_s(1000.0) != cap_before
    # the policy plans it that way
    pol: FlexPipePolicy = sim.policy
    view = sim.view()
    st = _ModelState(view.models["llama2-7b"], view, pol.p)
    one = InstanceView(inst.id, "llama2-7b", "ready", (5,), ((0, 32),), 0, 0)
    acts = pol._refactor_one(view, view.models["llama2-7b"], st, [one], 4, set())
    assert acts and acts[0].stages[0].gpu == 5 and 5 not in [p.gpu for p in acts[0].stages[1:]]


def test_nu_is_anchored_at_the_coarsest_remaining_candidate():
    # Eq. 4's nu_k = nu0 (eta_k / eta_min)^2 with eta_min the coarsest candidate that stays; on the
    # paged engine OPT-66B's coarsest fitting depth is dropped (min_kv_share), and its 4 and 8
    # stages had nu 4 and 16 instead of 1 and 4.
    view = _sim(**{"cost": {"engine": "paged"}}).view()
    p = FlexPipeParams()
    for name, mv in view.models.items():
        cands = sorted(ModelProfile(mv, view, p).cands, key=lambda c: c.stages)
        assert cands[0].nu == pytest.approx(p.nu0), name
        for c in cands:
            assert c.nu == pytest.approx(p.nu0 * (c.stages / cands[0].stages) ** 2), name
