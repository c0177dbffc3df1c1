"""The decoder and its paged attention against plain dense computation."""

from __future__ import annotations

import pytest
import torch

from flexpipe_kernel import PRESETS, PipelineEngine, split_model
from flexpipe_kernel.model import StepMeta, build_model, load_safetensors, paged_attention
from flexpipe_sim.models import get_model

from .helpers import prompts, reference, tiny


def test_paged_attention_equals_dense_attention():
    # Random q/k/v, contexts scattered over shuffled blocks; compare with SDPA on contiguous tensors.
    torch.manual_seed(0)
    H, KVH, D, bs = 8, 4, 32, 4
    seqs = [(7, 7), (1, 19), (5, 12)]  # (new tokens, context after step)
    nblocks = 64
    flat_k = torch.randn(nblocks * bs, KVH, D)
    flat_v = torch.randn(nblocks * bs, KVH, D)
    perm = torch.randperm(nblocks).tolist()
    tables, q_parts, ref_parts = [], [], []
    for n, ctx in seqs:
        nb = -(-ctx // bs)
        table, perm = perm[:nb], perm[nb:]
        tables.append(table)
        q = torch.randn(n, H, D)
        q_parts.append(q)
        idx = (torch.tensor(table)[:, None] * bs + torch.arange(bs)).reshape(-1)[:ctx]
        k = flat_k[idx].repeat_interleave(H // KVH, 1)
        v = flat_v[idx].repeat_interleave(H // KVH, 1)
        scores = torch.einsum("nhd,chd->hnc", q, k) / D**0.5
        causal = torch.arange(ctx)[None, :] <= torch.arange(ctx - n, ctx)[:, None]
        scores = scores.masked_fill(~causal, float("-inf"))
        ref_parts.append(torch.einsum("hnc,chd->nhd", scores.softmax(-1), v))
    meta = StepMeta([0, 1, 2], torch.zeros(sum(n for n, _ in seqs), dtype=torch.long), [n for n, _ in seqs],
                    [c for _, c in seqs], block_tables=tables)
    out = paged_attention(torch.cat(q_parts), flat_k, flat_v, meta, bs)
    # fp32: einsum reference vs fused SDPA differ only by summation order
    torch.testing.assert_close(out, torch.cat(ref_parts), rtol=1e-5, atol=1e-5)


def test_presets_match_the_simulator_catalogue():
    for preset, sim_name in (("llama2-7b", "llama2-7b"), ("llama3-8b", "llama3-8b")):
        a, m = PRESETS[preset], get_model(sim_name)
        assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.ffn_dim, a.vocab_size) == (
            m.hidden, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate, m.vocab)


def test_random_weights_are_deterministic():
    a, b = build_model("tiny", seed=3), build_model("tiny", seed=3)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na


def test_safetensors_round_trip_with_hf_names(tmp_path):
    from safetensors.torch import save_file

    src = tiny()
    state = {}
    for name, t in src.state_dict().items():  # write Hugging Face Llama names
        hf = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}.get(name)
        if hf is None:
            _, i, rest = name.split(".", 2)
            mod, param = rest.rsplit(".", 1)
            mod = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
                   "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
                   "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
                   "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
                   "ffn_norm": "post_attention_layernorm"}[mod]
            hf = f"model.layers.{i}.{mod}.{param}"
        state[hf] = t.contiguous()
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    dst = load_safetensors(build_model("tiny", seed=99), [path])
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), n
    bad = tmp_path / "bad.safetensors"
    save_file({"model.norm.weight": torch.ones(7)}, str(bad))
    with pytest.raises(ValueError, match="shape"):
        load_safetensors(build_model("tiny"), [bad], strict=False)


def test_a_request_does_not_depend_on_its_batch():
    m = tiny()
    ps = prompts([9, 31, 4, 17, 22, 6])
    ref = reference(m, ps, 10)
    alone = []
    for p in ps:
        eng = PipelineEngine(split_model(m, [0, 4], ["cpu"], kv_blocks=64, block_size=8))
        rid = eng.add_request(p, 10)
        eng.run()
        alone.append(eng.gens[rid].output)
    eng = PipelineEngine(split_model(m, [0, 4], ["cpu"], kv_blocks=256, block_size=8), token_budget=40)
    ids = [eng.add_request(p, 10) for p in ps]
    eng.run()
    assert alone == [eng.gens[i].output for i in ids] == ref
