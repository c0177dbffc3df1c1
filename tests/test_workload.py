"""The default workload generator: Gamma arrivals with a target rate and CV, Azure LLM lengths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexpipe_sim.workload.arrivals import gamma_arrivals, poisson_arrivals
from flexpipe_sim.workload.lengths import AZURE_CODE, AZURE_CONV


@pytest.mark.parametrize("cv", [1.0, 2.0, 4.0, 8.0])
def test_gamma_hits_rate_and_cv(cv):
    rate = 20.0
    n = 100_000
    t = gamma_arrivals(rate, cv, n / rate, np.random.default_rng(int(cv)))
    iat = np.diff(t)
    # rate within 1% needs many arrivals at high CV (the count's relative sd is ~cv/sqrt(n))
    assert len(t) / (n / rate) == pytest.approx(rate, rel=max(0.01, 4 * cv / np.sqrt(n)))
    assert iat.std() / iat.mean() == pytest.approx(cv, rel=0.05)


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.5, 50), horizon=st.floats(10, 500), seed=st.integers(0, 2**31))
def test_poisson_arrivals_sorted_within_horizon(rate, horizon, seed):
    t = poisson_arrivals(rate, horizon, np.random.default_rng(seed))
    assert np.all(np.diff(t) >= 0) and (len(t) == 0 or (t[0] >= 0 and t[-1] < horizon))
    expected = rate * horizon
    assert abs(len(t) - expected) < 6 * np.sqrt(expected) + 1


# ../shared/traces/README.md: prompt mean, p50, p90, p99 and output mean, p50, p90, p99
TRACE_STATS = {
    "conv": (AZURE_CONV, (1155, 1020, 2735, 4142), (211, 129, 424, 601)),
    "code": (AZURE_CODE, (2048, 1469, 5188, 7436), (27.9, 13, 55, 251)),
}


@pytest.mark.parametrize("name", sorted(TRACE_STATS))
def test_lengths_follow_the_azure_trace(name):
    table, p_stats, o_stats = TRACE_STATS[name]
    prompt, output = table.sample(200_000, np.random.default_rng(0))
    for v, (mean, *pcts) in ((prompt, p_stats), (output, o_stats)):
        assert v.mean() == pytest.approx(mean, rel=0.04)
        for q, want in zip((50, 90, 99), pcts):
            assert np.percentile(v, q) == pytest.approx(want, rel=0.03)
    assert prompt.min() >= 1 and output.min() >= 1


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.5, 50), cv=st.floats(0.3, 6), horizon=st.floats(20, 400), seed=st.integers(0, 2**31))
def test_gamma_arrivals_sorted_and_count_near_rate(rate, cv, horizon, seed):
    t = gamma_arrivals(rate, cv, horizon, np.random.default_rng(seed))
    assert np.all(np.diff(t) >= 0) and (len(t) == 0 or (t[0] >= 0 and t[-1] < horizon))
    expected = rate * horizon
    # count variance of a renewal process ~ cv^2 * expected
    assert abs(len(t) - expected) < 8 * cv * np.sqrt(expected) + 2


def test_mmpp_mean_rate_and_burstiness():
    from flexpipe_sim.workload.arrivals import iat_cv, mmpp_arrivals, mmpp_mean_rate

    t = mmpp_arrivals([1.0, 40.0], [50.0, 5.0], 200_000, np.random.default_rng(3))
    assert len(t) / 200_000 == pytest.approx(mmpp_mean_rate([1.0, 40.0], [50.0, 5.0]), rel=0.03)
    assert iat_cv(t) > 1.5  # bursts make it far burstier than Poisson


def test_diurnal_warp_keeps_count_and_modulates_rate():
    from flexpipe_sim.workload.arrivals import diurnal_warp

    t = poisson_arrivals(50.0, 4000.0, np.random.default_rng(0))
    w = diurnal_warp(t, period_s=1000.0, amplitude=0.5)
    assert len(w) == len(t) and np.all(np.diff(w) >= 0)
    phase = (w % 1000.0) / 1000.0
    first, second = (phase < 0.5).sum(), (phase >= 0.5).sum()  # sin > 0 in the first half-period
    assert first / second == pytest.approx((1 + 0.5 * 2 / np.pi) / (1 - 0.5 * 2 / np.pi), rel=0.05)


def test_by_key_assignment_keeps_functions_whole_and_balances_shares():
    from flexpipe_sim.workload.generate import assign_by_key

    rng = np.random.default_rng(0)
    keys = np.array([f"f{i}" for i in rng.zipf(1.5, 20_000) % 200], dtype=object)
    idx = assign_by_key(keys, ["a", "b"], np.array([3.0, 1.0]))
    for k in set(keys):
        assert len(set(idx[keys == k])) == 1
    assert (idx == 0).mean() == pytest.approx(0.75, abs=0.1)
