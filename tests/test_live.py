"""The live backend (flexpipe_live): conservation across a live refactor, token equality with an
unrefactored run, results in `run`'s format, bad --devices."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from flexpipe_core.policyapi import Refactor, StagePlan  # noqa: E402
from flexpipe_live.backend import LiveBackend  # noqa: E402
from flexpipe_live.devices import LiveError, parse_devices  # noqa: E402
from flexpipe_live.runner import run_live, scaled_scenario  # noqa: E402
from flexpipe_sim.scenario import load_scenario  # noqa: E402

SCENARIO = "scenarios/live/cpu_small.yaml"
# 5 s of arrivals at 4 req/s with long outputs (requests overlap), static one-stage pipeline: ~6 s wall
SHORT = ["horizon_s=5", "drain_s=20", "workload.arrivals.rate=4", "workload.lengths.output_tokens=120",
         "engine.control_interval_s=0.25", "policy.name=static",
         "policy.params={stages: 1, replicas: 1}", "outputs.plots=false"]


class _RefactorAt:
    """The scenario's policy, plus one split of instance 0 into two stages on the first decision after
    `at_s`: a refactor while requests are in flight, at a time the test chooses."""

    def __init__(self, inner, at_s: float) -> None:
        self.inner, self.at_s, self.done, self.name = inner, at_s, False, inner.name

    def decide(self, view):
        acts = self.inner.decide(view)
        if not self.done and view.now >= self.at_s and any(i.running for i in view.instances):
            self.done = True
            acts.append(Refactor(view.instances[0].id, (StagePlan(0, 2, 0), StagePlan(2, 4, 1))))
        return acts


def _run(refactor_at: float | None):
    sc = scaled_scenario(load_scenario(SCENARIO, SHORT), 2)
    be = LiveBackend(sc, ["cpu", "cpu"])
    if refactor_at is not None:
        be.policy = _RefactorAt(be.policy, refactor_at)
    raw = be.run()
    return be, raw


def test_live_refactor_conserves_requests_and_tokens():
    be_ref, raw_ref = _run(refactor_at=2.0)
    be_plain, raw_plain = _run(refactor_at=None)
    assert len(raw_ref.refactors) == 1 and raw_plain.refactors == []
    rec = raw_ref.refactors[0]
    assert rec["old_stages"] == 1 and rec["new_stages"] == 2 and rec["pause_s"] > 0
    for raw in (raw_ref, raw_plain):
        ids = [r.id for r in raw.requests]
        assert sorted(ids) == list(range(len(be_ref.workload)))  # none lost, none twice
        for r in raw.requests:  # every request finished with all its tokens, or says why it did not
            assert (r.generated == r.output_tokens and r.drop_reason == "") or r.drop_reason
    assert all(r.drop_reason == "" for r in raw_ref.requests)
    # the refactor happened with requests in flight: some were admitted before and finished after it
    spans = [r for r in raw_ref.requests if r.admitted_s < rec["requested_s"] < r.finish_s]
    assert spans, "no request was in flight across the refactor"
    out_ref, out_plain = be_ref.outputs(), be_plain.outputs()
    assert out_ref.keys() == out_plain.keys() == {r.id for r in raw_ref.requests}
    assert out_ref == out_plain  # greedy decoding: the refactor changed no token
    assert all(len(out_ref[r.id]) == r.output_tokens for r in raw_ref.requests)


def test_live_writes_run_outputs(tmp_path):
    sc = scaled_scenario(load_scenario(SCENARIO, [*SHORT, "horizon_s=2", "outputs.plots=true"]), 2)
    res, _ = run_live(sc, ["cpu", "cpu"], tmp_path / "out")
    out = tmp_path / "out"
    for f in ("requests.csv", "timeseries.csv", "launches.csv", "summary.json", "run_info.json", "scenario.yaml"):
        assert (out / f).exists(), f
    info = json.loads((out / "run_info.json").read_text())
    assert info["status"] == "complete" and info["backend"] == "live"
    s = json.loads((out / "summary.json").read_text())
    assert s["overall"]["finished"] == s["overall"]["requests"] > 0
    import pandas as pd

    from flexpipe_sim.runner import run_scenario

    sim = run_scenario(sc, tmp_path / "sim", staged=True)
    live_cols = list(pd.read_csv(out / "requests.csv").columns)
    assert live_cols == list(pd.read_csv(tmp_path / "sim" / "requests.csv").columns)
    assert sim.summary.keys() == s.keys()
    from typer.testing import CliRunner

    from flexpipe_sim.cli import app

    r = CliRunner().invoke(app, ["report", str(out), str(tmp_path / "sim"), "-o", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert len(runs) == 2  # the live run is read as a run, beside the simulated one


@pytest.mark.parametrize("text,expected", [("cpu:0", "count must be"), ("gpu:1", "expected cpu:N"),
                                           ("cuda:0,cuda:0", "listed twice"), ("cuda:7", "not present")])
def test_bad_devices(text, expected):
    with pytest.raises(LiveError, match=expected):
        parse_devices(text)


def test_cpu_devices():
    assert parse_devices("cpu:3") == ["cpu"] * 3


def test_live_cli_bad_devices_exits_2():
    from typer.testing import CliRunner

    from flexpipe_sim.cli import app

    r = CliRunner().invoke(app, ["live", SCENARIO, "--devices", "tpu:1"])
    assert r.exit_code == 2 and "expected cpu:N" in r.output and "Traceback" not in r.output


def test_ctrl_c_writes_partial_results(tmp_path, monkeypatch):
    """Ctrl-C (the flag sigint_at_progress sets) stops the live run at a clean point; what was measured
    is written, run_info says interrupted/partial, every request is accounted for."""
    from contextlib import contextmanager

    import flexpipe_live.runner as live_runner
    from flexpipe_sim.runner import RunInterrupted

    @contextmanager
    def pressed_at_once():
        yield [True]

    monkeypatch.setattr(live_runner, "sigint_at_progress", pressed_at_once)
    sc = scaled_scenario(load_scenario(SCENARIO, [*SHORT, "horizon_s=3"]), 2)
    with pytest.raises(RunInterrupted) as e:
        run_live(sc, ["cpu", "cpu"], tmp_path / "out")
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["status"] == "interrupted" and info["partial"] is True
    reqs = e.value.output.raw.requests
    assert sorted(r.id for r in reqs) == list(range(len(reqs))) and len(reqs) > 0
    assert all(r.is_finished or r.drop_reason for r in reqs)
    assert any(r.drop_reason.startswith("never released") for r in reqs)


def test_failed_worker_requeues_its_requests():
    """A pipeline whose step raises (a dead device or worker) is reported; its unfinished requests go
    back to the gateway with their tokens and finish on the other replica; none is lost."""
    sc = scaled_scenario(load_scenario(SCENARIO, [*SHORT, "horizon_s=3", "policy.params={stages: 1, replicas: 2}"]), 2)
    be = LiveBackend(sc, ["cpu", "cpu"])
    launch = be._launch

    def launch_with_a_failing_second(a):
        launch(a)
        p = be.pipes[max(be.pipes)]
        if p.id == 1:
            run = p.engine.stage_runner

            def failing(calls):
                if any(r.generated >= 2 for slot in p.engine.slots for r in slot.running):  # mid-generation
                    raise RuntimeError("injected worker failure")
                return run(calls)

            p.engine.stage_runner = failing

    be._launch = launch_with_a_failing_second
    raw = be.run()
    assert len(be.failures) == 1 and be.failures[0]["instance"] == 1 and be.failures[0]["requeued"] >= 1
    assert any("injected worker failure" in n for n in raw.notes)
    assert sorted(r.id for r in raw.requests) == list(range(len(be.workload)))
    assert all(r.drop_reason == "" and r.generated == r.output_tokens for r in raw.requests)
    moved = [r for r in raw.requests if r.preemptions and r.instance_id == 0]
    assert len(moved) >= be.failures[0]["requeued"]
    outs = be.outputs()
    assert all(len(outs[r.id]) == r.output_tokens for r in raw.requests)


@pytest.mark.slow  # ~17 s: spawning worker processes imports torch in each
def test_device_processes_give_the_same_tokens():
    """--processes: stages in worker processes, activations over gloo; the same tokens as in-process
    (greedy, same weights from the same seed), every request finished; a refactor is refused there."""
    from flexpipe_live.procs import REFACTOR_UNSUPPORTED

    sc = scaled_scenario(load_scenario(SCENARIO, [*SHORT, "horizon_s=2", "workload.lengths.output_tokens=16",
                                                  "policy.params={stages: 2, replicas: 1}"]), 2)
    outs = []
    for processes in (True, False):
        be = LiveBackend(sc, ["cpu", "cpu"], processes=processes)
        raw = be.run()
        assert all(r.drop_reason == "" and r.generated == r.output_tokens for r in raw.requests)
        if processes:
            be.apply(Refactor(0, (StagePlan(0, 4, 0),)))  # a refactor is refused, with the reason
            assert [x["reason"] for x in raw.rejected] == [REFACTOR_UNSUPPORTED]
            assert be.procs.dead() == [0, 1]  # workers stopped at the end of the run
        outs.append(be.outputs())
    assert outs[0] == outs[1] and len(outs[0]) > 0


@pytest.mark.slow  # ~15 s: worker processes
def test_dead_device_process_is_reported_and_its_requests_requeued():
    import threading
    import time

    sc = scaled_scenario(load_scenario(SCENARIO, [*SHORT, "horizon_s=3", "policy.params={stages: 1, replicas: 2}"]), 2)
    be = LiveBackend(sc, ["cpu", "cpu"], processes=True)

    def kill_device_1_while_busy():
        while len(be.pipes) < 2 or not be.pipes[1].engine.running:
            time.sleep(0.005)
        be.procs.procs[1].kill()

    threading.Thread(target=kill_device_1_while_busy, daemon=True).start()
    raw = be.run()
    assert len(be.failures) == 1 and "device process 1" in be.failures[0]["error"], be.failures
    assert be.failures[0]["requeued"] >= 1
    assert sorted(r.id for r in raw.requests) == list(range(len(be.workload)))
    assert all(r.drop_reason == "" and r.generated == r.output_tokens for r in raw.requests)
