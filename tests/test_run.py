"""Whole runs: conservation, determinism, the outputs a user gets, and the default scenario's golden summary."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from flexpipe_sim.cli import app
from flexpipe_sim.engine.simulator import Simulation
from flexpipe_sim.metrics import requests_frame
from flexpipe_sim.runner import run_scenario
from flexpipe_sim.scenario import load_scenario, parse_scenario

from .conftest import ROOT
from .helpers import small_raw
from .regen_golden import GOLDEN

runner = CliRunner()


def check_conservation(sim: Simulation, raw) -> None:
    df = requests_frame(raw)
    assert len(df) == len(sim.workload) and df.id.is_unique
    finished = df.drop_reason == ""
    # every request either finished with all its tokens, or is reported dropped with a reason
    assert (df.generated_tokens[finished] == df.output_tokens[finished]).all()
    assert (df.first_token_s[finished] <= df.finish_s[finished]).all()
    assert (df.arrival_s[finished] <= df.first_token_s[finished]).all()
    assert (df.drop_reason[~finished].str.len() > 0).all()
    # KV blocks: every block handed out came back; every manager is consistent
    for inst in sim.transitions.instances.values():
        for m in inst.kv.managers:
            m.check_integrity()
            assert m.allocated_total == m.freed_total
            assert m.num_free == m.num_blocks
    # GPU memory never exceeds capacity (allocations are checked when made; check the end state too)
    sim.cluster.check_ledger()
    for g in sim.cluster.gpus:
        assert g.used_bytes <= g.capacity_bytes


def test_conservation_in_a_normal_run():
    sc = parse_scenario(small_raw())
    sim = Simulation(sc)
    raw = sim.run()
    check_conservation(sim, raw)
    assert (requests_frame(raw).drop_reason == "").mean() > 0.95


def test_conservation_under_kv_pressure_with_preemption_and_drops():
    # A model with large KV per token on GPUs that leave little room for KV: preemptions happen,
    # an overload makes some requests time out, and everything still balances.
    shape = {"num_layers": 8, "hidden": 4096, "num_heads": 32, "num_kv_heads": 32, "intermediate": 11008,
             "vocab": 32000, "max_context": 2048}
    raw_sc = small_raw(**{
        "models": [{"name": "kvheavy", "shape": shape, "slo": {"ttft_s": 1.0, "tpot_s": 0.1}}],
        "cluster.gpu": "l40s", "cluster.tenant_scale": 0.0,
        "engine": {"gpu_memory_utilization": 0.14, "max_queue_wait_s": 5.0},
        "workload.arrivals.rate": 12.0, "policy.params": {"stages": 1, "replicas": 1},
    })
    sim = Simulation(parse_scenario(raw_sc))
    raw = sim.run()
    check_conservation(sim, raw)
    df = requests_frame(raw)
    assert df.preemptions.sum() > 0
    assert (df.drop_reason.str.startswith("queue timeout")).sum() > 0


def test_same_seed_same_summary_bytes(tmp_path, write_scenario):
    path = write_scenario(small_raw())
    for d in ("a", "b"):
        res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / d), "-q"])
        assert res.exit_code == 0, res.output
    a = (tmp_path / "a" / "summary.json").read_bytes()
    assert a == (tmp_path / "b" / "summary.json").read_bytes()
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "c"), "-q", "--seed", "99"])
    assert (tmp_path / "c" / "summary.json").read_bytes() != a


def test_run_writes_every_output(tmp_path, write_scenario):
    path = write_scenario(small_raw(**{"outputs": {"format": "parquet", "plots": True}}))
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "o"
    for f in ("requests.parquet", "timeseries.csv", "launches.csv", "summary.json", "run_info.json",
              "scenario.yaml", "latency_cdf.png", "gpus_over_time.png", "queue_length.png"):
        assert (out / f).stat().st_size > 0, f
    df = pd.read_parquet(out / "requests.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["requests"] == len(df)
    assert summary["overall"]["finished"] == int((df.drop_reason == "").sum())
    assert "TTFT" in res.output and "SLO attainment" in res.output
    # the written scenario reproduces the run
    again = run_scenario(load_scenario(out / "scenario.yaml"), write=False)
    assert again.summary == summary


def test_set_overrides_change_the_run(tmp_path, write_scenario):
    path = write_scenario(small_raw())
    res = runner.invoke(app, ["run", str(path), "-o", str(tmp_path / "o"), "-q", "--set", "workload.arrivals.rate=1",
                              "--set", "outputs.format=csv"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "o" / "requests.csv")
    assert 30 < len(df) < 100  # ~60 requests at 1 req/s over 60 s


def test_static_fraction_scales_provisioning():
    full = run_scenario(parse_scenario(small_raw()), write=False).summary
    less = run_scenario(parse_scenario(small_raw(**{"policy.params": {"stages": 2, "fraction": 0.5}})), write=False).summary
    assert less["gpus"]["peak_allocated"] < full["gpus"]["peak_allocated"]
    assert full["gpus"]["reservation_pct_of_peak"] == 100.0


def assert_close(got, want, path="summary"):
    """Exact for ints, strings and structure; floats to 1e-6 relative (platform libm differences)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for k in want:
            assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), path
    else:
        assert got == want, path


@pytest.mark.parametrize("name", GOLDEN)
def test_scenario_matches_its_golden_summary(name):
    sc = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    got = run_scenario(sc, write=False).summary
    golden = json.loads((ROOT / "scenarios" / "golden" / f"{name}.summary.json").read_text())
    # If a change is intended, regenerate with `python -m tests.regen_golden` and say why in the commit.
    assert_close(got, golden)


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios" / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_scenarios_run(path):
    sc = load_scenario(path, ["horizon_s=60", "drain_s=60"])
    sim = Simulation(sc)
    raw = sim.run()
    check_conservation(sim, raw)
    assert len(raw.requests) > 10
