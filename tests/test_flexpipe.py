"""FlexPipe's pieces against brute force and hand-computed cases, and the policy in a full run."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexpipe_sim.engine.simulator import Simulation
from flexpipe_sim.policies.base import Launch, Refactor, Retire
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
    res = CliRunner().invoke(app, ["compare", str(path), "--policies", "static,flexpipe", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "comparison.csv")
    assert list(df.policy) == ["static", "flexpipe"]
    assert df.requests.nunique() == 1  # the same arrivals for both
    assert (tmp_path / "comparison.md").exists() and (tmp_path / "comparison.png").exists()
    assert (tmp_path / "small" / "flexpipe" / "summary.json").exists()
    bad = CliRunner().invoke(app, ["compare", str(path), "--policies", "static,nope"])
    assert bad.exit_code == 2 and "valid policies" in bad.output
