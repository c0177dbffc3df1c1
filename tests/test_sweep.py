"""`flexpipe-sim sweep` and parallel `compare`: expansion, resume, failed runs, CI math, backends."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from flexpipe_sim.cli import app
from flexpipe_sim.compare import compare
from flexpipe_sim.scenario import parse_scenario
from flexpipe_sim.sweep import run_sweep
from flexpipe_sim.sweeprun import _local, read_manifest, run_point, store
from flexpipe_sim.sweepspec import SweepError, expand, load_sweep
from flexpipe_sim.sweepstats import aggregate, mean_ci, runs_frame

from .helpers import small_raw

HAS_RAY = importlib.util.find_spec("ray") is not None
POLICIES = ["static", "flexpipe"]


def _sweep(tmp, **changes) -> tuple:
    """A small sweep: the helpers' 16-GPU scenario for 60 s, 2 policies x 2 seeds (4 runs)."""
    (tmp / "small.yaml").write_text(yaml.safe_dump(small_raw()))
    spec = {"scenarios": ["small.yaml"], "policies": POLICIES, "seeds": [1, 2], "horizon_s": 60,
            "set": {"drain_s": 60}, **changes}
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec


def _numbers(rows: list[dict]) -> dict[str, dict]:
    """Manifest rows by id without wall-clock time: what must not depend on where a run ran."""
    return {r["id"]: {k: v for k, v in r.items() if k != "wall_s"} for r in rows}


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    path, _ = _sweep(tmp)
    res = run_sweep(path, tmp / "out", backend="local", workers=2, report=False)
    return path, tmp / "out", res


def test_expansion_is_the_cartesian_product(tmp_path):
    path, _ = _sweep(tmp_path, grid={"workload.arrivals.rate": [3, 6], "cluster.tenant_scale": [0.5]})
    pts = expand(load_sweep(path), tmp_path)
    assert len(pts) == 2 * 1 * 2 * 2
    assert len({p.id for p in pts}) == len(pts)
    combos = {(p.grid["workload.arrivals.rate"], p.policy, p.seed) for p in pts}
    assert combos == {(r, pol, s) for r in (3, 6) for pol in POLICIES for s in (1, 2)}
    for p in pts:  # every override landed in the scenario the worker will run
        sc = parse_scenario(p.scenario)
        assert (sc.workload.arrivals.rate, sc.cluster.tenant_scale) == (p.grid["workload.arrivals.rate"], 0.5)
        assert (sc.seed, sc.policy.name, sc.horizon_s, sc.drain_s) == (p.seed, p.policy, 60, 60)
        assert p.id == f"{sc.name}/{p.policy}"


@pytest.mark.parametrize("changes, says", [
    ({"grid": {"workload.arrivals.nope": [1]}}, "nope"),
    ({"grid": {"workload.arrivals.rate": [-1]}}, "rate"),
    ({"policies": ["static", "nosuch"]}, "unknown policy 'nosuch'"),
    ({"seeds": [1, 1]}, "appears twice"),
    ({"seeds": ["1"]}, "seeds.0"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"grid": {"workload.arrivals.rate": []}}, "no values"),
])
def test_bad_sweep_is_one_clear_error(tmp_path, changes, says):
    path, _ = _sweep(tmp_path, **changes)
    with pytest.raises(SweepError, match=None) as e:
        expand(load_sweep(path), tmp_path)
    assert says in str(e.value)
    r = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp_path / "o" / "runs.jsonl").exists()


def test_mean_ci_against_a_hand_computation():
    # x = 1, 2, 3, 4: mean 2.5, s = sqrt(5/3) = 1.290994, sem = s/2 = 0.645497, t(0.975, df=3) = 3.182446
    # (statistical tables), half-width = 3.182446 * 0.645497 = 2.054260
    m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and lo == pytest.approx(2.5 - 2.054260, abs=1e-5) and hi == pytest.approx(2.5 + 2.054260, abs=1e-5)
    assert mean_ci([7.0, 7.0, 7.0]) == (7.0, 7.0, 7.0)
    one = mean_ci([3.0, None, float("nan")])  # unmeasured values are dropped; one value has no interval
    assert one[0] == 3.0 and math.isnan(one[1]) and math.isnan(one[2])


def test_aggregate_groups_by_point_and_policy_and_skips_failed():
    rows = [{"id": f"{i}", "scenario": "s", "grid": {"k": k}, "policy": p, "seed": i, "status": "complete",
             "slo_attainment": v} for i, (k, p, v) in enumerate([(1, "a", 0.5), (1, "a", 0.7), (2, "a", 0.9)])]
    rows.append({"id": "x", "scenario": "s", "grid": {"k": 2}, "policy": "a", "seed": 9, "status": "failed",
                 "error": "boom"})
    agg = aggregate(runs_frame(rows, ["k"]), ["k"]).set_index("k")
    assert agg.loc[1, "seeds"] == 2 and agg.loc[1, "failed"] == 0
    assert agg.loc[1, "slo_attainment_mean"] == pytest.approx(0.6)
    assert (agg.loc[2, "seeds"], agg.loc[2, "failed"], agg.loc[2, "slo_attainment_mean"]) == (1, 1, 0.9)


def test_sweep_writes_each_run_and_the_aggregate(local_sweep):
    _, out, res = local_sweep
    rows = read_manifest(out)
    assert len(rows) == 4 and all(r["status"] == "complete" for r in rows)
    for r in rows:
        summary = json.loads((out / "runs" / r["id"] / "summary.json").read_text())
        assert summary["overall"]["slo_attainment"] == r["slo_attainment"]
    table = pd.read_csv(out / "sweep.csv")
    assert list(table.policy) == POLICIES and list(table.seeds) == [2, 2]
    for pol, d in pd.DataFrame(rows).groupby("policy"):
        got = table[table.policy == pol].iloc[0]
        m, lo, hi = mean_ci(d.e2e_p99_s.tolist())
        assert (got.e2e_p99_s_mean, got.e2e_p99_s_ci_lo, got.e2e_p99_s_ci_hi) == pytest.approx((m, lo, hi))
    assert (out / "sweep.png").stat().st_size > 0 and (out / "sweep.md").is_file()


def test_resume_runs_only_what_is_missing(local_sweep, tmp_path):
    path, out, _ = local_sweep
    mine = tmp_path / "out"
    shutil.copytree(out, mine)
    victim = read_manifest(mine)[1]["id"]
    shutil.rmtree(mine / "runs" / victim)
    res = run_sweep(path, mine, backend="local", workers=1, report=False)
    assert [r["id"] for r in res.ran] == [victim]
    assert _numbers(res.ran)[victim] == _numbers(read_manifest(out))[victim]  # the same numbers again
    assert len(read_manifest(mine)) == 5 and (mine / "runs" / victim / "summary.json").is_file()
    again = run_sweep(path, mine, backend="local", workers=1, report=False)
    assert again.ran == []


def test_a_crashing_run_is_recorded_and_the_others_go_on(tmp_path):
    bad = tmp_path / "bad.csv"  # exists (passes validation), fails when the run reads it
    bad.write_text("timestamp,prompt_tokens,output_tokens\nabc,1,1\n")
    arrivals = [{"kind": "gamma", "rate": 3.0, "cv": 2.0}, {"kind": "trace", "path": str(bad), "format": "generic"}]
    path, _ = _sweep(tmp_path, policies=["static"], seeds=[1], grid={"workload.arrivals": arrivals})
    res = run_sweep(path, tmp_path / "out", backend="local", workers=2, report=False)
    by = {r["grid"]["workload.arrivals"]["kind"]: r for r in read_manifest(tmp_path / "out")}
    assert by["gamma"]["status"] == "complete" and by["gamma"]["requests"] > 0
    assert by["trace"]["status"] == "failed" and "timestamp is not a number" in by["trace"]["error"]
    assert [r["id"] for r in res.failed] == [by["trace"]["id"]]
    assert list(pd.read_csv(tmp_path / "out" / "sweep.csv").failed) == [0, 1]


@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install -e '.[ray]')")
def test_ray_backend_gives_the_local_numbers(local_sweep, tmp_path):
    path, out, _ = local_sweep
    res = run_sweep(path, tmp_path / "out", backend="ray", workers=2, report=False)
    assert len(res.ran) == 4
    assert _numbers(read_manifest(tmp_path / "out")) == _numbers(read_manifest(out))


def test_ray_missing_is_exit_2(local_sweep, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    r = CliRunner().invoke(app, ["sweep", str(local_sweep[0]), "--backend", "ray", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "pip install -e '.[ray]'" in r.output


def test_compare_in_parallel_equals_sequential(tmp_path):
    sc = parse_scenario(small_raw(), "small")
    seq = compare([sc], POLICIES, tmp_path / "seq", workers=1)
    par = compare([sc], POLICIES, tmp_path / "par", workers=2)
    pd.testing.assert_frame_equal(seq, par)
    for pol in POLICIES:
        a, b = (pd.read_csv(tmp_path / d / "small" / pol / "requests.csv") for d in ("seq", "par"))
        pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "par" / "comparison.csv").read_text() == (tmp_path / "seq" / "comparison.csv").read_text()


def test_a_run_on_another_machine_brings_its_folder_back(local_sweep, tmp_path):
    """The path a Ray cluster (--address) takes: the run is written to a temporary folder on the node
    and its files travel back with the row; stored here they are the local run's files."""
    path, out, _ = local_sweep
    point = expand(load_sweep(path), path.parent)[0]
    row = run_point(point, None)
    assert "summary.json" in row["files"]
    store(tmp_path, row)
    assert "files" not in read_manifest(tmp_path)[0]
    assert _numbers(read_manifest(tmp_path)) == {point.id: _numbers(read_manifest(out))[point.id]}
    for name in ("summary.json", "requests.csv", "timeseries.csv"):
        assert (tmp_path / "runs" / point.id / name).read_bytes() == (out / "runs" / point.id / name).read_bytes()


def test_cli_resumes_and_prints_the_table(local_sweep, tmp_path):
    path, out, _ = local_sweep
    mine = tmp_path / "out"
    shutil.copytree(out, mine)
    shutil.rmtree(mine / "runs" / read_manifest(mine)[0]["id"])
    r = CliRunner().invoke(app, ["sweep", str(path), "--out", str(mine), "--workers", "1", "--no-report"])
    assert r.exit_code == 0, r.output
    assert "1 runs now, 3 kept from before" in r.output and "flexpipe" in r.output and "±" in r.output
    assert len(read_manifest(mine)) == 5
    r = CliRunner().invoke(app, ["sweep", str(path), "--out", str(mine), "--no-resume", "--no-report"])
    assert r.exit_code == 0 and "4 runs now, 0 kept" in r.output, r.output
    assert len(read_manifest(mine)) == 4  # started over: the old rows went with the old runs


def test_sweep_refuses_a_folder_that_is_not_a_sweep(local_sweep, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = CliRunner().invoke(app, ["sweep", str(local_sweep[0]), "--out", str(tmp_path), "--no-resume"])
    assert r.exit_code == 2 and "holds no sweep" in r.output and (tmp_path / "notes.txt").exists()


def _dies_on_seed_2(point, runs_dir):
    """A run whose worker process dies outright (as when the OOM killer takes it): no exception to catch."""
    if point.seed == 2:
        os._exit(3)
    return run_point(point, runs_dir)


def test_a_worker_that_dies_fails_only_its_own_run(tmp_path):
    path, _ = _sweep(tmp_path, policies=["static"])
    points = expand(load_sweep(path), tmp_path)
    rows = {r["seed"]: r for r in _local(points, str(tmp_path / "runs"), 2, task=_dies_on_seed_2)}
    assert rows[1]["status"] == "complete" and rows[1]["requests"] > 0
    assert rows[2]["status"] == "failed" and "worker died" in rows[2]["error"]


@pytest.mark.parametrize("grid", [{}, {"k": [1, 2], "m": ["a", "b"]}, {"m": ["a", "b"]}])
def test_table_and_plot_for_any_grid_shape(tmp_path, grid):
    """Two scenarios, with no grid key, a numeric one beside another, or only a non-numeric one."""
    import itertools

    from flexpipe_sim.sweepstats import plot, terminal_tables

    keys = list(grid)
    rows = [{"id": f"{n}", "scenario": sc, "grid": dict(zip(keys, vals)), "policy": pol, "seed": seed,
             "status": "complete", "slo_attainment": 0.5 + 0.1 * seed, "e2e_p99_s": 3.0 * seed,
             "goodput_rps": 1.0 + seed, "gpu_s": 100.0 * seed}
            for n, (sc, vals, pol, seed) in enumerate(itertools.product(
                ["s1", "s2"], itertools.product(*grid.values()), ["static", "flexpipe"], [1, 2, 3]))]
    agg = aggregate(runs_frame(rows, keys), keys)
    assert len(agg) == 2 * 2 * math.prod(len(v) for v in grid.values()) and set(agg.seeds) == {3}
    assert agg.slo_attainment_mean.tolist() == pytest.approx([0.7] * len(agg))
    plot(agg, keys, tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert [t.title.split("(")[1].split(")")[0] for t in terminal_tables(agg, keys, "t")] == ["s1", "s2"]
