"""Profiles in the simulator: scenarios that use them, derived profiles, the Table 2 check, errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flexpipe_sim.calibration import anchors_profile, derive, table2_check
from flexpipe_sim.cli import app
from flexpipe_core.work import BatchWork
from flexpipe_sim.costmodel import CostModel
from flexpipe_sim.hardware import get_gpu
from flexpipe_sim.models import get_model
from flexpipe_sim.profiles import Profile, load_profile, validate
from flexpipe_sim.runner import run_scenario
from flexpipe_sim.scenario import parse_scenario

from .conftest import ROOT
from .helpers import small_raw

runner = CliRunner()
PROFILES = ROOT / "calibrate" / "profiles"


def test_shipped_profiles_load_and_say_what_they_are():
    kinds = {load_profile(p).kind for p in PROFILES.glob("*.json")}
    assert {"measured", "anchors", "derived"} <= kinds
    cpu = load_profile(PROFILES / "cpu-tiny.json")
    assert cpu.kind == "measured" and cpu.gpu_kind == "cpu"


def test_anchors_profile_reproduces_the_measured_anchors():
    raw = anchors_profile()
    for a in raw["anchors"]:
        tol = 0.15 if "8 x 1024" in a["what"] else 0.06  # that one is looked up as one 8192-token prefill
        assert a["grid_ms"] == pytest.approx(a["ms"], rel=tol), a


def test_derived_profile_scales_by_spec_ratios():
    src = Profile(validate(anchors_profile(), "anchors"))
    d = Profile(validate(derive(src, "a100-80gb"), "derived"))
    assert d.kind == "derived" and d.raw["derived_from"] == src.name and d.gpu_kind == "a100-80gb"
    h100, a100 = get_gpu("h100-sxm"), get_gpu("a100-80gb")
    # batch-1 decode is weight-read bound: scales with HBM bandwidth; a big prefill with FLOP/s
    assert d.decode_layer_s(1, 128) / src.decode_layer_s(1, 128) == pytest.approx(h100.hbm_bytes_per_s / a100.hbm_bytes_per_s, rel=1e-6)
    assert d.prefill_layer_s(4096) / src.prefill_layer_s(4096) == pytest.approx(h100.peak_flops / a100.peak_flops, rel=1e-6)
    # and it agrees with the roofline on the A100 spec sheet (same efficiencies) within 10%
    rf = CostModel(get_model("llama2-7b"))
    for b, c in ((8, 512), (64, 2048)):
        w = BatchWork(b, b, b * c, b * c, b)
        assert d.decode_layer_s(b, c) == pytest.approx(rf.layer_time(a100, w), rel=0.10)


def test_table2_check_finds_the_matching_workload():
    r = table2_check(load_profile(PROFILES / "a100-80gb-opt-66b.derived.json"))
    assert r["prefill_tokens_matching"] and r["decode_batch_matching_at_4096"]
    comp = [row["ours"]["compute_ms_prefill"] for row in r["rows"]]
    assert comp[0] == pytest.approx(69.94, rel=1e-3)
    assert comp == sorted(comp, reverse=True) and comp[0] / comp[-1] == pytest.approx(8.0)  # 1/S
    loads = [row["ours"]["load_s"] for row in r["rows"]]
    assert loads == sorted(loads, reverse=True)
    res = runner.invoke(app, ["calibrate", "--check", str(PROFILES / "a100-80gb-opt-66b.derived.json")])
    assert res.exit_code == 0 and "Table 2" in res.output


def test_scenario_runs_on_a_profile_and_reports_it():
    raw = small_raw(cost={"profiles": {"llama2-7b": str(PROFILES / "a100-80gb-llama2-7b.derived.json")}})
    out = run_scenario(parse_scenario(raw), write=False)
    assert "derived from h100-sxm-llama2-7b-anchors" in out.summary["cost_models"]["llama2-7b"]
    assert out.summary["overall"]["finished"] > 0
    plain = run_scenario(parse_scenario(small_raw()), write=False)
    assert plain.summary["cost_models"]["llama2-7b"].startswith("roofline")


def test_cpu_profile_drives_a_cpu_simulation():
    shape = {"num_layers": 4, "hidden": 256, "num_heads": 8, "num_kv_heads": 4, "intermediate": 688, "vocab": 1024,
             "max_context": 2048, "dtype_bytes": 4}
    raw = small_raw(**{"cluster": {"servers": 2, "gpus": 2, "racks": 1, "gpu": "cpu", "tenant_scale": 0.0},
                       "models": [{"name": "tiny", "shape": shape, "slo": {"ttft_s": 1.0, "tpot_s": 0.05}}],
                       "workload.arrivals.rate": 2.0, "policy.params": {"stages": 2, "replicas": 1},
                       "cost": {"profiles": {"tiny": str(PROFILES / "cpu-tiny.json")}}})
    out = run_scenario(parse_scenario(raw), write=False)
    assert "cpu-tiny (measured" in out.summary["cost_models"]["tiny"]
    assert out.summary["overall"]["finished"] == out.summary["overall"]["requests"]


@pytest.mark.parametrize("case,changes,expected", [
    ("profile for another GPU", {"cluster.gpu": "h100-sxm"}, "derive one with"),
    ("profile for another model", {"models": [{"name": "llama3-8b", "slo": {"ttft_s": 2, "tpot_s": 0.1}}],
                                   "cost": {"profiles": {"llama3-8b": str(PROFILES / "a100-80gb-llama2-7b.derived.json")}}},
     "another model shape"),
])
def test_profile_mismatch_exits_2(case, changes, expected, write_scenario, tmp_path):
    raw = small_raw(cost={"profiles": {"llama2-7b": str(PROFILES / "a100-80gb-llama2-7b.derived.json")}})
    for k, v in changes.items():
        if k == "cost":
            raw["cost"] = v
        elif "." in k:
            a, b = k.split(".")
            raw[a][b] = v
        else:
            raw[k] = v
    res = runner.invoke(app, ["run", str(write_scenario(raw)), "-q", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output


def test_corrupt_profile_in_scenario_exits_2(write_scenario, tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps(anchors_profile())[:500])
    raw = small_raw(cost={"profiles": {"llama2-7b": str(bad)}})
    res = runner.invoke(app, ["run", str(write_scenario(raw)), "-q", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "corrupt or truncated" in res.output


def test_derive_command(tmp_path):
    out = tmp_path / "l40s.json"
    res = runner.invoke(app, ["calibrate", "--derive", str(PROFILES / "h100-sxm-llama2-7b.anchors.json"),
                              "--gpu", "l40s", "--out", str(out)])
    assert res.exit_code == 0, res.output
    p = load_profile(out)
    assert p.kind == "derived" and p.gpu_kind == "l40s"


def test_prefill_lookups_memoised_inside_the_grid_and_counted_beyond():
    """Profile.prefill_layer_s keeps its answers inside the measured grid (every prefill asks);
    beyond it every lookup still counts as an extrapolation (the run's notes report them)."""
    prof = load_profile(ROOT / "calibrate/profiles/a100-80gb-llama2-7b-vidur.json")
    fresh = load_profile(ROOT / "calibrate/profiles/a100-80gb-llama2-7b-vidur.json")
    n_max = float(prof.raw["prefill"]["tokens"][-1])
    for tokens in (1, 17, 300, 301.0, int(n_max)):
        first = prof.prefill_layer_s(tokens)
        assert prof.prefill_layer_s(tokens) == first == fresh.prefill_layer_s(float(tokens))
    before = prof.extrapolations
    with pytest.warns(Warning):
        prof.prefill_layer_s(2 * n_max)
    prof.prefill_layer_s(2 * n_max)
    assert prof.extrapolations == before + 2
