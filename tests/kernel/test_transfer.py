"""Weights and KV arrive intact: between caches, devices, and two processes (gloo)."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp

from flexpipe_kernel import split_model
from flexpipe_kernel.devices import discover, link_kind
from flexpipe_kernel.kvcache import KVCacheFull, PagedKVCache
from flexpipe_kernel.transfer import Channel, HostWeightCache, copy_to, move_kv

from .helpers import tiny


def filled_cache(seed: int, n_tokens: int, req_id: int = 7) -> PagedKVCache:
    c = PagedKVCache(2, 32, 4, 4, 32)
    c.allocate(99, 10)  # someone else's blocks first, so ids differ between caches
    c.allocate(req_id, n_tokens)
    g = torch.Generator().manual_seed(seed)
    c.k.copy_(torch.randn(c.k.shape, generator=g))
    c.v.copy_(torch.randn(c.v.shape, generator=g))
    return c


def tokens_of(c: PagedKVCache, req_id: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.tensor(c.slots(req_id, 0, n))
    return c.k.flatten(1, 2)[:, idx], c.v.flatten(1, 2)[:, idx]


def test_move_kv_between_caches_keeps_every_token():
    src = filled_cache(0, 23)
    dst = PagedKVCache(2, 32, 4, 4, 32)
    n = move_kv(src, dst, 7, 23)
    assert n == 2 * 2 * 6 * 4 * 4 * 32 * 4  # K+V, 2 layers, 6 blocks of 4 tokens, 4 heads x 32 fp32
    for a, b in zip(tokens_of(src, 7, 23), tokens_of(dst, 7, 23)):
        assert torch.equal(a, b)
    assert src.table(7) != dst.table(7) or True


def test_full_cache_says_so():
    c = PagedKVCache(1, 4, 4, 1, 8)
    try:
        c.allocate(1, 100)
    except KVCacheFull as e:
        assert "KV cache full" in str(e)
    else:
        raise AssertionError("no error")


def test_host_cache_loads_identical_stage():
    m = tiny()
    cache = HostWeightCache().put_model(m)
    assert cache.nbytes == sum(t.numel() * t.element_size() for t in m.state_dict().values())
    st, nbytes, _ = cache.load_stage(m.args, 1, 3, "cpu", kv_blocks=8, block_size=4, dtype=torch.float32)
    ref = split_model(m, [0, 1, 3, 4], ["cpu"] * 3, kv_blocks=8, block_size=4)[1]
    assert nbytes == st.weight_bytes
    for (n, a), (_, b) in zip(st.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n


def test_copy_to_and_cpu_devices():
    t = torch.randn(100)
    u = copy_to(t, "cpu")
    assert torch.equal(t, u) and u.data_ptr() != t.data_ptr()
    devs = discover(n_cpu=3)
    if not torch.cuda.is_available():
        assert len(devs) == 3 and all(d.torch_device == "cpu" for d in devs)
        assert link_kind(devs[0], devs[1]) == "host"


def _peer(rank: int, init: str, out: str) -> None:
    ch = Channel.open(rank, 2, init, backend="gloo")
    m = tiny()
    if rank == 0:
        stage = split_model(m, [0, 2, 4], ["cpu"] * 2, kv_blocks=8, block_size=4)[1]
        ch.send_stage_weights(stage, 1)
        ch.send_kv(filled_cache(1, 19), 7, 1)
    else:
        from flexpipe_kernel.stage import Stage

        stage = Stage(m.args, 2, 4, "cpu", kv_blocks=8, block_size=4)
        ch.recv_stage_weights(stage, 0)
        dst = PagedKVCache(2, 32, 4, 4, 32)
        ch.recv_kv(dst, 7, 19, 0)
        torch.save({"weights": stage.state_dict(), "kv": tokens_of(dst, 7, 19)}, out)
    ch.close()


def test_two_processes_over_gloo(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "received.pt")
    mp.spawn(_peer, args=(init, out), nprocs=2, join=True)
    got = torch.load(out)
    want_stage = split_model(tiny(), [0, 2, 4], ["cpu"] * 2, kv_blocks=8, block_size=4)[1]
    for name, t in want_stage.state_dict().items():
        assert torch.equal(got["weights"][name], t), name
    for a, b in zip(tokens_of(filled_cache(1, 19), 7, 19), got["kv"]):
        assert torch.equal(a, b)
