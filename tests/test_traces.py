"""Trace loaders against the bundled files (statistics from traces/README.md), replay transforms,
and clear errors for malformed input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from typer.testing import CliRunner

from flexpipe_sim.cli import app
from flexpipe_sim.paths import traces_dir
from flexpipe_sim.workload.arrivals import iat_cv, rescale_rate, reshape_cv
from flexpipe_sim.workload.lengths import load_servegen_lengths
from flexpipe_sim.workload.loaders import TraceError, load_trace
from flexpipe_sim.workload.stats import stream_stats

T = traces_dir()
runner = CliRunner()


@pytest.mark.parametrize(
    "rel,rows,cv,idc10,out_p50",
    [
        ("azure_llm_2023/AzureLLMInferenceTrace_conv.csv.gz", 19_366, 1.09, 3.86, 129),
        ("azure_llm_2023/AzureLLMInferenceTrace_code.csv.gz", 8_819, 13.2, 71.6, 13),
        ("mooncake/conversation_trace.jsonl.gz", 12_031, 3.03, 2.10, 350),
        ("mooncake/synthetic_trace.jsonl.gz", 3_993, 1.01, 1.18, 69),
    ],
)
def test_llm_traces_match_published_statistics(rel, rows, cv, idc10, out_p50):
    tr = load_trace(T / rel)
    st = stream_stats(tr.arrival_s, tr.prompt_tokens, tr.output_tokens)
    assert st["rows"] == rows
    assert st["iat_cv"] == pytest.approx(cv, abs=0.01 * max(1, cv))
    assert st["idc_10s"] == pytest.approx(idc10, rel=0.03)
    assert st["output_tokens"]["p50"] == out_p50
    assert np.all(np.diff(tr.arrival_s) >= 0) and tr.arrival_s[0] == 0


def test_azure_functions_counts_expand_to_every_invocation():
    tr = load_trace(T / "azure_functions_2019_invitro_sample/1350_inv.csv.gz", rng=np.random.default_rng(0))
    assert len(tr) == 927_272
    assert len(set(tr.key)) == 1_350
    per_min = np.bincount((tr.arrival_s // 60).astype(int))
    assert per_min.mean() == pytest.approx(644, rel=0.01)
    assert per_min.max() / per_min.mean() == pytest.approx(6.25, rel=0.03)
    top = load_trace(T / "azure_functions_2019_invitro_sample/1350_inv.csv.gz", top=10, expand="equidistant")
    assert len(set(top.key)) == 10 and len(top) < len(tr)


def test_azure_functions_fast_parse_equals_row_by_row(tmp_path):
    """pandas' parse of the counts gives the row-by-row parse's names and counts; where a file is
    off (a ragged row, a fraction, a negative, a word) it declines and the row-by-row parse runs."""
    import csv
    import io

    from flexpipe_sim.workload import loaders

    path = traces_dir() / "azure_functions_2019_invitro_sample/1350_inv.csv.gz"
    text = loaders._read_text(path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    names, m = loaders._counts_by_row(path, reader, header)
    fast = loaders._counts_fast(text, len(header))
    assert fast is not None and fast[0] == names and np.array_equal(fast[1], m) and m.shape == (1350, 1440)
    head = "HashFunction,HashOwner,HashApp,1,2\n"
    assert loaders._counts_fast(head + "f,o,a,1,2\n", 5)[1].tolist() == [[1, 2]]
    for bad in ["f,o,a,1\n", "f,o,a,1,2.5\n", "f,o,a,1,-2\n", "f,o,a,1,x\n", "f,o,a,1,2,3\n", ""]:
        assert loaders._counts_fast(head + bad, 5) is None, bad


def test_servegen_clients_give_the_published_mean_rate():
    tr = load_trace(T / "servegen/data/reason/deepseek-r1", rng=np.random.default_rng(0))
    assert len(tr) / 86_400 == pytest.approx(16.0, rel=0.05)  # README: aggregate mean 16.0 req/s
    assert len(set(tr.key)) <= 73
    pmf = load_servegen_lengths(T / "servegen/data/reason/deepseek-r1/chunk-1-dataset.json.gz")
    p, o = pmf.sample(10_000, np.random.default_rng(0))
    assert p.min() >= 1 and o.min() >= 1 and abs(pmf.prompt_probs.sum() - 1) < 1e-9


def test_time_scaled_replay_keeps_the_cv_and_hits_the_rate():
    t = load_trace(T / "azure_llm_2023/AzureLLMInferenceTrace_code.csv.gz").arrival_s
    s = rescale_rate(t, 20.0)
    assert iat_cv(s) == pytest.approx(iat_cv(t), rel=1e-9)
    assert (len(s) - 1) / s[-1] == pytest.approx(20.0, rel=1e-9)


@pytest.mark.parametrize("target", [1.0, 2.0, 4.0, 8.0])
def test_reshaped_replay_hits_the_target_cv_and_keeps_the_mean(target):
    t = load_trace(T / "azure_llm_2023/AzureLLMInferenceTrace_conv.csv.gz").arrival_s
    r = reshape_cv(t, target)
    assert iat_cv(r) == pytest.approx(target, rel=1e-3)
    assert r[-1] == pytest.approx(t[-1], rel=1e-9)  # same mean IAT, same span
    assert len(r) == len(t)


def test_convert_round_trip(tmp_path):
    src = T / "azure_llm_2023/AzureLLMInferenceTrace_code.csv.gz"
    dst = tmp_path / "code.csv.gz"
    res = runner.invoke(app, ["trace", "convert", str(src), str(dst)])
    assert res.exit_code == 0, res.output
    a, b = load_trace(src), load_trace(dst)
    assert len(a) == len(b)
    np.testing.assert_allclose(a.arrival_s, b.arrival_s, atol=1e-6)
    assert (a.prompt_tokens == b.prompt_tokens).all() and (a.output_tokens == b.output_tokens).all()
    # a trace without lengths gets them from a table, and keeps its function ids as the model column
    res = runner.invoke(app, ["trace", "convert", str(T / "azure_functions_2019_invitro_sample/1350_inv.csv.gz"),
                              str(tmp_path / "fn.csv")])
    assert res.exit_code == 0, res.output
    assert load_trace(tmp_path / "fn.csv").key is not None


def test_trace_stats_command_writes_plot_and_json(tmp_path):
    res = runner.invoke(app, ["trace", "stats", str(T / "mooncake/synthetic_trace.jsonl.gz"), "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "IAT CV" in res.output
    assert list(tmp_path.glob("*.png")) and list(tmp_path.glob("*.json"))


# --- malformed input: file and line in the message, exit 2, no traceback --------------------------

BAD = {
    "missing column": ("t.csv", "timestamp,prompt_tokens\n1,2\n", "missing column(s) output_tokens", 1),
    "non-numeric field": ("t.csv", "timestamp,prompt_tokens,output_tokens\n0,5,7\n1,five,7\n", "prompt_tokens is not a number", 3),
    "unsorted timestamps": ("t.csv", "timestamp,prompt_tokens,output_tokens\n0,5,7\n9,5,7\n3,5,7\n", "timestamps go backwards", 4),
    "negative timestamp": ("t.csv", "timestamp,prompt_tokens,output_tokens\n-1,5,7\n", "negative timestamp", 2),
    "ragged row": ("t.csv", "timestamp,prompt_tokens,output_tokens\n0,5\n", "expected 3 fields", 2),
    "empty file": ("t.csv", "", "empty file", None),
    "bad json line": ("t.jsonl", '{"timestamp": 0, "input_length": 3, "output_length": 4}\n{oops\n', "not JSON", 2),
    "json missing field": ("t.jsonl", '{"timestamp": 0, "input_length": 3}\n', "missing field 'output_length'", 1),
    "azure llm bad date": ("AzureLLMInferenceTrace_x.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,3,4\n", "not a date-time", 2),
    "functions bad count": ("x_inv.csv", "HashFunction,HashOwner,HashApp,1,2\nf,o,a,1,x\n", "not a number", 2),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_traces_name_file_and_line(case, tmp_path):
    name, text, expected, line = BAD[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError) as e:
        load_trace(path)
    msg = str(e.value)
    assert expected in msg and str(path) in msg
    if line is not None:
        assert f"{path}:{line}:" in msg
    res = runner.invoke(app, ["trace", "stats", str(path), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output


def test_truncated_gzip(tmp_path):
    data = gzip.compress(b"timestamp,prompt_tokens,output_tokens\n" + b"0,1,2\n" * 5000)
    path = tmp_path / "t.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match="truncated or corrupt gzip"):
        load_trace(path)


def test_malformed_trace_in_a_scenario_exits_2(tmp_path, write_scenario):
    from .helpers import small_raw

    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,prompt_tokens,output_tokens\n0,5,7\n1,5,-3\n")
    path = write_scenario(small_raw(**{"workload.arrivals": {"kind": "trace", "path": str(bad)},
                                       "workload.lengths": "from-trace"}))
    res = runner.invoke(app, ["run", str(path), "-q", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and f"{bad}:3:" in res.output and "Traceback" not in res.output
