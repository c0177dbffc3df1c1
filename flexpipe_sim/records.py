"""Per-request records: numpy columns filled as requests end, streamed to Parquet in chunks.

A backend hands each request to `RequestRecords.add` once nothing more will happen to it (finished
or dropped) and then lets it go, so a run keeps Python objects only for requests in flight. Rows
wait in a list of plain tuples until `chunk_rows` of them are there; the chunk then becomes one
numpy structured array (about 100 bytes a request, against about 600 for a Request and its boxed
floats) and is appended to a Parquet file in the temporary folder, so memory while simulating is
bounded by the chunk, not by the run's length. `frame()` reads the columns back (what metrics need
for exact percentiles); `iter(records)` gives one read-only `RequestRecord` per request, in id order,
with the attribute names of `flexpipe_core.request.Request` (tests and switchcost.py read those).

Strings (model, drop reason) are stored as codes into one table per run. The temporary file goes
when the records object does (weakref.finalize).
"""

from __future__ import annotations

import os
import tempfile
import weakref
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pandas as pd

from flexpipe_core.request import Request

# 65,536 rows is about 6.5 MB per chunk in memory; our choice: big enough that a chunk's Parquet
# write (a few ms) is noise, small enough that a 1M-request hour holds under 10 MB of rows.
CHUNK_ROWS = 65_536

# column -> numpy type; "model" and "drop_reason" hold codes into the run's string table
COLUMNS: dict[str, str] = {
    "id": "i8", "model": "i4", "arrival_s": "f8", "admitted_s": "f8", "first_token_s": "f8", "finish_s": "f8",
    "prompt_tokens": "i8", "output_tokens": "i8", "generated_tokens": "i8", "instance": "i8",
    "preemptions": "i8", "compute_s": "f8", "comm_s": "f8", "drop_reason": "i4",
}
_DTYPE = np.dtype(list(COLUMNS.items()))
_STRINGS = ("model", "drop_reason")


class RequestRecord(NamedTuple):
    """One ended request, as recorded (the fields of Request that outlive it)."""

    id: int
    model: str
    arrival_s: float
    admitted_s: float
    first_token_s: float
    finish_s: float
    prompt_tokens: int
    output_tokens: int
    generated: int
    instance_id: int
    preemptions: int
    compute_s: float
    comm_s: float
    drop_reason: str

    @property
    def is_finished(self) -> bool:
        return self.generated >= self.output_tokens

    @property
    def is_done(self) -> bool:
        return self.is_finished or bool(self.drop_reason)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class RequestRecords:
    """The records of one run (see the module docstring)."""

    def __init__(self, chunk_rows: int = CHUNK_ROWS) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self._rows: list[tuple] = []
        self._codes: dict[str, int] = {}
        self._n = 0
        self._path: str | None = None
        self._writer = None  # pyarrow.parquet.ParquetWriter, opened with the first full chunk
        self._closed = False  # frame() closed the file
        self.spilled_chunks = 0

    @classmethod
    def from_requests(cls, requests: Iterable[Request], chunk_rows: int = CHUNK_ROWS) -> "RequestRecords":
        rec = cls(chunk_rows)
        for r in requests:
            rec.add(r)
        return rec

    def __len__(self) -> int:
        return self._n

    def _code(self, s: str) -> int:
        c = self._codes.get(s)
        if c is None:
            c = self._codes[s] = len(self._codes)
        return c

    def add(self, r: Request) -> None:
        """Record a request that has ended (finished or dropped); its fields must be final."""
        codes = self._codes
        m = codes.get(r.model)
        if m is None:
            m = self._code(r.model)
        d = codes.get(r.drop_reason)
        if d is None:
            d = self._code(r.drop_reason)
        self._rows.append((r.id, m, r.arrival_s, r.admitted_s, r.first_token_s, r.finish_s, r.prompt_tokens,
                           r.output_tokens, r.generated, r.instance_id, r.preemptions, r.compute_s, r.comm_s, d))
        self._n += 1
        if len(self._rows) >= self.chunk_rows:
            if self._closed:
                raise RuntimeError("RequestRecords: add() after frame() closed the records file")
            self._spill()

    def _chunk(self) -> np.ndarray:
        return np.array(self._rows, dtype=_DTYPE)

    def _spill(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arr = self._chunk()
        table = pa.table({name: arr[name] for name in COLUMNS})
        if self._writer is None:
            fd, self._path = tempfile.mkstemp(prefix="flexpipe-records-", suffix=".parquet")
            os.close(fd)
            weakref.finalize(self, _remove, self._path)
            self._writer = pq.ParquetWriter(self._path, table.schema)
        self._writer.write_table(table)
        self._rows = []
        self.spilled_chunks += 1

    def frame(self) -> pd.DataFrame:
        """All records as one DataFrame (columns as COLUMNS, strings decoded), in the order they ended.
        The first call closes the Parquet file (a file is readable once closed): add nothing after it."""
        parts = []
        if self._path is not None:
            import pyarrow.parquet as pq

            if self._writer is not None:
                self._writer.close()
                self._writer = None
                self._closed = True
            parts.append(pq.read_table(self._path).to_pandas())
        if self._rows or not parts:
            parts.append(pd.DataFrame(self._chunk()))
        df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        names = np.array(list(self._codes) or [""], dtype=object)
        for col in _STRINGS:
            df[col] = names[df[col].to_numpy()]
        return df

    def __iter__(self) -> Iterator[RequestRecord]:
        df = self.frame().sort_values("id", kind="stable")
        cols = [df[c].tolist() for c in COLUMNS]
        return (RequestRecord(*row) for row in zip(*cols))
