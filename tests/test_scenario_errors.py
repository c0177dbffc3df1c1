"""Bad scenario files: one clear message naming the file and key, exit code 2, no traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flexpipe_sim.cli import app

from .helpers import small_raw

runner = CliRunner()

CASES = {
    "unknown top-level key": ({"horizn_s": 10}, "horizn_s: unknown key"),
    "unknown nested key": ({"cluster.gpu_kind": "a100-80gb"}, "cluster.gpu_kind: unknown key"),
    "negative rate": ({"workload.arrivals.rate": -3}, "workload.arrivals.gamma.rate"),
    "zero horizon": ({"horizon_s": 0}, "horizon_s"),
    "wrong type": ({"cluster.servers": "many"}, "cluster.servers"),
    "unknown GPU": ({"cluster.gpu": "v100"}, "unknown GPU kind 'v100'"),
    "more GPUs per server than exist": ({"cluster.gpus": 100, "cluster.servers": 4}, "max_gpus_per_server"),
    "fewer GPUs than servers": ({"cluster.gpus": 3, "cluster.servers": 4}, "cannot populate"),
    "unknown model": ({"models": [{"name": "gpt-9", "slo": {"ttft_s": 1, "tpot_s": 0.1}}]}, "unknown model 'gpt-9'"),
    "model that fits on no GPU": (
        {"models": [{"name": "big", "slo": {"ttft_s": 1, "tpot_s": 0.1},
                     "shape": {"num_layers": 4, "hidden": 65536, "num_heads": 64, "num_kv_heads": 64,
                               "intermediate": 262144, "vocab": 32000, "max_context": 2048}}]},
        "cannot fit on any",
    ),
    "unknown policy": ({"policy": {"name": "magic"}}, "valid policies: alpaserve, flexpipe, hetero_phase, muxserve, serverlessllm, static, tetris"),
    "unknown policy parameter": ({"policy": {"name": "static", "params": {"stagez": 2}}}, "policy.params.stagez"),
    "more stages than layers": ({"policy": {"name": "static", "params": {"stages": 64}}}, "cannot make 64 stages"),
    "missing SLO": ({"models": [{"name": "llama2-7b"}]}, "models.0.slo: Field required"),
    "negative CV": ({"workload.arrivals.cv": -1}, "workload.arrivals.gamma.cv"),
    "unknown arrival kind": ({"workload.arrivals": {"kind": "weibull", "rate": 1}}, "workload.arrivals"),
    "missing trace file": ({"workload.arrivals": {"kind": "trace", "path": "nope.csv"}}, "no such file or folder: nope.csv"),
    "bad output format": ({"outputs.format": "xlsx"}, "outputs.format"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_scenario_exits_2_with_a_clear_message(case, write_scenario, tmp_path):
    changes, expected = CASES[case]
    path = write_scenario(small_raw(**changes))
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert expected in res.output, res.output
    assert str(path) in res.output  # the message names the file
    assert not (tmp_path / "out").exists()


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    for path, expected in ((bad, "not valid YAML"), (tmp_path / "nope.yaml", "no such scenario file")):
        res = runner.invoke(app, ["run", str(path)])
        assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output


def test_bad_set_override(write_scenario):
    path = write_scenario(small_raw())
    res = runner.invoke(app, ["run", str(path), "--set", "workload.arrivals.rate=-1"])
    assert res.exit_code == 2 and "workload.arrivals.gamma.rate" in res.output
    res = runner.invoke(app, ["run", str(path), "--set", "workload.rate"])
    assert res.exit_code == 2 and "expected key=value" in res.output
