"""Inputs that used to pass silently or mislead (issue 14): what the user is now told."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import yaml
from typer.testing import CliRunner

from flexpipe_sim.cli import app
from flexpipe_sim.feasibility import MAX_REQUESTS
from flexpipe_sim.scenario import parse_scenario
from flexpipe_sim.workload.stats import stream_stats

from .helpers import small_raw

runner = CliRunner()


def _strict_json(path) -> dict:
    def refuse(name: str):
        raise ValueError(f"{path} holds a bare {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_trace_stats_of_a_scenario_uses_the_seed(write_scenario, tmp_path):
    path = write_scenario(small_raw(horizon_s=30))

    def rows(*extra: str) -> int:
        res = runner.invoke(app, ["trace", "stats", str(path), "-o", str(tmp_path / "o"), *extra])
        assert res.exit_code == 0, res.output
        return _strict_json(tmp_path / "o" / "small.json")["rows"]

    default = rows()
    assert rows("--seed", "3") == default  # the scenario's own seed (3) by default
    assert rows("--seed", "8") != default  # was ignored: every seed gave the scenario's stream


def test_trace_stats_writes_null_not_nan_and_no_numpy_warnings(tmp_path):
    trace = tmp_path / "const.csv"
    trace.write_text("timestamp,prompt_tokens,output_tokens\n0,10,10\n1,10,11\n2,10,3\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would raise here
        st = stream_stats(np.array([0.0, 1, 2]), np.array([10, 10, 10]), np.array([10, 11, 3]))
    assert st["prompt_output_correlation"] != st["prompt_output_correlation"]  # NaN: undefined, not an error
    res = runner.invoke(app, ["trace", "stats", str(trace), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "RuntimeWarning" not in res.output
    assert _strict_json(tmp_path / "o" / "const_csv.json")["prompt_output_correlation"] is None


def test_truncated_prompts_are_reported(write_scenario, tmp_path):
    raw = small_raw(horizon_s=5, **{"workload.lengths": {"kind": "fixed", "prompt_tokens": 10**9, "output_tokens": 10}})
    res = runner.invoke(app, ["run", str(write_scenario(raw)), "-q", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "warning: llama2-7b:" in out and "were truncated; the longest had 1,000,000,000 tokens" in out
    info = json.loads((tmp_path / "o" / "run_info.json").read_text())
    assert "truncated" in info["warnings"][0]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert not any("truncated" in n for n in summary["notes"])  # summary.json stays as it was


def test_kv_that_fits_no_gpu_after_tenants_is_refused_before_simulating(write_scenario, tmp_path):
    # KV of one 4M-token request fits an empty A100-80GB (0.9 x 80 GiB) but no GPU once tenants hold memory
    shape = {"num_layers": 2, "hidden": 4096, "num_heads": 32, "num_kv_heads": 32, "intermediate": 11008,
             "vocab": 32000, "max_context": 4_000_000}
    raw = small_raw(seed=0, horizon_s=10, **{"cluster": {"servers": 2, "gpus": 4, "racks": 1},
                                             "models": [{"name": "fat", "shape": shape, "slo": {"ttft_s": 1, "tpot_s": 0.1}}],
                                             "workload.lengths": {"kind": "fixed", "prompt_tokens": 100, "output_tokens": 10}})
    res = runner.invoke(app, ["run", str(write_scenario(raw)), "-q", "--out", str(tmp_path / "o")])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "fat fits no GPU of this cluster" in out and "after other tenants" in out
    assert not (tmp_path / "o").exists()


def test_calibrate_hint_keeps_the_extra_in_brackets(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    res = runner.invoke(app, ["calibrate"])
    assert res.exit_code == 2
    assert "pip install 'flexpipe[kernel]'" in " ".join(res.output.split()), res.output


def test_the_paper_and_a_1000_gpu_hour_stay_allowed():
    paper = small_raw(horizon_s=7200, drain_s=300, **{"workload.arrivals.rate": 20.0})
    big = small_raw(horizon_s=3600, drain_s=300, **{"workload.arrivals.rate": 250.0,
                                                    "cluster": {"servers": 125, "gpus": 1000, "racks": 18}})
    for raw in (paper, big):
        parse_scenario(raw)  # no work limit hit
    assert 250 * 3600 < MAX_REQUESTS


def test_yaml_1e9_is_a_number(tmp_path):
    """PyYAML reads 1e3 as a string; an integer field then refused it ("unable to parse string")."""
    from flexpipe_sim.scenario import load_scenario

    path = tmp_path / "s.yaml"
    text = yaml.safe_dump(small_raw(), sort_keys=False).replace("seed: 3", "seed: 3e0").replace("servers: 8", "servers: 8e0")
    path.write_text(text)
    sc = load_scenario(path)
    assert (sc.seed, sc.cluster.servers) == (3, 8)
