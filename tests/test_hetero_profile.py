"""The L40S profile (calibrate/profiles/l40s-llama2-7b.derived.json): derived from Vidur's A100
measurements by the L40S spec sheet, marked so, and reproducible by the derive command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flexpipe_sim.calibration import derive
from flexpipe_sim.hardware import get_gpu
from flexpipe_sim.profiles import load_profile

L40S = "calibrate/profiles/l40s-llama2-7b.derived.json"
A100 = "calibrate/profiles/a100-80gb-llama2-7b-vidur.json"


def test_l40s_profile_is_derived_with_provenance():
    p = load_profile(L40S)
    assert p.kind == "derived" and p.gpu_kind == "l40s"
    assert p.raw["derived_from"] == "a100-80gb-llama2-7b-vidur"
    assert "spec-sheet" in p.raw["provenance"] and "public" in p.raw["cross_check"]
    assert "derived from a100-80gb-llama2-7b-vidur" in p.describe()


def test_l40s_profile_scales_the_a100_by_the_spec_sheets():
    a, l = load_profile(A100), load_profile(L40S)
    ga, gl = get_gpu("a100-80gb"), get_gpu("l40s")
    # memory-bound decode: HBM bandwidth ratio (2039 / 864 = 2.36x slower)
    da, dl = np.asarray(a.raw["decode"]["layer_s"]), np.asarray(l.raw["decode"]["layer_s"])
    assert dl / da == pytest.approx(np.full_like(da, ga.hbm_bytes_per_s / gl.hbm_bytes_per_s), rel=1e-9)
    # compute-bound prefill (4096 tokens): peak FLOP/s ratio (312 / 362: the L40S is faster)
    assert l.prefill_layer_s(4096) / a.prefill_layer_s(4096) == pytest.approx(ga.peak_flops / gl.peak_flops, rel=1e-9)
    assert gl.memory_bytes == 48 * 2**30 and gl.nvlink_bytes_per_s == 0  # 48 GB, PCIe only


def test_l40s_profile_is_what_derive_writes():
    raw = derive(load_profile(A100), "l40s")
    shipped = json.load(open(L40S))
    for key in ("prefill", "decode", "head", "links", "model", "device", "method", "derived_from", "kind"):
        assert raw[key] == shipped[key], key
