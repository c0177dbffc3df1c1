"""Per-request records (flexpipe_sim/records.py): numpy chunks streamed to Parquet, read back as
they were written, and a simulation that keeps Python objects only for requests in flight."""

from __future__ import annotations

import gc
import math
import os

import pandas as pd
import pytest

from flexpipe_core.request import Request
from flexpipe_sim.engine.simulator import Simulation
from flexpipe_sim.metrics import requests_frame
from flexpipe_sim.records import COLUMNS, RequestRecords
from flexpipe_sim.scenario import parse_scenario

from .helpers import small_raw
from .test_run import check_conservation


def _requests(n: int) -> list[Request]:
    rs = []
    for i in range(n):
        r = Request(i, f"m{i % 3}", 0.5 * i, 10 + i, 1 + i % 4)
        if i % 5 == 4:
            r.drop_reason = "queue timeout (no instance)" if i % 2 else "unfinished at end of drain"
        else:
            r.generated, r.admitted_s, r.first_token_s, r.finish_s = r.output_tokens, r.arrival_s + 0.1, r.arrival_s + 0.25, r.arrival_s + 1 / 3
            r.instance_id, r.preemptions, r.compute_s, r.comm_s = i % 7, i % 2, 0.01 * i, 1e-3 * i
        rs.append(r)
    return rs


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
def test_chunks_spilled_to_parquet_read_back_exactly(chunk):
    rs = _requests(23)
    rec = RequestRecords.from_requests(reversed(rs), chunk_rows=chunk)  # in the order they end, not by id
    assert len(rec) == 23 and rec.spilled_chunks == 23 // chunk
    df = rec.frame()
    assert list(df.columns) == list(COLUMNS)
    assert df.id.tolist() == list(range(22, -1, -1))  # the order they were added
    for r, row in zip(reversed(rs), df.itertuples(index=False)):
        assert (row.model, row.drop_reason, row.prompt_tokens, row.output_tokens, row.generated_tokens) == (
            r.model, r.drop_reason, r.prompt_tokens, r.output_tokens, r.generated)
        for a, b in ((row.finish_s, r.finish_s), (row.compute_s, r.compute_s), (row.admitted_s, r.admitted_s)):
            assert a == b or (math.isnan(a) and math.isnan(b))  # bit-exact, NaN kept
    # iteration: one record per request in id order, with Request's attribute names
    recs = list(rec)
    assert [x.id for x in recs] == list(range(23))
    assert all(x.is_done for x in recs) and sum(x.is_finished for x in recs) == 19
    assert recs[3].instance_id == 3 and recs[3].generated == recs[3].output_tokens
    pd.testing.assert_frame_equal(rec.frame(), df)  # a second read gives the same


def test_empty_records_have_the_columns():
    df = RequestRecords().frame()
    assert len(df) == 0 and list(df.columns) == list(COLUMNS)
    assert list(RequestRecords()) == []


def test_the_spill_file_goes_with_the_records():
    rec = RequestRecords.from_requests(_requests(10), chunk_rows=3)
    path = rec._path
    assert path is not None and os.path.exists(path)
    rec.frame()
    with pytest.raises(RuntimeError, match="after frame"):
        for k in range(3):  # the third fills a chunk: the file was closed by frame()
            rec.add(Request(100 + k, "m0", 1.0, 1, 1))
    del rec
    gc.collect()
    assert not os.path.exists(path)


def test_a_simulation_streams_its_records_and_keeps_only_requests_in_flight():
    """Small chunks (every 50 records to Parquet) give the records of one big in-memory chunk, bit
    for bit; while it runs, the Request objects alive are the ones in flight, not the run's."""
    sc = parse_scenario(small_raw(**{"horizon_s": 300, "workload.arrivals.rate": 8.0}))
    big = Simulation(sc).run()
    sim = Simulation(sc, records=RequestRecords(chunk_rows=50))
    alive, live = [], []

    def census(now: float, done: int) -> None:
        live.append(len(sim._live))
        if len(live) % 25 == 1:  # a walk over every object: now and then (about 20 times)
            alive.append(sum(isinstance(o, Request) for o in gc.get_objects()))

    raw = sim.run(census)
    check_conservation(sim, raw)
    n = len(sim.workload)
    assert n > 2000 and raw.requests.spilled_chunks == n // 50
    pd.testing.assert_frame_equal(requests_frame(raw), requests_frame(big))
    # in flight: at most a few hundred at 8 req/s; the objects alive follow them, never the run's total
    assert max(live) < n / 4
    assert max(alive) <= max(live) + 200 < n / 2
