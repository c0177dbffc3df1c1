from __future__ import annotations

import torch

from flexpipe_kernel import build_model


def prompts(lengths: list[int], vocab: int = 1024, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


_MODELS: dict = {}


def tiny(seed: int = 0):
    if seed not in _MODELS:
        _MODELS[seed] = build_model("tiny", seed=seed)
    return _MODELS[seed]


_REF: dict = {}


def reference(model, ps: list[list[int]], n: int) -> list[list[int]]:
    key = (id(model), tuple(map(tuple, ps)), n)
    if key not in _REF:
        _REF[key] = [model.generate_dense(p, n) for p in ps]
    return _REF[key]
