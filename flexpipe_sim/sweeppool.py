"""A process pool that stops promptly on Ctrl-C, for `sweep --backend local` and parallel `compare`.

concurrent.futures queues a few calls in its workers ahead of time; cancelling the futures cannot
reach those, so after Ctrl-C each worker would start and finish one more whole run. The pool here
hands its workers a "stop" event: `stopped()` is true in a worker once the driver has set it, and
the run functions return at once instead of running. Runs in progress received the terminal's
SIGINT themselves and stop at their next progress tick (runner.sigint_at_progress). Processes are
spawned, not forked: the driver runs a progress-bar thread, and forking a threaded process can deadlock.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator

_STOP = None  # in a worker: the pool's stop event


def _init_worker(stop) -> None:  # noqa: ANN001 - a multiprocessing Event
    global _STOP
    _STOP = stop


def stopped() -> bool:
    """In a pool worker: the driver was interrupted and wants no more runs started."""
    return _STOP is not None and _STOP.is_set()


@contextmanager
def stoppable_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """The pool; on leaving (normally or by an exception such as KeyboardInterrupt) queued calls are
    cancelled or turned into no-ops and the workers are waited for."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(stop,))
    try:
        yield pool
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
