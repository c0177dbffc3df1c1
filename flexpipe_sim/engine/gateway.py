"""The gateway: routes each arriving request to a ready instance of its model with the least
outstanding work, or queues it (per model, FIFO) while the model has no ready instance."""

from __future__ import annotations

from collections import deque
from typing import Callable

from .instance import Instance
from .request import Request


class Gateway:
    def __init__(self, models: list[str], on_drop: Callable[[Request, str], None]) -> None:
        self.queues: dict[str, deque[Request]] = {m: deque() for m in models}
        self.instances: dict[str, list[Instance]] = {m: [] for m in models}
        self._drop = on_drop

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def arrive(self, r: Request) -> None:
        ready = [i for i in self.instances[r.model] if i.state == "ready"]
        if not ready:
            self.queues[r.model].append(r)
            return
        fitting = [i for i in ready if r.max_tokens <= i.kv.capacity_tokens]
        if not fitting:
            self._drop(r, "longer than any instance's KV capacity")
            return
        min(fitting, key=lambda i: (i.outstanding_work, i.id)).enqueue(r)

    def add(self, inst: Instance) -> None:
        self.instances[inst.model].append(inst)
        q = self.queues[inst.model]
        while q:
            self.arrive(q.popleft())

    def remove(self, inst: Instance) -> None:
        """Stop routing to `inst`; its never-admitted requests go back through the gateway."""
        self.instances[inst.model].remove(inst)
        for r in [r for r in inst.waiting if r.num_computed == 0 and r.generated == 0]:
            inst.remove_waiting(r)
            self.arrive(r)

    def expire(self, now: float, max_wait_s: float) -> None:
        """Drop requests that waited longer than max_wait_s without ever being admitted."""
        for q in self.queues.values():
            while q and now - q[0].arrival_s > max_wait_s:
                self._drop(q.popleft(), "queue timeout (no instance)")
        for insts in self.instances.values():
            for inst in insts:
                stale = [
                    r
                    for r in inst.waiting
                    if r.generated == 0 and r.num_computed == 0 and now - r.arrival_s > max_wait_s
                ]
                for r in stale:
                    inst.remove_waiting(r)
                    self._drop(r, "queue timeout (instance busy)")
