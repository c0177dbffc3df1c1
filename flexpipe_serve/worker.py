"""The engine thread: one `PipelineEngine` stepped by one background thread, fed by every HTTP
request at once, so concurrent requests share micro-batches (continuous batching, as in the
engine's own tests). Tokens go back to each request's asyncio queue as they are sampled."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import torch

from flexpipe_kernel import PipelineEngine
from flexpipe_kernel.cudagraph import graphed
from flexpipe_kernel.engine import Generation

from .pipeline import Pipeline


class ServeEngine(PipelineEngine):
    """The kernel's engine with a temperature (and optional seed) per request, as the OpenAI API
    gives them per request; 0 is greedy (argmax), exactly the engine's own greedy path."""

    def __init__(self, stages, **kw) -> None:
        super().__init__(stages, temperature=0.0, **kw)
        self.temps: dict[int, float] = {}

    def add_request(self, prompt: list[int], max_new_tokens: int, req_id: int | None = None, *,
                    temperature: float = 0.0, seed: int | None = None) -> int:
        rid = super().add_request(prompt, max_new_tokens, req_id)
        self.temps[rid] = temperature
        if temperature > 0:  # the engine's per-request seeding unless the client gave a seed
            self.gens[rid].sampler = torch.Generator().manual_seed(self.seed * 1_000_003 + rid if seed is None else seed)
        return rid

    def _sample(self, logits: torch.Tensor, gen: Generation) -> int:
        t = self.temps.get(gen.req.id, 0.0)
        if t <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / t, dim=-1)
        return int(torch.multinomial(probs, 1, generator=gen.sampler))

    def forget(self, rid: int) -> None:
        """Drop a finished request's state (a server runs for long; the engine keeps all otherwise)."""
        self.gens.pop(rid, None)
        self.temps.pop(rid, None)


@dataclass
class Job:
    """One HTTP request's generation. Its queue receives ("token", id) items, then ("done",
    finish_reason) or ("error", message)."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    seed: int | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    rid: int = -1  # the engine's request id, once the engine thread has taken the job

    def post(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))


class EngineWorker:
    def __init__(self, pipeline: Pipeline, *, token_budget: int = 512, max_seqs: int = 64, seed: int = 0,
                 cuda_graphs: bool = False) -> None:
        self.pipeline = pipeline
        # cuda_graphs: decode through flexpipe_kernel.cudagraph (captured on CUDA, same padding on CPU)
        stages = graphed(pipeline.stages) if cuda_graphs else pipeline.stages
        self.engine = ServeEngine(stages, token_budget=token_budget, max_seqs=max_seqs, seed=seed,
                                  on_token=self._on_token)
        # The longest request that can ever run: the free KV blocks (after cudagraph's scratch
        # block, if any) less the engine's one-block watermark, and the model's positions.
        free = min(s.cache.blocks.num_free for s in stages) - self.engine.kv.watermark
        self.max_request_tokens = min(pipeline.args.max_seq_len, free * pipeline.block_size)
        self._inbox: list[Job] = []
        self._cancels: list[Job] = []
        self.cancelled = 0  # requests stopped early because their client went away
        self._jobs: dict[int, Job] = {}
        self._cv = threading.Condition()
        self._stop = False
        self.failed: str | None = None
        self.served = 0
        self.peak_running = 0  # most sequences running at once: > 1 shows requests shared batches
        self._thread = threading.Thread(target=self._loop, name="flexpipe-engine", daemon=True)

    def start(self) -> "EngineWorker":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        with self._cv:
            if self.failed:
                raise RuntimeError(f"the engine stopped: {self.failed}")
            self._inbox.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Stop generating for a client that went away (its stream was closed)."""
        with self._cv:
            self._cancels.append(job)
            self._cv.notify()

    def _cancel(self, job: Job) -> None:
        """In the engine thread. A waiting request leaves the queue; a running one gets its
        output budget cut to the token it is computing, so the batcher finishes it at its next
        step and frees its KV through the ordinary path (no scheduler state is touched)."""
        eng = self.engine
        gen = eng.gens.get(job.rid)
        if gen is None or self._jobs.pop(job.rid, None) is None:
            return  # already finished
        self.cancelled += 1
        r = gen.req
        if r in eng.waiting and r.num_computed == 0 and r.kv_tokens == 0:
            eng.waiting.remove(r)
            eng.forget(r.id)
        else:
            r.output_tokens = min(r.output_tokens, r.generated + 1)

    def _on_token(self, rid: int, tok: int) -> None:
        job = self._jobs.get(rid)
        if job is not None:
            job.post("token", tok)

    def _loop(self) -> None:
        eng = self.engine
        while True:
            with self._cv:
                while not self._stop and not self._inbox and not self._cancels and not eng.has_work:
                    self._cv.wait()
                if self._stop:
                    break
                new, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            try:
                for job in new:  # admitted between steps: the next micro-batch may take them
                    job.rid = eng.add_request(job.prompt, job.max_tokens, temperature=job.temperature, seed=job.seed)
                    self._jobs[job.rid] = job
                for job in cancels:
                    self._cancel(job)
                if eng.has_work:
                    eng.step()
                    self.peak_running = max(self.peak_running, eng.running)
                    if eng.stage_runs == 0:  # nothing could run (KV full): wait, do not spin
                        with self._cv:
                            self._cv.wait(timeout=0.01)
                for gen in eng.finished:
                    job = self._jobs.pop(gen.req.id, None)
                    eng.forget(gen.req.id)
                    if job is not None:
                        self.served += 1
                        job.post("done", "length")  # random weights: no end-of-sequence token, so always length
                eng.finished.clear()
            except Exception as e:  # noqa: BLE001 - the engine's state is unknown now: fail every request clearly
                self._fail(f"{type(e).__name__}: {e}")
                break
        for job in self._jobs.values():
            job.post("error", self.failed or "the server is shutting down")

    def _fail(self, why: str) -> None:
        with self._cv:
            self.failed = why
            pending, self._inbox = self._inbox, []
        for job in pending:
            job.post("error", why)
