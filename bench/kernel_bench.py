"""Kernel efficiency, as ratios measured in one run on one device.

  decode   one stage's decode step at batch 1: (weight + KV bytes read) / time, over the device's
           measured copy bandwidth (on a GPU, compare also with the HBM spec: --hbm-gbs)
  prefill  a stage's prefill of N tokens: model FLOP/s over a bare matmul's FLOP/s on the same device
  kv-move  KV block migration between two caches: bytes/s over the measured copy bandwidth
  weights  stage load from the host weight cache: bytes/s over the measured host->device rate
  refactor split 2 -> 4 stages with requests in flight: pause, total time, tokens/s before vs during

    python bench/kernel_bench.py                       # CPU, small model (CI keeps it working)
    python bench/kernel_bench.py --device cuda --model llama2-7b --layers 8 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch

from flexpipe_kernel import PRESETS, PipelineEngine, build_model, split_model
from flexpipe_kernel.kvcache import PagedKVCache
from flexpipe_kernel.model import ModelArgs, StepMeta
from flexpipe_kernel.refactor import refactor
from flexpipe_kernel.stage import Stage
from flexpipe_kernel.transfer import HostWeightCache, move_kv, sync


def timed(fn, device, repeat: int = 10, warmup: int = 3) -> float:
    """Median seconds of fn()."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def copy_bandwidth(device, dtype) -> float:
    """Device memory bandwidth as read + write bytes/s of a large copy."""
    n = (256 if torch.device(device).type == "cuda" else 64) * 2**20 // 2
    a = torch.empty(n, dtype=dtype, device=device)
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a), device)
    return 2 * a.numel() * a.element_size() / t


def matmul_flops(device, dtype, n: int) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / timed(lambda: a @ b, device)


def h2d_bandwidth(device) -> float:
    if torch.device(device).type != "cuda":
        return float("nan")
    host = torch.empty(256 * 2**20, dtype=torch.uint8).pin_memory()
    dev = torch.empty_like(host, device=device)
    return host.numel() / timed(lambda: dev.copy_(host, non_blocking=True), device)


def stage_step(stage: Stage, batch: int, ctx: int, new: int) -> tuple[callable, int]:
    """A callable running one step of `batch` sequences with `new` tokens each at context `ctx`."""
    cache = stage.cache
    for rid in range(batch):
        cache.free(rid)
        cache.allocate(rid, ctx)
    meta = StepMeta(list(range(batch)), torch.tensor([p for _ in range(batch) for p in range(ctx - new, ctx)]),
                    [new] * batch, [ctx] * batch)
    x = torch.randint(0, stage.args.vocab_size, (batch * new,), device=stage.device) if stage.is_first else \
        torch.randn(batch * new, stage.args.dim, dtype=stage.dtype, device=stage.device)
    kv_bytes = batch * ctx * 2 * stage.args.n_kv_heads * stage.args.head_dim * stage.dtype.itemsize * len(stage.layers)
    return (lambda: stage(x, meta)), kv_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description="kernel efficiency ratios")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=None, help="preset (default: llama2-7b on GPU, small on CPU)")
    ap.add_argument("--layers", type=int, default=None, help="layers in the measured stage")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    ap.add_argument("--prefill", type=int, default=None, help="prefill tokens (default 2048 GPU, 256 CPU)")
    ap.add_argument("--hbm-gbs", type=float, default=None, help="spec HBM bandwidth, GB/s, for a second ratio")
    args = ap.parse_args()
    gpu = torch.device(args.device).type == "cuda"
    name = args.model or ("llama2-7b" if gpu else "small")
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    base = PRESETS[name]
    layers = args.layers or (8 if gpu else base.n_layers)
    margs = ModelArgs(**{**base.__dict__, "n_layers": layers})
    prefill_n = args.prefill or (2048 if gpu else 256)
    dev = args.device
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if gpu else 'cpu'}), model {name} x {layers} layers, {dtype}")

    bw = copy_bandwidth(dev, dtype)
    mm = matmul_flops(dev, dtype, 4096 if gpu else 1024)
    print(f"measured: copy {bw / 1e9:,.1f} GB/s, matmul {mm / 1e12:,.2f} TFLOP/s, host->device {h2d_bandwidth(dev) / 1e9:,.1f} GB/s")

    stage = Stage(margs, 1, layers, dev, kv_blocks=(64 * 1024 // 16) if gpu else 512, block_size=16, dtype=dtype)
    w_bytes = stage.weight_bytes
    run, kv = stage_step(stage, 1, 512, 1)
    t = timed(run, dev)
    print(f"decode  batch 1 @ 512: {t * 1e3:.3f} ms, {(w_bytes + kv) / t / 1e9:,.1f} GB/s = "
          f"{(w_bytes + kv) / t / bw:.2f} of measured copy bandwidth"
          + (f", {(w_bytes + kv) / t / (args.hbm_gbs * 1e9):.2f} of spec HBM" if args.hbm_gbs else ""))
    run, _ = stage_step(stage, 1, prefill_n, prefill_n)
    t = timed(run, dev, repeat=5)
    per_layer = 2 * (sum(p.numel() for p in stage.layers[0].parameters())) * prefill_n \
        + 4 * margs.dim * prefill_n * prefill_n / 2
    flops = per_layer * len(stage.layers)
    print(f"prefill {prefill_n} tokens: {t * 1e3:.2f} ms, {flops / t / 1e12:,.2f} TFLOP/s = {flops / t / mm:.2f} of measured matmul")

    src = PagedKVCache(len(stage.layers), 256, 16, margs.n_kv_heads, margs.head_dim, dtype, dev)
    dst = PagedKVCache(len(stage.layers), 256, 16, margs.n_kv_heads, margs.head_dim, dtype, dev)
    src.allocate(0, 200 * 16)

    def mv():
        dst.free(0)
        return move_kv(src, dst, 0, 200 * 16)

    nbytes = mv()
    t = timed(mv, dev)
    print(f"kv-move {nbytes / 2**20:.0f} MiB same device: {nbytes / t / 1e9:,.1f} GB/s = {2 * nbytes / t / bw:.2f} of copy bandwidth (read+write)")

    model = build_model(ModelArgs(**{**base.__dict__, "n_layers": 4}) if not gpu else margs, dtype=dtype)
    cache = HostWeightCache().put_model(model)
    loads = [cache.load_stage(model.args, 0, model.args.n_layers, dev, kv_blocks=16, block_size=16, dtype=dtype)
             for _ in range(3)]  # the first pays one-off costs (allocator growth, page faults)
    nb, t = loads[-1][1], min(x[2] for x in loads[1:])
    ref = h2d_bandwidth(dev) if gpu else bw / 2
    print(f"weights {nb / 2**20:.0f} MiB from host cache: {nb / t / 1e9:,.1f} GB/s = {nb / t / ref:.2f} of "
          f"{'host->device' if gpu else 'copy'} rate (includes allocating the stage)")

    refactor_bench(model, dev, dtype, 32 if gpu else 8, 1024 if gpu else 128)


def refactor_bench(model, dev, dtype, n_req: int, ctx: int) -> None:
    n = model.args.n_layers
    cuts2, cuts4 = [0, n // 2, n], [0, n // 4, n // 2, 3 * n // 4, n]
    cache = HostWeightCache().put_model(model)
    blocks = n_req * (ctx + 256) // 16 + 64
    eng = PipelineEngine(split_model(model, cuts2, [dev] * 2, kv_blocks=blocks, block_size=16),
                         token_budget=max(4096, ctx * 4), max_seqs=n_req)
    g = torch.Generator().manual_seed(0)
    for _ in range(n_req):
        eng.add_request(torch.randint(0, model.args.vocab_size, (ctx,), generator=g).tolist(), 200)
    while any(not g.req.generated for g in eng.gens.values()):
        eng.step()

    def tokens() -> int:
        return sum(g.req.generated for g in eng.gens.values())

    t0, k0 = time.perf_counter(), tokens()
    for _ in range(20):
        eng.step()
    sync(dev)
    before = (tokens() - k0) / (time.perf_counter() - t0)
    t0, k0 = time.perf_counter(), tokens()
    rec = refactor(eng, cuts4, [dev] * 4, cache)
    sync(dev)
    during = (tokens() - k0) / (time.perf_counter() - t0)
    print(f"refactor 2 -> 4 stages, {n_req} requests of {ctx} context in flight: pause {rec.pause_s * 1e3:.2f} ms, "
          f"total {rec.duration_s * 1e3:.1f} ms, {rec.rounds} rounds, KV {rec.kv_bytes / 2**20:.1f} MiB, "
          f"weights {rec.weight_bytes / 2**20:.0f} MiB")
    print(f"throughput before {before:,.0f} tok/s, during refactor {during:,.0f} tok/s "
          f"(ratio {during / before:.2f}; on one device the new stages' loads and copies share it with serving)")


if __name__ == "__main__":
    main()
