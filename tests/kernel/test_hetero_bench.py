"""bench/reconfig_bench.py --quick: the switch table is complete and consistent (not its speed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "reconfig_bench.py"


def bench():
    spec = importlib.util.spec_from_file_location("reconfig_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_table(res: dict) -> None:
    assert res["tokens_equal"] and res["all_finished"]
    assert 1 <= res["affected"] <= res["requests"]
    rows = {r["metric"]: r for r in res["table"]}
    assert set(rows) == {"downtime (ms)", "pause (ms)", "TTFT overhead (%)", "TPOT overhead (%)"}
    for r in rows.values():
        assert r["ratio"] == pytest.approx(r["value"] / r["target"])
        assert r["ok"] == (r["value"] < r["target"])
        assert bool(r["why"]) == (not r["ok"])  # every missed target says why
    assert rows["downtime (ms)"]["value"] >= rows["pause (ms)"]["value"] > 0  # the pause is one gap
    assert rows["downtime (ms)"]["target"] == 50 and rows["TPOT overhead (%)"]["target"] == 10
    links = res["links"]
    assert sum(v["kv"] for v in links.values()) == res["kv_bytes"] >= res["pause_kv_bytes"]
    assert sum(v["weights"] for v in links.values()) == res["weight_bytes"] > 0
    # default switch [0,5)A [5,8)B -> [0,3)C [3,8)A: KV flows A->C, A->A, B->A; A reuses its layers 3-4
    assert {k for k, v in links.items() if v["kv"]} == {"A->C", "A->A", "B->A"}
    assert {k for k, v in links.items() if v["weights"]} == {"host->C", "host->A", "A->A"}


def test_quick_in_process(tmp_path, capsys):
    n = torch.get_num_threads()
    try:
        out = tmp_path / "r.json"
        assert bench().main(["--quick", "--backend", "inproc", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    check_table(json.loads(out.read_text()))
    text = capsys.readouterr().out
    assert "switch table" in text and "bytes moved" in text


@pytest.mark.slow
def test_quick_worker_processes(tmp_path):
    n = torch.get_num_threads()
    try:
        out = tmp_path / "r.json"
        assert bench().main(["--quick", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    res = json.loads(out.read_text())
    check_table(res)
    # activations crossed processes: token ids in to the first stage's worker, hidden states worker to
    # worker, logits back from the last stage's (before the switch: A then B)
    traffic = res["serving_traffic"]
    assert traffic["coord->A"] > 0 and traffic["A->B"] > 0 and traffic["B->coord"] > 0


def test_bad_plans_exit_2(capsys):
    b = bench()
    assert b.main(["--quick", "--from", "0,5,9@A,B"]) == 2
    assert "must end at --layers" in capsys.readouterr().err
    assert b.main(["--quick", "--backend", "inproc", "--switch-at", "100000"]) == 2
    assert "ended before --switch-at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        b.main(["--to", "0,5@A,B"])
    assert e.value.code == 2
