"""Measure the kernel's real code paths on local devices and write a calibration profile
(format: docs/profiles.md; reader: flexpipe_sim/profiles.py).

Every point is measured in `passes` sweeps over the grid (median of >= `repeats` timed runs after
`warmup`, at least 0.15 s of them, per sweep); the stored value is the median of the sweeps, the
spread the lowest p10 and highest p90 of any sweep.
Stage steps are timed on a middle stage (no embedding, no head) of n layers. A step costs
O + n * layer(shape); O (the fixed per-step overhead: building slot tensors, launches) comes from
the same smallest decode step on a 1-layer stage, t1 = O + layer, so O = (n * t1 - t_n) / (n - 1).
Each grid point is stored as the per-layer time (t - O) / n; the head (final norm, LM head,
argmax) is measured on its own.
"""

from __future__ import annotations

import datetime as _dt
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from flexpipe_core.blocks import BlockManager
from flexpipe_sim.profiles import FORMAT, VERSION

from .kvcache import PagedKVCache
from .model import PRESETS, ModelArgs, StepMeta, build_model
from .stage import Stage
from .transfer import HostWeightCache, move_kv, sync

Progress = Callable[[str, int, int], None]  # (what, done, total)

QUICK = {"prefill": [16, 32, 64, 128, 256, 512, 1024], "batch": [1, 2, 4, 8, 16, 32, 64],
         "context": [64, 128, 256, 512, 1024], "head": [1, 16, 64]}
FULL = {"prefill": [16, 32, 64, 128, 256, 512, 1024, 2048, 4096], "batch": [1, 2, 4, 8, 16, 32, 64, 128, 256],
        "context": [128, 256, 512, 1024, 2048, 4096], "head": [1, 8, 32, 128, 256]}


def measure(fn: Callable[[], object], device, repeats: int, warmup: int,
            min_total_s: float = 0.15) -> tuple[float, float, float]:
    """(median, p10, p90) seconds of fn(): at least `repeats` runs and at least `min_total_s` of
    them (short steps get more runs, so the median is not one noisy moment of a shared machine)."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts: list[float] = []
    while len(ts) < repeats or (sum(ts) < min_total_s and len(ts) < 50 * repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    k = len(ts)
    return ts[k // 2], ts[max(0, int(0.1 * (k - 1)))], ts[int(0.9 * (k - 1))]


def step_fn(stage: Stage, batch: int, context: int, new: int) -> Callable[[], torch.Tensor]:
    """One stage step of `batch` sequences, `new` tokens each, reaching `context` (the kernel's path)."""
    cache = stage.cache
    # A fresh block pool each time, so every point reads the same (contiguous) block layout
    # whatever was measured before it.
    cache.blocks = BlockManager(cache.blocks.num_blocks, cache.block_size)
    for rid in range(batch):
        cache.allocate(rid, context)
    positions = torch.tensor([p for _ in range(batch) for p in range(context - new, context)])
    meta = StepMeta(list(range(batch)), positions, [new] * batch, [context] * batch)
    g = torch.Generator().manual_seed(batch * 7919 + context)
    if stage.is_first:
        x = torch.randint(0, stage.args.vocab_size, (batch * new,), generator=g).to(stage.device)
    else:
        x = (torch.randn(batch * new, stage.args.dim, generator=g) * 0.5).to(stage.device, stage.dtype)
    return lambda: stage(x, meta)


def _device_info(device: torch.device, gpu_kind: str | None) -> dict:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        name, mem = p.name, p.total_memory
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            driver = driver.decode() if isinstance(driver, bytes) else driver
        except Exception:  # noqa: BLE001 - driver version is informative only
            driver = "unknown"
    else:
        name, mem, driver = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)", 0, "-"
    return {"kind": gpu_kind or ("cpu" if device.type == "cpu" else name.lower().replace(" ", "-")),
            "name": name, "memory_bytes": mem, "driver": driver, "torch": torch.__version__,
            "cuda": torch.version.cuda or "-", "host": platform.node()}


def calibrate(model: str = "tiny", device: str = "cpu", *, quick: bool = True, layers: int | None = None,
              dtype: str | None = None, repeats: int = 7, warmup: int = 2, gpu_kind: str | None = None,
              name: str | None = None, progress: Progress | None = None, threads: int | None = 1,
              passes: int = 3) -> dict:
    dev = torch.device(device)
    dt = getattr(torch, dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    if dev.type == "cpu" and threads:
        # Shared VMs time a single intra-op thread far more repeatably than several competing for
        # the same vCPUs; the profile records the thread count it was measured with.
        torch.set_num_threads(threads)
    base = PRESETS[model]
    grid = QUICK if quick else FULL
    n_layers = layers or max(1, min(base.n_layers - 2, 4))
    args = replace(base, n_layers=n_layers + 2)  # a middle stage: layers 1 .. n_layers
    max_ctx = max(grid["context"] + grid["prefill"])
    args = replace(args, max_seq_len=max(args.max_seq_len, max_ctx))
    blocks = (max(grid["batch"]) * max(grid["context"]) + max(grid["prefill"])) // 16 + 16
    stage = Stage(args, 1, 1 + n_layers, dev, kv_blocks=blocks, block_size=16, dtype=dt)
    full = build_model(args, seed=0, dtype=dt, device="cpu")
    stage.load_from(full.state_dict())
    done = 0

    def tick(what: str, total: int) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(what, done, total)

    # Every grid point is measured in `passes` sweeps over the whole grid; its value is the median
    # of the sweeps' medians. A noisy moment of a shared machine then spoils one sweep of a point,
    # not the point.
    one = Stage(replace(args, n_layers=2), 1, 2, dev, kv_blocks=blocks, block_size=16, dtype=dt)
    one.load_from(full.state_dict())
    b0, c0 = grid["batch"][0], grid["context"][0]
    points = [("one", (b0, c0, 1)), ("n", (b0, c0, 1))]
    points += [("prefill", (1, n, n)) for n in grid["prefill"]]
    points += [("decode", (b, c, 1)) for b in grid["batch"] for c in grid["context"]]
    runs: dict[int, list[tuple[float, float, float]]] = {i: [] for i in range(len(points))}
    total = passes * len(points) + len(grid["head"]) + 2
    for sweep in range(passes):
        for i, (what, shape) in enumerate(points):
            st = one if what == "one" else stage
            runs[i].append(measure(step_fn(st, *shape), dev, repeats, warmup))
            tick(f"sweep {sweep + 1}/{passes}: {what} {shape[0]}x{shape[1]}", total)

    def point(i: int) -> tuple[float, float, float]:
        meds = sorted(r[0] for r in runs[i])
        return meds[len(meds) // 2], min(r[1] for r in runs[i]), max(r[2] for r in runs[i])

    # fixed per-step overhead O from the 1-layer and the n-layer stage at the smallest decode step
    t1, tn = point(0)[0], point(1)[0]
    overhead = max(0.0, (n_layers * t1 - tn) / (n_layers - 1)) if n_layers > 1 else 0.0

    def per_layer(t: float) -> float:
        return max(t - overhead, 1e-3 * t) / n_layers

    prefill = {"tokens": grid["prefill"], "layer_s": [], "p10": [], "p90": []}
    for i in range(2, 2 + len(grid["prefill"])):
        for k, v in zip(("layer_s", "p10", "p90"), point(i)):
            prefill[k].append(per_layer(v))
    decode = {"batch": grid["batch"], "context": grid["context"], "layer_s": [], "p10": [], "p90": []}
    i = 2 + len(grid["prefill"])
    for _ in grid["batch"]:
        rows = ([], [], [])
        for _ in grid["context"]:
            for row, v in zip(rows, point(i)):
                row.append(per_layer(v))
            i += 1
        for k, row in zip(("layer_s", "p10", "p90"), rows):
            decode[k].append(row)

    # head: final norm + LM head + argmax for B sequences (what the last stage adds)
    head_stage = Stage(replace(args, n_layers=1), 0, 1, dev, kv_blocks=blocks, block_size=16, dtype=dt)
    head_stage.load_from(full.state_dict())
    head = {"batch": grid["head"], "s": []}
    for b in grid["head"]:
        h = torch.randn(b, args.dim, dtype=dt, device=dev)
        med, _, _ = measure(lambda: head_stage.output(head_stage.norm(h)).argmax(-1), dev, repeats, warmup)
        head["s"].append(med)
        tick(f"head {b}", total)

    links = _links(stage, full, dev, dt, repeats, warmup)
    tick("links", total)
    pause = _refactor_pause(dev, dt, model)
    tick("refactor", total)
    kv_per_token_layer = 2 * args.n_kv_heads * args.head_dim * dt.itemsize
    return {
        "format": FORMAT, "version": VERSION,
        "name": name or f"{_device_info(dev, gpu_kind)['kind']}-{model}",
        "kind": "measured",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_info(dev, gpu_kind),
        "model": {"preset": model, "hidden": args.dim, "num_heads": args.n_heads, "num_kv_heads": args.n_kv_heads,
                  "intermediate": args.ffn_dim, "vocab": args.vocab_size, "dtype_bytes": dt.itemsize,
                  "kv_bytes_per_token_layer": kv_per_token_layer, "measured_layers": n_layers},
        "method": {"statistic": f"median over {passes} sweeps of per-sweep medians", "passes": passes,
                   "repeats": repeats, "min_total_s_per_point": 0.15, "warmup": warmup, "quick": quick,
                   "stage": f"middle stage of {n_layers} layers (no embedding, no head), time / layers",
                   "block_size": 16, "threads": torch.get_num_threads()},
        "prefill": prefill, "decode": decode, "head": head, "overheads": {"stage_step_s": overhead},
        "links": links, "refactor_pause": pause,
    }


def _links(stage: Stage, full, dev, dt, repeats: int, warmup: int) -> dict:
    """Host<->device, device copy, device<->device hops, weight loads, KV migration."""
    out: dict = {}
    n = 64 * 2**20
    host = torch.empty(n, dtype=torch.uint8)
    if dev.type == "cuda":
        pinned = host.pin_memory()
        d = torch.empty(n, dtype=torch.uint8, device=dev)
        out["host_to_device_pinned_Bps"] = n / measure(lambda: d.copy_(pinned, non_blocking=True), dev, repeats, warmup)[0]
        out["host_to_device_pageable_Bps"] = n / measure(lambda: d.copy_(host), dev, repeats, warmup)[0]
        out["device_to_host_pinned_Bps"] = n / measure(lambda: pinned.copy_(d, non_blocking=True), dev, repeats, warmup)[0]
        hops = {}
        for j in range(torch.cuda.device_count()):
            if j != dev.index:
                other = torch.empty(n, dtype=torch.uint8, device=f"cuda:{j}")
                hops[f"{dev.index}->{j}"] = n / measure(lambda: other.copy_(d, non_blocking=True), dev, repeats, warmup)[0]
        out["device_to_device_Bps"] = hops
    else:
        other = torch.empty_like(host)
        out["host_to_device_pinned_Bps"] = None  # no separate device memory on CPU
        out["device_copy_Bps"] = n / measure(lambda: other.copy_(host), dev, repeats, warmup)[0]
    # weight loads: from a safetensors file on local disk, and from the host cache
    from safetensors.torch import load_file, save_file

    state = {k: v.contiguous() for k, v in stage.state_dict().items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "stage.safetensors")
        save_file(state, path)
        t = measure(lambda: stage.load_state_dict(load_file(path, device=str(dev)), strict=False), dev, 3, 1)[0]
    out["safetensors_load_Bps"] = nbytes / t
    cache = HostWeightCache().put_model(full)
    t = min(cache.load_stage(full.args, 1, stage.end, dev, kv_blocks=4, block_size=16, dtype=dt)[2] for _ in range(3))
    out["host_cache_load_Bps"] = stage.weight_bytes / t
    # KV migration between two caches on this device
    src = PagedKVCache(len(stage.layers), 512, 16, stage.args.n_kv_heads, stage.args.head_dim, dt, dev)
    dst = PagedKVCache(len(stage.layers), 512, 16, stage.args.n_kv_heads, stage.args.head_dim, dt, dev)
    src.allocate(0, 400 * 16)

    def mv():
        dst.free(0)
        return move_kv(src, dst, 0, 400 * 16)

    moved = mv()
    out["kv_migration_Bps"] = moved / measure(mv, dev, repeats, warmup)[0]
    return out


def _refactor_pause(dev, dt, model: str) -> dict:
    """Pause of a 2 -> 4 stage split versus in-flight KV, on a small model."""
    from .engine import PipelineEngine
    from .refactor import refactor
    from .stage import split_model

    m = build_model(replace(PRESETS["tiny"], n_layers=4), seed=0, dtype=dt, device="cpu")
    cache = HostWeightCache().put_model(m)
    res = {"model": "tiny", "requests": [], "kv_mib": [], "pause_s": [], "duration_s": []}
    for n_req in (2, 8, 32):
        eng = PipelineEngine(split_model(m, [0, 2, 4], [dev] * 2, kv_blocks=n_req * 20 + 16, block_size=16),
                             token_budget=4096, max_seqs=n_req)
        g = torch.Generator().manual_seed(n_req)
        for _ in range(n_req):
            eng.add_request(torch.randint(0, m.args.vocab_size, (200,), generator=g).tolist(), 64)
        for _ in range(6):
            eng.step()
        rec = refactor(eng, [0, 1, 2, 3, 4], [dev] * 4, cache)
        res["requests"].append(n_req)
        res["kv_mib"].append(rec.kv_bytes / 2**20)
        res["pause_s"].append(rec.pause_s)
        res["duration_s"].append(rec.duration_s)
    return res
