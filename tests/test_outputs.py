"""Results folders users can trust (issue 14): checked before simulating, never mixing two runs, never
overwriting an input or escaping outputs.dir; Ctrl-C keeps what was computed, marked interrupted;
identical runs give identical deterministic files (wall clock only in run_info.json / timing.csv)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flexpipe_sim.cli import app
from flexpipe_sim.engine.simulator import Simulation
from flexpipe_sim.runner import run_scenario
from flexpipe_sim.scenario import load_scenario

from .conftest import ROOT

DEFAULT = ROOT / "scenarios" / "default.yaml"
TINY = ["--set", "horizon_s=10", "--set", "drain_s=60"]
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [*map(str, args)])


def sigint_at(monkeypatch, at_s: float, on_run: int = 1) -> None:
    """Send a real SIGINT to this process once the `on_run`-th simulation (1-based) reaches `at_s`."""
    orig, runs = Simulation.run, [0]

    def run(self, progress=None):
        runs[0] += 1
        sent = [runs[0] != on_run]

        def tick(now: float, done: int) -> None:
            if now >= at_s and not sent[0]:
                sent[0] = True
                os.kill(os.getpid(), signal.SIGINT)
            if progress:
                progress(now, done)

        return orig(self, tick)

    monkeypatch.setattr(Simulation, "run", run)


def test_scenario_name_cannot_escape_the_results_dir(tmp_path, monkeypatch):
    # outputs.dir is results/{name}: name '..' wrote the results into the working folder itself
    work = tmp_path / "repo"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("..", ".", ".hidden"):
        res = cli("run", DEFAULT, "--set", f"name={name}", *TINY, "-q")
        assert res.exit_code == 2 and "not a usable results folder name" in res.output, res.output
    assert not list(tmp_path.rglob("summary.json"))


def test_out_is_checked_before_simulating(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("simulated before checking --out")

    monkeypatch.setattr(Simulation, "run", boom)
    (tmp_path / "afile").write_text("x")
    for out, says in ((tmp_path / "afile", "is a file, not a folder"),
                      (tmp_path / "afile" / "sub", "is a file, not a folder")):
        res = cli("run", DEFAULT, *TINY, "-q", "--out", out)
        assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
    res = cli("compare", DEFAULT, "-p", "static", *TINY, "-o", tmp_path / "afile")
    assert res.exit_code == 2 and "is a file" in res.output, res.output


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs a read-only folder (/proc)")
def test_unwritable_out_is_refused_before_simulating(monkeypatch):
    monkeypatch.setattr(Simulation, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("simulated")))
    res = cli("run", DEFAULT, *TINY, "-q", "--out", "/proc/flexpipe-results")
    assert res.exit_code == 2 and "cannot write in /proc" in res.output, res.output


def test_rerun_replaces_the_previous_results_folder(tmp_path):
    out = tmp_path / "o"
    assert cli("run", DEFAULT, *TINY, "-q", "--out", out).exit_code == 0
    assert (out / "requests.parquet").exists() and (out / "latency_cdf.png").exists()
    res = cli("run", DEFAULT, *TINY, "-q", "--out", out, "--set", "outputs.format=csv", "--set", "outputs.plots=false")
    assert res.exit_code == 0, res.output
    # nothing of the first run beside the second's summary.json
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["requests.csv", "timeseries.csv", "launches.csv", "summary.json", "run_info.json",
                            "scenario.yaml"]), names
    info = json.loads((out / "run_info.json").read_text())
    assert info["status"] == "complete" and sorted(info["files"]) == names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_out_dot_never_overwrites_the_input_scenario(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scenario.yaml").write_text(DEFAULT.read_text() + "# mine\n")
    before = (tmp_path / "scenario.yaml").read_bytes()
    for extra in ([], ["--force"]):
        res = cli("run", "scenario.yaml", *TINY, "-q", "--out", ".", *extra)
        assert res.exit_code == 2 and "input scenario.yaml is inside it" in res.output, res.output
    assert (tmp_path / "scenario.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenario.yaml"]


def test_a_folder_without_results_needs_force(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = cli("run", DEFAULT, *TINY, "-q", "--out", out)
    assert res.exit_code == 2 and "--force" in res.output and not (out / "summary.json").exists(), res.output
    res = cli("run", DEFAULT, *TINY, "-q", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "keep me" and (out / "summary.json").exists()
    assert "--force" in cli("run", "--help").output


def test_concurrent_runs_into_one_folder_do_not_mix(tmp_path):
    out = tmp_path / "o"
    scs = [load_scenario(DEFAULT, ["horizon_s=10", "drain_s=60", f"outputs.format={f}", "outputs.plots=false"])
           for f in ("csv", "parquet")]
    errors: list[BaseException] = []

    def go(sc) -> None:
        try:
            run_scenario(sc, out)
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(sc,)) for sc in scs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    names = {p.name for p in out.iterdir()}
    # one run's folder, whole: never requests.csv beside requests.parquet
    assert len(names & {"requests.csv", "requests.parquet"}) == 1, names
    assert sorted(json.loads((out / "run_info.json").read_text())["files"]) == sorted(names)


def test_ctrl_c_during_a_run_keeps_partial_results(tmp_path, monkeypatch):
    sigint_at(monkeypatch, at_s=5.0)
    out = tmp_path / "o"
    res = cli("run", DEFAULT, *TINY, "-q", "--out", out)
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.output and str(out) in res.output and "Traceback" not in res.output
    info = json.loads((out / "run_info.json").read_text())
    assert info["status"] == "interrupted" and 5.0 <= info["simulated_s"] < 10
    df = pd.read_parquet(out / "requests.parquet")
    assert (df.drop_reason.str.startswith("interrupted") | df.drop_reason.str.startswith("never released")).any()
    assert json.loads((out / "summary.json").read_text())["overall"]["requests"] == len(df)


def test_ctrl_c_during_compare_keeps_finished_runs_and_report_warns(tmp_path, monkeypatch):
    sigint_at(monkeypatch, at_s=5.0, on_run=2)
    out = tmp_path / "c"  # -w 1: the patched Ctrl-C acts in this process, so the runs must run here
    res = cli("compare", DEFAULT, "-p", "static,flexpipe", *TINY, "-w", "1", "-o", out)
    assert res.exit_code == 130, res.output
    assert "1 of 2 runs finished" in res.output and "missing runs: default/flexpipe" in res.output, res.output
    info = json.loads((out / "run_info.json").read_text())
    assert info["status"] == "interrupted" and info["runs_missing"] == ["default/flexpipe"]
    assert list(pd.read_csv(out / "comparison.csv").policy) == ["static"]
    assert (out / "default" / "static" / "summary.json").exists()
    assert json.loads((out / "default" / "flexpipe" / "run_info.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    rep = cli("report", out, "-o", tmp_path / "r")
    assert rep.exit_code == 0, rep.output
    assert "incomplete set of runs" in rep.output and "default/flexpipe" in rep.output, rep.output
    md = (tmp_path / "r" / "evaluation.md").read_text()
    assert "## Incomplete set of runs" in md and "compare interrupted" in md
    assert len(pd.read_csv(tmp_path / "r" / "runs.csv")) == 1  # the partial run is left out


def test_report_warns_when_a_policy_is_missing_for_a_scenario(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("compare", DEFAULT, "-p", "static,flexpipe", *TINY, "-o", a).exit_code == 0
    assert cli("run", DEFAULT, *TINY, "-q", "--set", "name=other", "--out", b / "static").exit_code == 0
    rep = cli("report", a, b, "-o", tmp_path / "r")
    assert rep.exit_code == 0 and "scenario other: no run of flexpipe" in rep.output, rep.output


def test_identical_compares_give_identical_bytes(tmp_path):
    out = tmp_path / "c"
    deterministic = ["comparison.csv", "comparison.md", "report/runs.csv", "report/paper_vs_ours.csv",
                     "report/evaluation.md", "report/evaluation.html", "default/flexpipe/summary.json"]
    got = []
    for _ in range(2):
        res = cli("compare", DEFAULT, "-p", "static,flexpipe", *TINY, "-o", out)
        assert res.exit_code == 0, res.output
        got.append({f: (out / f).read_bytes() for f in deterministic})
    for f in deterministic:
        assert got[0][f] == got[1][f], f
    timing = pd.read_csv(out / "report" / "timing.csv")  # the wall clock, kept apart
    assert {"wall_s", "decide_ms_mean"} <= set(timing.columns) and timing.decide_ms_mean.notna().all()
    shutil.rmtree(out)


def test_ctrl_c_during_loadsweep_keeps_finished_runs(tmp_path, monkeypatch):
    sigint_at(monkeypatch, at_s=5.0, on_run=2)
    out = tmp_path / "s"
    res = cli("loadsweep", DEFAULT, "--rates", "2,4", "-p", "static", *TINY, "-o", out)
    assert res.exit_code == 130 and "missing runs: rate_4/static" in res.output, res.output
    assert json.loads((out / "run_info.json").read_text())["status"] == "interrupted"
    assert list(pd.read_csv(out / "loadsweep.csv").rate) == [2]
