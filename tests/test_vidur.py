"""The external A100 profile built from Vidur's operator timings, the roofline fitted to it, and the
scenario switch `cost.engine: eager | paged` (flexpipe_sim/vidur.py, docs/profiles.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flexpipe_sim import vidur
from flexpipe_sim.cli import app
from flexpipe_sim.costmodel import CostModel
from flexpipe_sim.hardware import get_gpu
from flexpipe_sim.models import get_model
from flexpipe_sim.profiles import Profile, ProfileError, load_profile, validate
from flexpipe_sim.runner import run_scenario
from flexpipe_sim.scenario import ScenarioError, parse_scenario

from .conftest import ROOT
from .helpers import small_raw

runner = CliRunner()
SHIPPED = ROOT / vidur.PROFILE_FILE
DERIVED = ROOT / "calibrate" / "profiles" / "a100-80gb-llama2-7b.derived.json"
# Vidur's published data (read-only peer data beside the repository, as the build command names it);
# the test that rebuilds from it skips where it is absent.
VIDUR_DATA = Path(os.environ.get("FLEXPIPE_VIDUR_DATA", ROOT.parent / "shared" / "peer-data" / "vidur"))


def test_shipped_profile_is_labelled_as_measured_by_vidurs_authors():
    p = load_profile(SHIPPED)
    assert p.kind == "external" and p.gpu_kind == "a100-80gb"
    assert "Vidur's authors" in p.describe() and "not by us" in p.describe()
    assert "microsoft/vidur commit 7d47513363ec447a741ac5e47241580b47724fbf" in p.raw["source"]
    raw = json.loads(SHIPPED.read_text())
    raw.pop("provenance")
    with pytest.raises(ProfileError, match="provenance"):
        validate(raw, "x.json")


def test_profile_matches_vidurs_whole_model_step_times():
    """The audit's table (fidelity-audit.md, 'Vidur raw operators'/'Vidur predictor', 32 layers, ms)."""
    p = load_profile(SHIPPED)
    L = 32
    assert L * 1e3 * p.decode_layer_s(1, 512) == pytest.approx(9.75, rel=0.02)
    assert L * 1e3 * p.decode_layer_s(32, 1024) == pytest.approx(19.94, rel=0.06)  # raw operators: 21.04
    assert L * 1e3 * p.decode_layer_s(128, 1024) == pytest.approx(46.4, rel=0.07)
    assert L * 1e3 * p.prefill_layer_s(512) == pytest.approx(36.66, rel=0.02)
    assert L * 1e3 * p.prefill_layer_s(2048) == pytest.approx(158.9, rel=0.02)
    # and ~5x faster than our eager-derived A100 profile at batch 32 (the finding)
    eager = load_profile(DERIVED)
    assert eager.decode_layer_s(32, 1024) / p.decode_layer_s(32, 1024) > 4.5


@pytest.mark.skipif(not VIDUR_DATA.is_dir(), reason="Vidur peer data not present")
def test_builder_reproduces_the_committed_profile(tmp_path):
    out = tmp_path / "v.json"
    res = runner.invoke(app, ["calibrate", "--from-vidur", str(VIDUR_DATA), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == json.loads(SHIPPED.read_text())


def test_builder_without_vidur_tables_exits_2(tmp_path):
    res = runner.invoke(app, ["calibrate", "--from-vidur", str(tmp_path)])
    assert res.exit_code == 2 and "no Vidur A100 Llama-2-7B tables" in res.output


def test_fitted_roofline_reproduces_the_profile_grid():
    """The fit stored in the profile is the least-squares fit of its grid, and reproduces every grid
    point within 31% (the max() roofline misses the knee: big batches at short context and
    96-192-token prefills), prefill and decode up to batch 64 within 20%, RMS of log error 0.10."""
    p = load_profile(SHIPPED)
    fit = vidur.fit_roofline(p)
    stored = p.raw["roofline_fit"]
    for k in ("eff_compute", "eff_weight_bw", "eff_kv_bw"):
        assert fit[k] == pytest.approx(stored[k], abs=2e-3)
    # the audit's reading of Vidur's data: weights at ~0.68 of HBM, KV at ~0.9
    assert 0.55 < stored["eff_weight_bw"] < 0.75 and 0.75 < stored["eff_kv_bw"] < 1.0
    assert 0.45 < stored["eff_compute"] < 0.7
    cost, gpu = CostModel(get_model("llama2-7b"), vidur.roofline_from_fit(stored)), get_gpu("a100-80gb")
    works, t = vidur._grid_points(p)
    rel = np.array([cost.layer_time(gpu, w) for w in works]) / t - 1
    assert np.abs(rel).max() < 0.31
    assert np.sqrt(np.mean(np.log1p(rel) ** 2)) < 0.11
    small = [i for i, w in enumerate(works) if w.n_decode == 0 or w.n_decode <= 64]
    assert np.abs(rel[small]).max() < 0.20


def _one_a100(engine: str | None, **extra) -> dict:
    """One A100, Llama-2-7B, one 1-stage replica, Poisson 4 req/s, 512 in / 128 out."""
    raw = small_raw(**{"horizon_s": 300, "drain_s": 60,
                       "cluster": {"servers": 1, "gpus": 1, "racks": 1, "gpu": "a100-80gb", "tenant_scale": 0.0},
                       "workload": {"arrivals": {"kind": "poisson", "rate": 4.0},
                                    "lengths": {"kind": "fixed", "prompt_tokens": 512, "output_tokens": 128}},
                       "policy": {"name": "static", "params": {"stages": 1, "replicas": 1}}})
    raw["cost"] = {**({"engine": engine} if engine else {}), **extra}
    return raw


@pytest.mark.filterwarnings("ignore::flexpipe_sim.profiles.ExtrapolationWarning")
def test_paged_engine_gives_vidurs_tpot_on_one_a100():
    """Vidur on the same requests: TPOT p50 0.0135 s; our shipped eager profile: ~0.104 s."""
    paged = run_scenario(parse_scenario(_one_a100("paged")), write=False).summary
    assert "Vidur's authors" in paged["cost_models"]["llama2-7b"]
    assert paged["overall"]["finished"] == paged["overall"]["requests"]
    assert paged["overall"]["tpot_s"]["p50"] == pytest.approx(0.0135, rel=0.15)
    eager = run_scenario(parse_scenario(_one_a100(None, profiles={"llama2-7b": str(DERIVED)})), write=False).summary
    assert eager["overall"]["tpot_s"]["p50"] == pytest.approx(0.104, rel=0.2)


def test_paged_prices_other_models_with_the_fitted_roofline_and_profiles_override():
    from flexpipe_sim.engine.simulator import Simulation as Simulator

    raw = small_raw(**{"models": [{"name": "llama2-7b", "slo": {"ttft_s": 2, "tpot_s": 0.1}},
                                  {"name": "opt-66b", "slo": {"ttft_s": 5, "tpot_s": 0.2}}],
                       "cost": {"engine": "paged"}})
    sim = Simulator(parse_scenario(raw))
    desc = {m: c.describe() for m, c in sim.costs.items()}
    assert "external" in desc["llama2-7b"] and "Vidur's authors" in desc["llama2-7b"]
    assert desc["opt-66b"].startswith("roofline") and "derived from Vidur's A100 measurements" in desc["opt-66b"]
    fit = load_profile(SHIPPED).raw["roofline_fit"]
    assert sim.costs["opt-66b"].roofline.eff_weight_bw == fit["eff_weight_bw"]
    # an explicit profile still wins
    raw["cost"]["profiles"] = {"llama2-7b": str(DERIVED)}
    sim = Simulator(parse_scenario(raw))
    assert "derived from h100-sxm-llama2-7b-anchors" in sim.costs["llama2-7b"].describe()
    # eager (the default) is today's roofline
    raw.pop("cost")
    sim = Simulator(parse_scenario(raw))
    assert sim.costs["opt-66b"].describe() == "roofline (opt-66b: spec sheet x efficiencies fitted to the H100 anchors)"


def test_bad_engine_values_are_scenario_errors(write_scenario, tmp_path):
    with pytest.raises(ScenarioError, match="cost.engine"):
        parse_scenario(small_raw(cost={"engine": "vllm"}))
    with pytest.raises(ScenarioError, match="cost.engine: paged is built from Vidur's a100-80gb"):
        parse_scenario(small_raw(**{"cluster.gpu": "h100-sxm", "cost": {"engine": "paged"}}))
    # the Vidur profile named explicitly on an H100 cluster: the profile's GPU check, exit 2, no traceback
    raw = small_raw(**{"cluster.gpu": "h100-sxm", "cost": {"profiles": {"llama2-7b": str(SHIPPED)}}})
    res = runner.invoke(app, ["run", str(write_scenario(raw)), "-q", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "profile is for a100-80gb" in res.output and "Traceback" not in res.output
