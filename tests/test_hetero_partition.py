"""Heterogeneity-aware Eq. 2 (partition.hetero_partition) against brute force, a hand-computed
A100 + L40S split, and the phase-aware plans built on it (policies/hetero_plan.py)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexpipe_sim.policies.flexpipe.partition import hetero_partition, hetero_stage_times


def _brute(t, s_p, bw, limits, mem, mode):
    """Best objective over every contiguous cut (None if none fits), computed independently."""
    n, k = len(s_p), len(t)
    total = [sum(t[s][i] + s_p[i] / bw[s] for i in range(n)) for s in range(k)]
    c = n / sum(n / x for x in total)
    best = None
    for inner in itertools.combinations(range(1, n), k - 1):
        b = (0, *inner, n)
        cuts = list(zip(b, b[1:]))
        if any(sum(mem[a:e]) > lim * (1 + 1e-12) for (a, e), lim in zip(cuts, limits)):
            continue
        times = hetero_stage_times(t, s_p, bw, cuts)
        dev = sum(abs(x - c) for x in times)
        val = (dev,) if mode == "eq2" else (max(times), dev)
        best = val if best is None or val < best else best
    return best


@st.composite
def _cases(draw):
    n = draw(st.integers(1, 7))
    k = draw(st.integers(1, min(n, 4)))
    pos = st.floats(0.1, 10.0, allow_nan=False)
    t = [[draw(pos) for _ in range(n)] for _ in range(k)]
    s_p = [draw(st.floats(0.0, 5.0)) for _ in range(n)]
    bw = [draw(st.floats(0.5, 4.0)) for _ in range(k)]
    mem = [draw(st.floats(0.5, 3.0)) for _ in range(n)]
    limits = [draw(st.floats(0.5, 12.0)) for _ in range(k)]
    return t, s_p, bw, limits, mem, draw(st.sampled_from(["eq2", "bottleneck"]))


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_hetero_partition_matches_brute_force(case):
    t, s_p, bw, limits, mem, mode = case
    want = _brute(t, s_p, bw, limits, mem, mode)
    if want is None:
        with pytest.raises(ValueError):
            hetero_partition(t, s_p, bw, limits, mem, mode=mode)
        return
    cuts = hetero_partition(t, s_p, bw, limits, mem, mode=mode)
    n = len(s_p)
    assert cuts[0][0] == 0 and cuts[-1][1] == n and all(a < b for a, b in cuts)
    assert all(x[1] == y[0] for x, y in zip(cuts, cuts[1:]))
    assert all(sum(mem[a:b]) <= lim * (1 + 1e-9) for (a, b), lim in zip(cuts, limits))
    got = _brute_value(t, s_p, bw, cuts, mode)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def _brute_value(t, s_p, bw, cuts, mode):
    n = len(s_p)
    total = [sum(t[s][i] + s_p[i] / bw[s] for i in range(n)) for s in range(len(t))]
    c = n / sum(n / x for x in total)
    times = hetero_stage_times(t, s_p, bw, cuts)
    dev = sum(abs(x - c) for x in times)
    return (dev,) if mode == "eq2" else (max(times), dev)


def test_hand_computed_a100_l40s_split():
    """Llama-2-7B's 32 layers on one A100-80GB then one L40S, a decode step (memory-bound, so a layer
    takes HBM bytes / bandwidth): per layer 1 unit on the A100 and r = 2039 / 864 = 2.3600 units on
    the L40S (spec-sheet HBM bandwidths, hardware.py). Loads left out (s_p = 0).

    Bottleneck (the pipeline's pace is its slowest stage), n_A + n_L = 32, stage times n_A and r n_L:
      n_L = 8:  max(24, 18.88) = 24
      n_L = 9:  max(23, 21.24) = 23      <- best: A100 layers 0-23, L40S 23-32
      n_L = 10: max(22, 23.60) = 23.6
    Eq. 2 (sum of |T_k - C|), C = 32 / (1 + 1/r) = 22.476:
      n_L = 9:  |23 - 22.476| + |21.240 - 22.476| = 0.524 + 1.236 = 1.760
      n_L = 10: |22 - 22.476| + |23.600 - 22.476| = 0.476 + 1.124 = 1.600   <- best: 0-22, 22-32
    The L40S gets 9 or 10 layers of 32, not 16. With its memory limited to 5 layers' worth (each
    layer 1 unit of memory, limit 5.5) both objectives give A100 0-27, L40S 27-32.
    """
    r = 2039 / 864
    t = [[1.0] * 32, [r] * 32]
    zero = [0.0] * 32
    assert hetero_partition(t, zero, [1.0, 1.0], [math.inf, math.inf], mode="bottleneck") == [(0, 23), (23, 32)]
    assert hetero_partition(t, zero, [1.0, 1.0], [math.inf, math.inf], mode="eq2") == [(0, 22), (22, 32)]
    assert hetero_stage_times(t, zero, [1.0, 1.0], [(0, 23), (23, 32)]) == pytest.approx([23.0, 9 * r])
    for mode in ("eq2", "bottleneck"):
        assert hetero_partition(t, zero, [1.0, 1.0], [math.inf, 5.5], [1.0] * 32, mode=mode) == [(0, 27), (27, 32)]


def test_equal_gpus_reduce_to_the_homogeneous_partition():
    """Equal GPUs: C is partition()'s sum(w) / K and the cut is the even one."""
    from flexpipe_sim.policies.flexpipe.partition import partition

    w = [1.0] * 12
    assert hetero_partition([w] * 3, [0.0] * 12, [1.0] * 3, [math.inf] * 3) == partition(w, [0.0] * 12, 3, 1.0, math.inf)


def test_prefill_heavy_phase_gives_the_l40s_more_layers(tmp_path):
    """The plan cuts on each kind's own cost model: an L40S (more tensor FLOP/s, 42% of the A100's
    bandwidth) takes more layers for long prompts with short outputs than for chat."""
    from flexpipe_sim.heterosim import HeteroSimulation
    from flexpipe_sim.policies.hetero_plan import plan
    from flexpipe_sim.scenario import load_scenario

    sim = HeteroSimulation(load_scenario("scenarios/hetero/phases.yaml"))
    view = sim.view()
    mv = view.models["llama2-7b"]
    chat = plan(view, mv, ("a100-80gb", "l40s"), 1155, 212)
    code = plan(view, mv, ("a100-80gb", "l40s"), 2050, 29)
    l40s_layers = lambda p: p.cuts[1][1] - p.cuts[1][0]  # noqa: E731
    assert 0 < l40s_layers(chat) < 16  # fewer layers on the slower-for-decode L40S
    assert l40s_layers(code) > l40s_layers(chat)
    # the L40S prefills a layer faster than the A100 (362 vs 312 TFLOP/s) and decodes it slower
    a_pre, l_pre = (x / n for x, n in zip(code.prefill_s, (32 - l40s_layers(code), l40s_layers(code))))
    assert l_pre < a_pre


def test_slower_link_and_smaller_memory_mean_fewer_layers():
    """Eq. 2's s_p / B per GPU: equal compute, but stage 2 loads its parameters at half the rate
    (PCIe-only L40S against an NVLink/RDMA-fed A100): per layer 1 + 1 = 2 against 1 + 2 = 3 units,
    so 12 layers split 7 + 5 (bottleneck max(14, 15) = 15; 8 + 4: max(16, 12) = 16)."""
    t = [[1.0] * 12, [1.0] * 12]
    s_p = [1.0] * 12
    assert hetero_partition(t, s_p, [1.0, 0.5], [math.inf] * 2, mode="bottleneck") == [(0, 7), (7, 12)]
    assert hetero_partition(t, s_p, [1.0, 1.0], [math.inf] * 2, mode="bottleneck") == [(0, 6), (6, 12)]
    # and memory binds before balance does: 48 of 80 GB-like limits, 1 unit a layer
    assert hetero_partition(t, [0.0] * 12, [1.0, 1.0], [80.0, 4.8], [1.0] * 12) == [(0, 8), (8, 12)]
