"""The first cost model against the measured H100 anchors (DESIGN.md) and basic physics."""

from __future__ import annotations

import pytest

from flexpipe_core.work import BatchWork

from flexpipe_sim.costmodel import CostModel, StageShape
from flexpipe_sim.hardware import LinkKind, get_gpu, link_spec
from flexpipe_sim.models import get_model


def prefill(b: int, n: int) -> BatchWork:
    return BatchWork(n_tokens=b * n, n_seqs=b, attn_pairs=b * n * (n + 1) // 2, kv_tokens=0)


def decode(b: int, ctx: int) -> BatchWork:
    return BatchWork(n_tokens=b, n_seqs=b, attn_pairs=b * ctx, kv_tokens=b * ctx)


# One Llama-2-7B layer on one H100, bf16, torch eager (DESIGN.md "Anchors"), milliseconds.
ANCHORS = [
    (prefill(1, 512), 0.38), (prefill(1, 2048), 1.37), (prefill(8, 1024), 5.55),
    (decode(1, 512), 0.42), (decode(8, 512), 0.58), (decode(32, 1024), 2.04), (decode(128, 1024), 7.24),
]


@pytest.mark.parametrize("work,ms", ANCHORS)
def test_layer_time_reproduces_measured_h100_anchors(work, ms):
    t = CostModel(get_model("llama2-7b")).layer_time(get_gpu("h100-sxm"), work)
    assert t * 1e3 == pytest.approx(ms, rel=0.10)


def test_stage_time_scales_with_layers_and_slowdown():
    cm = CostModel(get_model("llama2-7b"))
    gpu = get_gpu("a100-80gb")
    w = decode(16, 1000)
    one = cm.stage_time(StageShape(8, False, False, gpu), w)
    assert cm.stage_time(StageShape(16, False, False, gpu), w) == pytest.approx(2 * one)
    assert cm.stage_time(StageShape(8, False, False, gpu, slowdown=1.5), w) == pytest.approx(1.5 * one)
    assert cm.stage_time(StageShape(8, False, True, gpu), w) > one  # the LM head costs something


def test_decode_is_memory_bound_and_prefill_compute_bound():
    cm = CostModel(get_model("llama2-7b"))
    a100, h100 = get_gpu("a100-80gb"), get_gpu("h100-sxm")
    # decode speeds up by the HBM ratio, prefill by the FLOP/s ratio
    assert cm.layer_time(a100, decode(1, 128)) / cm.layer_time(h100, decode(1, 128)) == pytest.approx(
        h100.hbm_bytes_per_s / a100.hbm_bytes_per_s, rel=0.02)
    assert cm.layer_time(a100, prefill(4, 2048)) / cm.layer_time(h100, prefill(4, 2048)) == pytest.approx(
        h100.peak_flops / a100.peak_flops, rel=0.02)


def test_hop_time_is_latency_plus_bytes_over_bandwidth():
    cm = CostModel(get_model("opt-66b"))
    link = link_spec(LinkKind.RDMA, get_gpu("a100-80gb"))
    n = 4096
    assert cm.hop_time(link, n) == pytest.approx(link.latency_s + n * 9216 * 2 / link.bytes_per_s)
    tcp = link_spec(LinkKind.TCP, get_gpu("a100-80gb"))
    assert cm.hop_time(tcp, n) > cm.hop_time(link, n)


def test_model_shapes_match_published_sizes():
    assert get_model("llama2-7b").total_bytes / 2 == pytest.approx(6.74e9, rel=0.01)
    assert get_model("opt-66b").total_bytes / 2 == pytest.approx(66.2e9, rel=0.01)
    assert get_model("llama2-7b").kv_bytes_per_token_layer == 2 * 4096 * 2
    assert get_model("llama3-8b").kv_bytes_per_token_layer == 2 * 8 * 128 * 2  # GQA: 8 KV heads


def test_decode_pricing_gives_layer_times_bit_for_bit():
    """Run-ahead prices decode steps through CostModel.decode_layer_fn (what depends on the batch size
    taken once); it must give layer_time's floats exactly, for the roofline and for a profile, inside
    the profile's grid and beyond it (the fitted roofline, counted as an extrapolation)."""
    import random
    from pathlib import Path

    from flexpipe_sim.costmodel import ProfileCostModel
    from flexpipe_sim.profiles import load_profile

    root = Path(__file__).resolve().parents[1]
    prof = load_profile(root / "calibrate/profiles/a100-80gb-llama2-7b-vidur.json")
    gpu = get_gpu("a100-80gb")
    rng = random.Random(0)
    for cm in (CostModel(get_model("llama2-7b")), CostModel(get_model("opt-66b")),
               ProfileCostModel(get_model("llama2-7b"), prof)):
        for n in (1, 2, 5, 16, 100, 300, 5000):  # 5000: past the profile's batches
            layer = cm.decode_layer_fn(gpu, n)
            for kv in [n, n * 4096, n * 9000] + [rng.randint(n, n * 5000) for _ in range(50)]:
                assert layer(kv) == cm.layer_time(gpu, BatchWork(n, n, kv, kv, n)), (type(cm).__name__, n, kv)
