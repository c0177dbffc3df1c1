"""Running a sweep's points on a backend, storing each as it finishes, resuming what is done.

Layout of a sweep folder (`--out`):
  sweep.yaml            the sweep file as given (for the record)
  runs/<point id>/      each run's results folder, as `flexpipe-sim run` writes it; the id is
                        <scenario>_<grid values>_s<seed>/<policy> (sweepspec.expand)
  runs.jsonl            the manifest: one JSON row per finished run (status complete or failed,
                        the error of a failed one, wall seconds, the metrics sweepstats aggregates)
A resumed sweep (the default) skips every point whose last manifest row is `complete` and whose
folder still holds its summary.json; failed points and points without a folder run again.

Backends: `local` runs points in a process pool (sweeppool.py); `ray` runs them as Ray tasks, on
a local Ray started with num_cpus=workers, or on the cluster at `address`, whose nodes write each
run to a temporary folder and send its files back with the row (the nodes need flexpipe installed,
and any trace file a scenario names at the same path). Both call `run_point`, so both give the
same numbers for the same seeds (the simulator is deterministic given the scenario and seed).
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator

from .sweeppool import stoppable_pool, stopped
from .sweepspec import Point

MANIFEST = "runs.jsonl"
RUNS = "runs"
# (manifest column, summary section, key, sub-key): the metrics a sweep aggregates over seeds
METRICS = [("slo_attainment", "overall", "slo_attainment", None),
           ("ttft_p50_s", "overall", "ttft_s", "p50"), ("ttft_p99_s", "overall", "ttft_s", "p99"),
           ("tpot_p50_s", "overall", "tpot_s", "p50"), ("tpot_p99_s", "overall", "tpot_s", "p99"),
           ("e2e_p50_s", "overall", "e2e_s", "p50"), ("e2e_p99_s", "overall", "e2e_s", "p99"),
           ("goodput_rps", "overall", "goodput_rps", None), ("gpu_s", "gpus", "allocated_gpu_s", None),
           ("requests", "overall", "requests", None)]


class RayMissing(RuntimeError):
    """The ray backend was asked for and ray is not installed, or Ray could not be started or reached."""


def metrics_of(summary: dict) -> dict[str, Any]:
    out = {}
    for col, sec, key, sub in METRICS:
        v = summary[sec][key]
        out[col] = v[sub] if sub is not None else v
    return out


def run_point(point: Point, runs_dir: str | None) -> dict[str, Any]:
    """Simulate one point into runs_dir/<id> and return its manifest row. Any exception is caught
    and returned as a failed row (status, error, traceback tail), so one crash does not stop a sweep.
    runs_dir None (a remote Ray node, whose disk the driver cannot see): the run is written to a
    temporary folder and its files come back in the row's `files` ({relative path: bytes})."""
    if runs_dir is None:
        import tempfile

        tmp = tempfile.mkdtemp(prefix="flexpipe-sweep-")
        try:
            row = run_point(point, tmp)
            folder = Path(tmp) / point.id
            if folder.is_dir():
                row["files"] = {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}
            return row
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    from .runner import run_scenario
    from .scenario import parse_scenario

    if stopped():  # the sweep was interrupted: start nothing new
        return {"id": point.id, "status": "cancelled"}
    t0 = time.perf_counter()
    row: dict[str, Any] = {"id": point.id, "scenario": point.base, "grid": point.grid, "policy": point.policy,
                           "seed": point.seed}
    try:
        sc = parse_scenario(dict(point.scenario), f"sweep point {point.id}")
        res = run_scenario(sc, Path(runs_dir) / point.id, force=True)
        row.update(status="complete", error=None, **metrics_of(res.summary))
    except Exception as e:  # noqa: BLE001 - recorded in the manifest; the sweep goes on
        tb = traceback.format_exc().strip().splitlines()
        row.update(status="failed", error=f"{type(e).__name__}: {e}", traceback="\n".join(tb[-6:]))
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    return row


def read_manifest(out: Path) -> list[dict]:
    """Rows of runs.jsonl; a torn last line (a sweep killed while writing it) is skipped."""
    p = out / MANIFEST
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def append_manifest(out: Path, row: dict) -> None:
    with open(out / MANIFEST, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()


def latest_rows(out: Path) -> dict[str, dict]:
    """The last manifest row of each point id."""
    return {r["id"]: r for r in read_manifest(out) if "id" in r}


def pending(points: list[Point], out: Path) -> list[Point]:
    """The points a resumed sweep still has to run."""
    last = latest_rows(out)
    return [p for p in points if not (last.get(p.id, {}).get("status") == "complete"
                                      and (out / RUNS / p.id / "summary.json").is_file())]


def _local(points: list[Point], runs_dir: str, workers: int, task: Callable = run_point) -> Iterator[dict]:
    """Rows of `task(point, runs_dir)` on a process pool, as they finish. A worker that dies (killed,
    out of memory, a crash in native code) breaks the whole pool and fails every run in it; those runs
    are retried one at a time, each in a fresh one-worker pool, so only the run that kills its worker
    again is recorded as failed and the others go on. Ctrl-C: queued runs return at once (sweeppool.py);
    rows of runs not finished are not recorded, so a resumed sweep runs them again."""
    broken: list[Point] = []
    with stoppable_pool(workers) as pool:
        futs = {pool.submit(task, p, runs_dir): p for p in points}
        while futs:
            done, _ = wait(futs, return_when=FIRST_COMPLETED)
            for f in done:
                p = futs.pop(f)
                if isinstance(f.exception(), BrokenProcessPool):
                    broken.append(p)
                else:
                    yield _result(f, p)
    for p in broken:
        with stoppable_pool(1) as pool:
            f = pool.submit(task, p, runs_dir)
            wait([f])
            yield _result(f, p)


def _result(f, p: Point) -> dict:
    try:
        return f.result()
    except Exception as e:  # noqa: BLE001 - a worker process that died (killed, out of memory)
        return {"id": p.id, "scenario": p.base, "grid": p.grid, "policy": p.policy, "seed": p.seed,
                "status": "failed", "error": f"worker died: {type(e).__name__}: {e}", "wall_s": None}


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissing("the ray backend needs ray: pip install -e '.[ray]'") from None
    return ray


def _ray(points: list[Point], runs_dir: str, workers: int, address: str | None) -> Iterator[dict]:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # a local Ray just for this sweep; no dashboard (it needs extra packages and a port)
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError, OSError) as e:
            raise RayMissing(f"could not start Ray{f' at --address {address}' if address else ''}: "
                             f"{type(e).__name__}: {e}") from None
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_point)
        # on a cluster (--address) the run folders travel back with the rows; a local Ray writes them here
        refs = {task.remote(p, None if address else runs_dir): p for p in points}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for r in done:
                p = refs.pop(r)
                try:
                    yield ray.get(r)
                except Exception as e:  # noqa: BLE001 - the task's worker died
                    yield {"id": p.id, "scenario": p.base, "grid": p.grid, "policy": p.policy, "seed": p.seed,
                           "status": "failed", "error": f"ray task failed: {type(e).__name__}: {e}", "wall_s": None}
    finally:
        for r in refs:
            ray.cancel(r, force=True)
        if started:
            ray.shutdown()


def store(out: Path, row: dict) -> None:
    """Record a finished run: a run done on another machine brings its files (`files`), written to its
    folder here first; then its row (without the files) is appended to the manifest."""
    files = row.pop("files", None)
    if files is not None:
        folder = out / RUNS / row["id"]
        shutil.rmtree(folder, ignore_errors=True)
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
    append_manifest(out, row)


def run_points(points: list[Point], out: Path, *, backend: str = "local", workers: int = 1,
               address: str | None = None, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run `points` on the backend; append each finished run's row to the manifest as it arrives
    (so Ctrl-C or a crash of the driver keeps every finished run) and return the rows."""
    (out / RUNS).mkdir(parents=True, exist_ok=True)
    runs_dir = str((out / RUNS).absolute())
    if not points:
        return []
    if backend == "ray":
        it = _ray(points, runs_dir, workers, address)
    elif backend == "local":
        it = _local(points, runs_dir, max(1, min(workers, len(points))))
    else:
        raise ValueError(f"unknown backend {backend!r} (local or ray)")
    rows = []
    try:
        for row in it:
            store(out, row)
            rows.append(row)
            if on_row:
                on_row(row)
    finally:
        it.close()  # a Ctrl-C here, between rows, stops the backend now (not when the generator is collected)
    return rows
