"""The gateway: routes each arriving request to a ready instance of its model with the least
outstanding work per unit of capacity, or queues it (per model, FIFO) while the model has no ready
instance.

Capacity (issue 11): instances of one model differ in speed (depth, tenant interference) and in KV
(MuxServe quotas, leftover memory). Least absolute work sent as much to a small-KV instance as to a
big one, which then preempted 0.7-8 times per request. An instance's capacity is its decode token
rate at the batch its KV holds (`Instance.capacity_tokens_per_s`): sequences that fit its KV at the
model's typical length (prompt + expected output), split over its micro-batch slots and capped by
max_seqs, priced by its own stage and hop times. (Outstanding work + the request's) / capacity is
the time to serve what it would have. When that work exceeds the instance's KV tokens, not all of
it can hold KV at once: it waits for admission and the admitted ones preempt each other as they
grow. The score multiplies the drain time by that over-commit factor (work / KV tokens, when > 1),
so a request goes where it fits in KV first and, when it fits nowhere, where KV is least
over-committed relative to speed.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

from .instance import Instance
from flexpipe_core.request import Request


class Gateway:
    def __init__(self, models: list[str], on_drop: Callable[[Request, str], None],
                 typical_prompt: dict[str, float] | None = None) -> None:
        self.queues: dict[str, deque[Request]] = {m: deque() for m in models}
        self.instances: dict[str, list[Instance]] = {m: [] for m in models}
        self._drop = on_drop
        # mean prompt tokens per model (the history policies also see), for instance capacities
        self.typical_prompt = typical_prompt or {}

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
        prompt = self.typical_prompt.get(r.model, float(r.prompt_tokens))

        def score(i: Instance) -> tuple[float, int]:
            work = i.outstanding_work + i.work_of(r)
            over = work / i.kv.capacity_tokens
            return work / i.capacity_tokens_per_s(prompt) * (over if over > 1.0 else 1.0), i.id

        min(fitting, key=score).enqueue(r)

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
                w = inst.waiting
                if not w or now - w.oldest <= max_wait_s:
                    continue  # nobody there can have waited that long (WaitQueue's bound)
                stale = []
                oldest = math.inf  # of those that may still time out (never admitted, staying)
                for r in w:
                    if r.generated == 0 and r.num_computed == 0:
                        if now - r.arrival_s > max_wait_s:
                            stale.append(r)
                        elif r.arrival_s < oldest:
                            oldest = r.arrival_s
                w.oldest = oldest  # (one admitted since never times out: nothing enters unseen)
                for r in stale:
                    inst.remove_waiting(r)
                    self._drop(r, "queue timeout (instance busy)")
