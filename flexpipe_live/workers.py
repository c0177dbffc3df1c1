"""One worker thread per device: a tick's stage calls on different devices run at the same time, as
stages on separate GPUs do (PyTorch releases the GIL inside its kernels); calls on one device run one
after another, in the order the engine gives them."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch

from flexpipe_kernel.model import StepMeta

from .pipeline import LivePipeline


def _timed(stage, x: torch.Tensor, meta: StepMeta) -> tuple[torch.Tensor, float]:
    t = time.perf_counter()
    out = stage(x, meta)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return out, time.perf_counter() - t


class DeviceWorkers:
    def __init__(self, n_devices: int) -> None:
        # each worker keeps the process's intra-op thread count (1 on CPU, as the profile was measured)
        n = torch.get_num_threads()
        self.pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"device{i}", initializer=torch.set_num_threads,
                                         initargs=(n,)) for i in range(n_devices)]

    def runner(self, p: LivePipeline):
        """The engine's stage_runner for pipeline p; it adds each call's own time to p.stage_s."""

        def run(calls: list[tuple[int, torch.Tensor, StepMeta]]) -> list[torch.Tensor]:
            stages = p.engine.stages
            if len(calls) == 1:
                k, x, m = calls[0]
                res = [_timed(stages[k], x, m)]
            else:
                futs = [self.pools[p.plan[k].gpu].submit(_timed, stages[k], x, m) for k, x, m in calls]
                res = [f.result() for f in futs]
            p.stage_s += sum(dt for _, dt in res)
            return [out for out, _ in res]

        return run

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True)
