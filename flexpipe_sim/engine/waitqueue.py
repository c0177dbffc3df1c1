"""An instance's queue of requests waiting for admission: a deque that also keeps a lower bound on
the arrival times of the requests in it, so that the gateway's queue timeout (Gateway.expire,
every monitor tick) skips an instance none of whose requests can have waited long enough instead of
scanning its queue (thousands of requests on an overloaded instance, every second).

Every request enters by `append` (routing) or `appendleft` (a preempted one, or a switch's
requests back in line), which lower the bound; removals leave it a valid lower bound, and the
gateway tightens it after a scan.
"""

from __future__ import annotations

import math
from collections import deque

from flexpipe_core.request import Request


class WaitQueue(deque):
    def __init__(self) -> None:
        super().__init__()
        self.oldest = math.inf  # at most the arrival time of any request that can still time out here

    def append(self, r: Request) -> None:
        if r.arrival_s < self.oldest:
            self.oldest = r.arrival_s
        super().append(r)

    def appendleft(self, r: Request) -> None:
        if r.arrival_s < self.oldest:
            self.oldest = r.arrival_s
        super().appendleft(r)

    def extend(self, rs) -> None:  # (unused today; kept so the bound cannot be bypassed)
        for r in rs:
            self.append(r)

    def extendleft(self, rs) -> None:
        for r in rs:
            self.appendleft(r)

    def insert(self, i: int, r: Request) -> None:
        if r.arrival_s < self.oldest:
            self.oldest = r.arrival_s
        super().insert(i, r)
