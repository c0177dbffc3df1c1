"""What the policy's actions do on live pipelines: launch (stages from the host weight cache, or in
device processes), retire (drain, then free), inflight refactor (flexpipe_kernel.refactor, while the
rest of the run keeps serving), and what a failed pipeline leaves behind. A mixin of LiveBackend."""

from __future__ import annotations

import time

from flexpipe_core.policyapi import Action, Launch, Refactor, Retire
from flexpipe_kernel.engine import PipelineEngine
from flexpipe_kernel.refactor import refactor as kernel_refactor
from flexpipe_kernel.transfer import HostWeightCache, LocalFabric, sync

from .pipeline import LivePipeline, build_stages, kv_blocks_for


class _TimedFabric(LocalFabric):
    """The kernel refactor's fabric in this process (weights from the host cache, or from a stage on
    the same device, a layer at a time), timing the weight copies: the refactor record splits weight
    loads from the KV pre-copy and pause (validate's KV transfer time)."""

    def __init__(self, cache: HostWeightCache) -> None:
        super().__init__(cache)
        self.seconds = 0.0

    def fill(self, stage, names, src=None) -> int:
        t = time.perf_counter()
        n = super().fill(stage, names, src)
        sync(stage.device)
        self.seconds += time.perf_counter() - t
        return n


class PipelineActions:
    """Needs from LiveBackend: sc, devices, args, caches, pipes, queues, procs, workers, launches,
    refactors, rejected, failures, host_ranges, kv_tokens, _carry and the counters, now(), _release,
    _route, _serve."""

    def apply(self, a: Action) -> None:
        if isinstance(a, Launch):
            self._launch(a)
        elif isinstance(a, Retire):
            p = self.pipes.get(a.instance_id)
            if p is None:
                self._reject(a, "no such instance")
            else:
                p.state = "draining"
        elif isinstance(a, Refactor):
            self._refactor(a)

    def _reject(self, a: Action, reason: str) -> None:
        self.rejected.append({"time_s": self.now(), "action": repr(a), "reason": reason})

    def _bad_plan(self, plan) -> str | None:
        if not plan or any(not 0 <= s.gpu < len(self.devices) for s in plan):
            return f"stage on a device this run does not have (devices 0-{len(self.devices) - 1})"
        return None

    def _kv_blocks(self, kv_tokens: int | None) -> int:
        # The live cap (--kv-tokens) bounds host memory on CPU: "all the free memory" of a 16 GiB
        # nominal CPU device would allocate gigabytes of KV a tiny model never uses.
        want = self.kv_tokens if kv_tokens is None else min(kv_tokens, self.kv_tokens)
        return kv_blocks_for(want, self.sc.engine.block_size)

    def _launch(self, a: Launch) -> None:
        why = self._bad_plan(a.stages)
        if why:
            self._reject(a, why)
            return
        requested = self.now()
        e = self.sc.engine
        if self.procs is not None:
            t = time.perf_counter()
            dead = [g for g in self.procs.dead() if g in {s.gpu for s in a.stages}]
            if dead:
                self._reject(a, f"device process(es) {dead} died")
                return
            seed = self.sc.seed + list(self.args).index(a.model)
            try:
                stages = [self.procs.build(s.gpu, self.args[a.model], seed, s.first_layer, s.end_layer,
                                           self._kv_blocks(a.kv_tokens), e.block_size) for s in a.stages]
            except (EOFError, OSError, RuntimeError) as err:  # a worker died while building
                self._reject(a, f"device process failed while loading: {type(err).__name__}: {err}")
                return
            load_s = time.perf_counter() - t
        else:
            stages, _, load_s = build_stages(self.args[a.model], a.stages, self.devices, self.caches[a.model],
                                             self._kv_blocks(a.kv_tokens), e.block_size)
        eng = PipelineEngine(stages, token_budget=e.token_budget, max_seqs=e.max_seqs, clock=self.now,  # type: ignore[arg-type]
                             epoch=0.0)
        p = LivePipeline(self._next_id, a.model, a.stages, eng, load_s=load_s)
        eng.stage_runner = self._process_runner(p) if self.procs is not None else self.workers.runner(p)
        self._next_id += 1
        self.pipes[p.id] = p
        self.host_ranges.update((a.model, s.first_layer, s.end_layer) for s in a.stages)
        self.launches.append({"instance": p.id, "model": p.model, "stages": len(stages), "requested_s": requested,
                              "ready_s": self.now(), "load_s": load_s, "cold_stages": 0,
                              "gpus": " ".join(str(g) for g in p.gpus), "kv_tokens": eng.kv.capacity_tokens})

    def _process_runner(self, p: LivePipeline):
        def run(calls):
            res = self.procs.run([(p.plan[k].gpu, p.engine.stages[k], x, m) for k, x, m in calls])
            p.stage_s += sum(dt for _, dt in res)
            return [out for out, _ in res]

        return run

    def _refactor(self, a: Refactor) -> None:
        if self.procs is not None:
            from .procs import REFACTOR_UNSUPPORTED

            self._reject(a, REFACTOR_UNSUPPORTED)
            return
        p = self.pipes.get(a.instance_id)
        why = "no such instance" if p is None else (None if p.state == "ready" else f"instance is {p.state}")
        why = why or self._bad_plan(a.stages)
        if why:
            self._reject(a, why)
            return
        cuts = [a.stages[0].first_layer] + [s.end_layer for s in a.stages]
        old = p.plan
        t0 = self.now()
        cache = _TimedFabric(self.caches[p.model])
        p.engine.step = self._cooperative_step(p)  # type: ignore[method-assign]
        try:
            rec = kernel_refactor(p.engine, cuts, [self.devices[s.gpu] for s in a.stages], cache,  # type: ignore[arg-type]
                                  kv_blocks=self._kv_blocks(None))
        except Exception as e:  # noqa: BLE001 - the refactor or a step inside it failed: as a failed worker
            self._fail(p, e)
            return
        finally:
            del p.engine.step  # the class's step again
        p.plan = a.stages
        p.refactors += 1
        self.host_ranges.update((p.model, s.first_layer, s.end_layer) for s in a.stages)
        self.refactors.append({
            "instance": p.id, "model": p.model, "requested_s": t0, "switched_s": self.now(),
            "old_stages": len(old), "new_stages": len(a.stages), "weight_load_s": cache.seconds,
            "cold_stages": 0, "weight_bytes": rec.weight_bytes, "kv_bytes": rec.kv_bytes, "rounds": rec.rounds,
            "pause_s": rec.pause_s, "duration_s": rec.duration_s, "preempted": 0,
            "old_gpus": " ".join(str(s.gpu) for s in old), "new_gpus": " ".join(str(s.gpu) for s in a.stages),
        })

    def _fail(self, p: LivePipeline, e: BaseException) -> None:
        """A pipeline whose step raised (a device or worker failed) is dropped from the run. Its finished
        requests stay finished; the others go back to the front of the gateway queue with the tokens
        they have (recomputed elsewhere, as after a preemption), so no request is lost."""
        self.pipes.pop(p.id, None)
        self.retired_busy_s += p.stage_s
        self.retired_finished += len(p.engine.finished)
        done = {g.req.id for g in p.engine.finished}
        back = []
        for rid, g in p.engine.gens.items():
            if rid in done:
                self.retired_gens[rid] = g.output
                continue
            r = g.req
            self._carry[rid] = g.tokens[:r.prompt_tokens + r.generated]
            r.num_computed, r.kv_tokens, r.slot, r.instance_id = 0, 0, -1, -1
            r.num_tokens = r.prompt_tokens + r.generated
            r.preemptions += 1
            back.append(r)
        for r in sorted(back, key=lambda r: r.arrival_s, reverse=True):
            self.queues[p.model].appendleft(r)
        self.failures.append({"time_s": self.now(), "instance": p.id, "model": p.model, "gpus": list(p.gpus),
                              "error": f"{type(e).__name__}: {e}", "requeued": len(back)})

    def _cooperative_step(self, p: LivePipeline):
        """p.engine.step while p is refactored (the kernel's refactor steps it between its phases):
        arrivals keep being released and routed and the other pipelines keep serving meanwhile."""
        plain = p.engine.step

        def step(start_new: bool = True) -> None:
            self._i = self._release(self.now(), self._i)
            self._route()
            self._serve(skip=p)
            plain(start_new)

        return step
