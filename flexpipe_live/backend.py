"""The live run: arrivals released by wall clock, the policy asked every control interval, every
pipeline stepped in turn (one wavefront step each), samples taken as the simulator takes them.

Time: records are in wall seconds since the start (scaled scenarios: see `scaled_scenario`). One
thread: a refactor (flexpipe_kernel.refactor) runs inside the control step, serving its own
pipeline's steps while it pre-copies KV; other pipelines wait for it (on CPU they share the cores).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

import torch

from flexpipe_core.policyapi import ClusterView, EngineLimits, GPUView, InstanceView, ModelView
from flexpipe_core.request import Request
from flexpipe_kernel.engine import PipelineEngine
from flexpipe_kernel.model import build_model
from flexpipe_kernel.transfer import HostWeightCache
from flexpipe_sim.costmodel import StageShape
from flexpipe_sim.engine.simulator import RawResults, Simulation
from flexpipe_sim.records import RequestRecords
from flexpipe_sim.scenario import Scenario

from .devices import LiveError
from .actions import PipelineActions
from .pipeline import LivePipeline, build_stages, kernel_args, kv_blocks_for
from .workers import DeviceWorkers

ProgressFn = Callable[[float, dict], None]  # (wall seconds, counters)
IDLE_SLEEP_S = 0.002  # longest nap when nothing is runnable: 2 ms keeps arrival release jitter small


def prompt_ids(seed: int, rid: int, n: int, vocab: int) -> list[int]:
    """A request's prompt token ids: random but fixed by (seed, request id), so two runs (refactored or
    not, live or replayed) feed the same tokens."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rid)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


class _Now:
    """What `Simulation._arrival_stats` reads as `self.env`: the current time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    @property
    def now(self) -> float:
        return self._clock()


class LiveBackend(PipelineActions):
    def __init__(self, sc: Scenario, devices: list[str], *, kv_tokens: int = 8192, threads: int | None = 1,
                 processes: bool = False) -> None:
        self.sc, self.devices, self.kv_tokens = sc, devices, kv_tokens
        if processes and any(d != "cpu" for d in devices):
            raise LiveError("--processes runs logical CPU devices as processes; use --devices cpu:N with it")
        if threads and devices[0] == "cpu":
            # As `calibrate` measures CPU profiles (one intra-op thread: repeatable on a shared VM), so
            # the simulator's profile and the live run time the same thing.
            torch.set_num_threads(threads)
        # The simulator builds the workload, cost models and policy exactly as for `run` (same seed
        # streams), so a live run and a simulated one see identical arrivals, lengths and decisions code.
        self.sim = Simulation(sc)
        self.workload = self.sim.workload
        self.policy = self.sim.policy
        self.args = {m: kernel_args(spec) for m, spec in self.sim.specs.items()}
        self.caches: dict[str, HostWeightCache] = {}
        for i, m in enumerate(self.args):  # random weights, fixed by the scenario seed
            model = build_model(self.args[m], seed=sc.seed + i)
            self.caches[m] = HostWeightCache().put_model(model)
            del model
        self.capacity = [self._capacity(d) for d in devices]
        self.pipes: dict[int, LivePipeline] = {}
        self.retired_busy_s = 0.0
        self.queues: dict[str, deque[Request]] = {m: deque() for m in self.args}
        self.requests: list[Request] = []
        # what Simulation._arrival_stats reads: each model's arrival times (the workload's, sorted)
        # and how many of them have been released
        self._arrivals_of, self._arrivals_np = self.sim._arrivals_of, self.sim._arrivals_np
        self._released_of: dict[str, int] = {m: 0 for m in self.args}
        self.launches: list[dict] = []
        self.refactors: list[dict] = []
        self.rejected: list[dict] = []
        self.dropped = 0
        self.retired_finished = 0
        self.failures: list[dict] = []  # pipelines whose step raised: when, which, why, requests re-queued
        self._carry: dict[int, list[int]] = {}  # re-queued request id -> its tokens so far
        self._i = 0
        self.decide_wall_s: list[float] = []
        self.retired_gens: dict[int, list[int]] = {}
        self.speed = {"measured_s": 0.0, "predicted_s": 0.0, "steps": 0, "engine_s": 0.0, "engine_steps": 0}
        self.workers = DeviceWorkers(len(devices))
        self.procs = None
        if processes:
            from .procs import DeviceProcesses

            self.procs = DeviceProcesses(len(devices), threads or 1)
        self.host_ranges: set[tuple[str, int, int]] = set()
        self._next_id = 0
        self._t0 = time.perf_counter()
        self.env = _Now(self.now)
        self.samples: dict[str, list[float]] = {k: [] for k in self.sim.samples}

    def _capacity(self, dev: str) -> int:
        if dev.startswith("cuda"):
            return int(torch.cuda.get_device_properties(torch.device(dev)).total_memory)
        return int(self.sim.cluster.gpus[0].spec.memory_bytes)

    def now(self) -> float:
        return time.perf_counter() - self._t0

    # --- the policy's view ------------------------------------------------------------------
    def view(self) -> ClusterView:
        used = [0] * len(self.devices)
        hosting: list[set[str]] = [set() for _ in self.devices]
        for p in self.pipes.values():
            for g in set(p.gpus):
                used[g] += p.bytes_on(g)
                hosting[g].add(p.model)
        gpus = tuple(GPUView(i, 0, 0, False, cap, max(0, cap - used[i]), 0.0, frozenset(hosting[i]))
                     for i, cap in enumerate(self.capacity))
        insts = tuple(InstanceView(p.id, p.model, p.state, p.gpus, p.ranges, len(p.engine.waiting), p.engine.running)
                      for p in self.pipes.values())
        sc = self.sc
        models = {}
        for m in sc.models:
            peak, prompt, output, mean_rate, hist_cv = self.sim._model_views_static[m.name]
            rate, cv, slope = Simulation._arrival_stats(self, m.name)  # type: ignore[arg-type]  # same statistics
            queued = len(self.queues[m.name]) + sum(len(p.engine.waiting) for p in self.pipes.values() if p.model == m.name)
            models[m.name] = ModelView(m.name, self.sim.specs[m.name], self.sim.costs[m.name], m.slo.ttft_s, m.slo.tpot_s,
                                       len(self.queues[m.name]), peak, prompt, output, rate, cv, slope, queued,
                                       mean_rate, hist_cv)
        e = sc.engine
        limits = EngineLimits(e.block_size, e.token_budget, e.max_seqs, e.gpu_memory_utilization,
                              int(e.workspace_gb * 2**30))
        return ClusterView(self.now(), gpus, insts, models, limits, self.sim.cluster.gpus[0].spec,
                           {0: frozenset(self.host_ranges)}, sc.cluster.storage_gb_s * 1e9)

    def _price(self, p: LivePipeline, measured_s: float, wall_s: float) -> None:
        """What the simulator's cost model says the step just run should have taken, beside what it
        took: validate's in-run speed factor (how much slower this machine ran than when profiled)."""
        cost, gpu = self.sim.costs[p.model], self.sim.cluster.gpus[0].spec
        pred = 0.0
        for k, batch in p.engine.last_runs:
            st = p.engine.stages[k]
            pred += cost.stage_time(StageShape(st.end - st.first, st.is_first, st.is_last, gpu), batch.work)
        self.speed["measured_s"] += measured_s
        self.speed["predicted_s"] += pred
        self.speed["steps"] += 1
        if len(p.engine.last_runs) == 1:  # the engine's own time around one stage call: scheduling, inputs, sampling
            self.speed["engine_s"] += wall_s - measured_s
            self.speed["engine_steps"] += 1

    # --- requests ----------------------------------------------------------------------------
    def _release(self, now: float, i: int) -> int:
        w = self.workload
        names = w.model_names
        while i < len(w) and w.arrival_s[i] <= now:
            r = Request(i, names[w.model_idx[i]], float(w.arrival_s[i]), int(w.prompt_tokens[i]), int(w.output_tokens[i]))
            self.requests.append(r)
            self._released_of[r.model] += 1
            self.queues[r.model].append(r)
            i += 1
        return i

    def _route(self) -> None:
        """Least outstanding requests per stage among the model's ready pipelines (the gateway's idea)."""
        for m, q in self.queues.items():
            ready = [p for p in self.pipes.values() if p.model == m and p.state == "ready"]
            while q and ready:
                p = min(ready, key=lambda p: (len(p.engine.waiting) + p.engine.running) / len(p.plan))
                r = q.popleft()
                r.instance_id = p.id
                tokens = self._carry.pop(r.id, None) or prompt_ids(self.sc.seed, r.id, r.prompt_tokens,
                                                                      self.args[m].vocab_size)
                p.engine.submit(r, tokens)

    def _expire(self, now: float) -> None:
        limit = self.sc.engine.max_queue_wait_s
        for q in self.queues.values():
            while q and now - q[0].arrival_s > limit:
                r = q.popleft()
                r.drop_reason = f"queued over engine.max_queue_wait_s ({limit:g} s) with no instance to take it"
                self.dropped += 1

    def _sample(self, now: float) -> None:
        s = self.samples
        s["time_s"].append(now)
        s["gpus_allocated"].append(len({g for p in self.pipes.values() for g in p.gpus}))
        s["busy_gpu_s"].append(self.retired_busy_s + sum(p.stage_s for p in self.pipes.values()))
        s["interference_gpu_s"].append(0.0)
        s["gateway_queue"].append(sum(len(q) for q in self.queues.values()))
        s["instance_queue"].append(sum(len(p.engine.waiting) for p in self.pipes.values()))
        s["running"].append(sum(p.engine.running for p in self.pipes.values()))
        s["done"].append(self.finished + self.dropped)

    def counters(self) -> dict:
        return {"arrived": len(self.requests), "total": len(self.workload), "done": self.finished + self.dropped,
                "finished": self.finished, "dropped": self.dropped,
                "running": sum(p.engine.running for p in self.pipes.values()),
                "queued": sum(len(q) for q in self.queues.values()) + sum(len(p.engine.waiting) for p in self.pipes.values()),
                "pipelines": len(self.pipes), "refactors": len(self.refactors)}

    def warm_up(self) -> None:
        """Run a few throwaway requests through a one-stage copy of each model before the clock starts:
        PyTorch's first calls (allocator, kernel selection) take ~1 s on CPU, which would land on the
        first requests' TTFT and which the simulator (and a warm server) does not have."""
        from flexpipe_core.policyapi import StagePlan

        e = self.sc.engine
        for m, args in self.args.items():
            stages, _, _ = build_stages(args, (StagePlan(0, args.n_layers, 0),), self.devices, self.caches[m],
                                        kv_blocks_for(4096, e.block_size), e.block_size)
            eng = PipelineEngine(stages, token_budget=e.token_budget, max_seqs=e.max_seqs)
            for n in (8, 64, 256):
                for _ in range(2):
                    eng.add_request(prompt_ids(self.sc.seed, 0, n, args.vocab_size), 8)
            eng.run()

    def _serve(self, skip: LivePipeline | None = None) -> bool:
        """One wavefront step of every pipeline with work (but `skip`); drained retirees go away."""
        stepped = False
        for p in list(self.pipes.values()):
            if p is skip:
                continue
            if p.engine.has_work:
                s0, b0 = p.stage_s, p.busy_s
                try:
                    p.step()
                except Exception as e:  # noqa: BLE001 - a failed worker/device: reported, its requests re-queued
                    self._fail(p, e)
                    continue
                self._price(p, p.stage_s - s0, p.busy_s - b0)
                stepped = True
            elif p.state == "draining":
                self.retired_busy_s += p.stage_s
                self.retired_finished += len(p.engine.finished)
                self.retired_gens.update({rid: g.output for rid, g in p.engine.gens.items()})
                del self.pipes[p.id]
        return stepped

    @property
    def finished(self) -> int:
        return self.retired_finished + sum(len(p.engine.finished) for p in self.pipes.values())

    # --- run -----------------------------------------------------------------------------------
    def run(self, progress: ProgressFn | None = None, stop: Callable[[], bool] = lambda: False) -> RawResults:
        sc, w = self.sc, self.workload
        self.warm_up()
        self._t0 = time.perf_counter()
        if sc.engine.prewarm:  # as in the simulator: what the policy launches at t=0 is already loaded
            for a in self.policy.decide(self.view()):
                self.apply(a)
            self._t0 = time.perf_counter()
            for x in self.launches:
                x["requested_s"] = x["ready_s"] = 0.0
        limit = sc.horizon_s + sc.drain_s
        self._i = i = 0
        next_control, next_sample = sc.engine.control_interval_s if sc.engine.prewarm else 0.0, 0.0
        interrupted = False
        try:
            while True:
                now = self.now()
                self._i = i = self._release(now, self._i)
                if now >= next_control:
                    t = time.perf_counter()
                    actions = self.policy.decide(self.view())
                    self.decide_wall_s.append(time.perf_counter() - t)
                    for a in actions:
                        self.apply(a)
                    next_control += sc.engine.control_interval_s
                self._expire(now)
                self._route()
                stepped = self._serve()
                now = self.now()
                if now >= next_sample:
                    self._sample(now)
                    if progress:
                        progress(now, self.counters())
                    next_sample += sc.outputs.sample_interval_s
                if stop():
                    raise KeyboardInterrupt
                if (i == len(w) and self.finished + self.dropped == len(w)) or now >= limit:
                    break
                if not stepped:
                    nxt = min(next_control, next_sample, float(w.arrival_s[i]) if i < len(w) else limit)
                    time.sleep(min(IDLE_SLEEP_S, max(0.0, nxt - self.now())))
        except KeyboardInterrupt:  # Ctrl-C at a clean point (between steps): keep what was measured
            interrupted = True
        end_s = self.now()
        self.workers.close()
        if self.procs is not None:
            self.procs.close()
        self._sample(end_s)
        for r in self.requests:
            if not r.is_done:
                r.drop_reason = "interrupted (run stopped early)" if interrupted else "unfinished at end of drain"
        for j in range(len(self.requests), len(w)):
            self.requests.append(Request(j, w.model_names[w.model_idx[j]], float(w.arrival_s[j]), int(w.prompt_tokens[j]),
                                         int(w.output_tokens[j]), drop_reason="never released (run stopped)"))
        if progress:
            progress(end_s, self.counters())
        notes = [f"live run on {len(self.devices)} device(s): {', '.join(sorted(set(self.devices)))}; "
                 f"KV per stage capped at {self.kv_tokens:,} tokens"] + list(getattr(self.policy, "notes", []))
        notes += [f"instance {f['instance']} failed at t={f['time_s']:.2f} s ({f['error']}); {f['requeued']} request(s) "
                  "re-queued" for f in self.failures]
        return RawResults(sc, RequestRecords.from_requests(self.requests), self.samples, self.launches, self.rejected, notes,
                          max(end_s, sc.horizon_s) if not interrupted else end_s, end_s, self.sim.cluster,
                          self.decide_wall_s, {n: f"live kernel ({self.devices[0]})" for n in self.args},
                          self.refactors, interrupted, list(w.warnings))

    def outputs(self) -> dict[int, list[int]]:
        """Request id -> generated token ids (the conservation test compares them between runs)."""
        out: dict[int, list[int]] = dict(self.retired_gens)
        for p in self.pipes.values():
            for rid, g in p.engine.gens.items():
                out[rid] = g.output
        return out
