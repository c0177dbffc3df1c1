"""Mixed-cluster runs (heterosim.py), hetero_phase's switches and what they cost (switchcost.py):
bytes recorded are the bytes moved, downtime is consistent with the pause and the link, no request
is lost, and the summary/CSV carry it all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flexpipe_sim.engine.refactor import WATCH_S
from flexpipe_sim.hardware import LinkKind, link_spec
from flexpipe_sim.scenario import ScenarioError, load_scenario, parse_scenario
from flexpipe_sim.switchcost import TARGET_DOWNTIME_S, token_gap

SCENARIO = "scenarios/hetero/phases.yaml"
SHORT = ["horizon_s=300", "drain_s=60", "workload.lengths.phases.0.duration_s=90",
         "workload.lengths.phases.1.duration_s=90"]


@pytest.fixture(scope="module")
def run():
    from flexpipe_sim.runner import run_scenario

    sc = load_scenario(SCENARIO, SHORT)
    return run_scenario(sc, write=False)


def test_mixed_cluster_has_both_kinds_and_their_links():
    from flexpipe_sim.heterosim import HeteroSimulation

    sim = HeteroSimulation(load_scenario(SCENARIO))
    cl = sim.cluster
    kinds = [g.spec.name for g in cl.gpus]
    assert kinds == ["a100-80gb"] * 4 + ["l40s"] * 4
    assert cl.link_between(0, 1).kind is LinkKind.NVLINK  # A100 server
    assert cl.link_between(4, 5).kind is LinkKind.PCIE  # L40S server: PCIe only
    assert cl.link_between(0, 4).kind is LinkKind.RDMA
    assert cl.link_between(0, 6).kind is LinkKind.TCP  # the L40S server without RDMA
    assert {g.kind for g in sim.view().gpus} == {"a100-80gb", "l40s"}
    # stage times come from each kind's own profile
    assert "l40s-llama2-7b-derived" in sim.costs["llama2-7b"].describe()


def test_switches_happen_across_kinds(run):
    raw = run.raw
    assert len(raw.refactors) >= 2
    kinds = {p["kinds"] for p in raw.plans}
    assert any("l40s" in k for k in kinds) and any("a100-80gb" in k for k in kinds)
    assert {p["phase"] for p in raw.plans} == {"prefill", "decode"}


def test_recorded_bytes_are_the_bytes_moved(run):
    raw = run.raw
    spec = raw.scenario.models[0].spec()
    kvb = spec.kv_bytes_per_token_layer
    for rf in raw.refactors:
        assert rf["kv_bytes"] == sum(rf["_kv_bytes_by_link"].values())
        old = set(rf["old_gpus"].split())
        fresh = [tuple(map(int, r.split("-"))) for r, g in zip(rf["new_layers"].split(), rf["new_gpus"].split())
                 if g not in old]
        # weights: exactly the fresh stages' (a stage that stays keeps its weights)
        assert rf["weight_bytes"] == sum(spec.stage_weight_bytes(f, e) for f, e in fresh)
        # KV: every token computed by the pause, of every layer that changed GPU, was copied once at least
        moved_layers = sum(e - f for f, e in fresh)
        assert rf["kv_bytes"] >= rf["kv_tokens_at_pause"] * kvb * moved_layers
        assert rf["kv_bytes"] % kvb == 0


def test_downtime_is_consistent_with_pause_and_link(run):
    raw = run.raw
    for rf, row in zip(raw.refactors, raw.switches):
        down = row["downtime_s"]
        assert down >= 0
        # nothing is produced between the drain and the switch: the final copy is inside the downtime
        assert down >= rf["final_copy_s"] - WATCH_S
        assert down >= rf["pause_s"] - rf["drain_s"] - WATCH_S
        assert row["restart_s"] >= 0 and down >= row["restart_s"] - WATCH_S
        # the final copy took its bytes' time over the link it used (one link kind): the new stages
        # copy in parallel, so between bytes / (stages x rate) and bytes / rate (+ latencies)
        links = rf["_kv_bytes_by_link"]
        fresh = len(set(rf["new_gpus"].split()) - set(rf["old_gpus"].split()))
        if len(links) == 1 and rf["final_kv_bytes"] > 0:
            (kind,) = links
            rate = link_spec(LinkKind(kind), raw.cluster.gpus[0].spec, raw.scenario.cluster.network_gbps).bytes_per_s
            assert rf["final_copy_s"] >= rf["final_kv_bytes"] / (fresh * rate)
            assert rf["final_copy_s"] <= rf["final_kv_bytes"] / rate + 1e-3
        assert row["downtime_target_met"] == (down < TARGET_DOWNTIME_S)
        if not row["downtime_target_met"]:
            assert "downtime" in row["why"]


def test_no_request_lost_across_switches(run):
    raw = run.raw
    reqs = {r.id: r for r in raw.requests}
    assert len(reqs) == len(raw.requests)
    assert all(r.is_done for r in raw.requests)
    for rf in raw.refactors:
        for i in rf["_inflight_ids"]:
            assert reqs[i].is_finished, f"request {i}, in flight at a switch, did not finish"
    assert sum(1 for r in raw.requests if r.drop_reason) == 0


def test_overheads_join_the_no_switch_run_by_request_id(run):
    raw = run.raw
    reqs = {r.id: r for r in raw.requests}
    for row, rf in zip(raw.switches, raw.refactors):
        assert row["n_compared"] == len(rf["_inflight_ids"])  # every one finished in both runs
        if any(reqs[i].output_tokens >= 2 for i in rf["_inflight_ids"]):
            assert not math.isnan(row["tpot_overhead"])
    sw = run.summary["switches"]
    assert sw["count"] == len(raw.refactors)
    assert sw["downtime_s_max"] == pytest.approx(max(r["downtime_s"] for r in raw.switches), abs=1e-6)
    assert len(sw["failures"]) == sum(1 for r in raw.switches if r["why"])


def test_token_gap():
    # tokens every 10 ms, a pause at 0.1 s, drain tokens until 0.12, the switch at 0.2, next at 0.21
    times = list(np.arange(0.01, 0.105, 0.01)) + [0.12, 0.21, 0.22]
    down, normal, restart = token_gap(times, 0.1, 0.2)
    assert down == pytest.approx(0.09)
    assert normal == pytest.approx(0.01)
    assert restart == pytest.approx(0.01)
    assert math.isnan(token_gap([0.01], 0.1, 0.2)[0])  # no token after the switch: unknown


def test_switches_written(tmp_path):
    from flexpipe_sim.runner import run_scenario

    sc = load_scenario(SCENARIO, ["horizon_s=200", "drain_s=30", "workload.lengths.phases.0.duration_s=60",
                                  "workload.lengths.phases.1.duration_s=60"])
    res = run_scenario(sc, tmp_path / "out")
    import pandas as pd

    sw = pd.read_csv(tmp_path / "out" / "switches.csv")
    assert len(sw) == res.summary["switches"]["count"] == len(res.raw.refactors)
    assert {"downtime_s", "ttft_overhead", "tpot_overhead", "kv_links", "weight_source", "why"} <= set(sw.columns)
    assert len(pd.read_csv(tmp_path / "out" / "plans.csv")) >= 1
    # the evaluation report (`flexpipe-sim report`) shows every switch with its targets and why
    from flexpipe_sim.evaluation import write_report

    write_report([tmp_path / "out"], tmp_path / "report")
    md = (tmp_path / "report" / "evaluation.md").read_text()
    assert "## Pipeline switches" in md and "Pipeline switches" in (tmp_path / "report" / "evaluation.html").read_text()
    rep = pd.read_csv(tmp_path / "report" / "switches.csv")
    assert len(rep) == len(sw)
    assert np.allclose(rep.downtime_ms, (1e3 * sw.downtime_s).round(1))
    assert (rep.why.fillna("") == sw.why.fillna("")).all()


def _raw(**mix_changes):
    import yaml

    raw = yaml.safe_load(open(SCENARIO))
    raw["cost"] = {}
    for k, v in mix_changes.items():
        raw["cluster"][k] = v
    return raw


@pytest.mark.parametrize("change, key", [
    ({"gpus": 9}, "cluster.gpus"),
    ({"servers": 5}, "cluster.servers"),
    ({"gpu": "h100-sxm"}, "cluster.gpu"),
    ({"mix": [{"gpu": "l40s", "servers": 4, "gpus_per_server": 2, "intra_server_link": "nvlink"}]}, "cluster.mix"),
])
def test_bad_mix_names_the_key(change, key):
    with pytest.raises(ScenarioError, match=key.replace(".", r"\.")):
        parse_scenario(_raw(**change), "s.yaml")


def test_hetero_phase_kinds_must_be_the_clusters():
    raw = _raw()
    raw["policy"]["params"]["kinds"] = ["h100-sxm"]
    with pytest.raises(ScenarioError, match=r"policy\.params\.kinds"):
        parse_scenario(raw, "s.yaml")
    del raw["cluster"]["mix"]
    raw["cluster"].update(servers=4, gpus=8)
    raw["policy"]["params"]["kinds"] = ["l40s"]
    with pytest.raises(ScenarioError, match=r"policy\.params\.kinds"):
        parse_scenario(raw, "s.yaml")


def test_phased_lengths_follow_the_arrival_phase():
    from flexpipe_sim.workload.generate import phase_of, phased_lengths

    sc = parse_scenario({**_raw(), "workload": {"arrivals": {"kind": "poisson", "rate": 5.0}, "lengths": {
        "kind": "phased", "phases": [
            {"lengths": {"prompt_tokens": 100, "output_tokens": 7}, "duration_s": 10},
            {"lengths": {"prompt_tokens": 3000, "output_tokens": 2}, "duration_s": 5}]}}}, "s.yaml")
    t = np.array([0.0, 9.99, 10.0, 14.9, 15.0, 26.0])
    assert phase_of(sc.workload.lengths, t).tolist() == [0, 0, 1, 1, 0, 1]
    p, o = phased_lengths(sc.workload.lengths, t, np.random.default_rng(0))
    assert p.tolist() == [100, 100, 3000, 3000, 100, 3000] and o.tolist() == [7, 7, 2, 2, 7, 2]


def test_same_seed_same_switches():
    from flexpipe_sim.runner import run_scenario

    args = ["horizon_s=200", "drain_s=30", "workload.lengths.phases.0.duration_s=60",
            "workload.lengths.phases.1.duration_s=60"]
    a = run_scenario(load_scenario(SCENARIO, args), write=False)
    b = run_scenario(load_scenario(SCENARIO, args), write=False)
    assert a.summary["switches"] == b.summary["switches"] and a.summary["switches"]["count"] >= 1
