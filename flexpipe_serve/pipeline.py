"""What `serve` runs: the devices it was given, the scenario's model with random weights, and that
model split into one pipeline stage per device."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from flexpipe_kernel import PRESETS, ModelArgs, build_model, split_model
from flexpipe_kernel.stage import Stage


class ServeSetupError(ValueError):
    """Bad --devices, an unknown model, or a model that does not fit: one line for the CLI."""


_CPU = re.compile(r"^cpu(?::(\d+))?$")
_CUDA = re.compile(r"^cuda:(\d+)$")


def parse_devices(spec: str) -> list[str]:
    """`cpu:N` -> N logical CPU stages; `cuda:0,cuda:1` -> one stage per GPU; `cpu` -> one stage."""
    spec = spec.strip()
    m = _CPU.match(spec)
    if m:
        n = int(m.group(1) or 1)
        if n < 1:
            raise ServeSetupError(f"--devices {spec!r}: need at least one CPU device")
        return ["cpu"] * n
    parts = [p.strip() for p in spec.split(",")]
    out = []
    for p in parts:
        m = _CUDA.match(p)
        if not m:
            raise ServeSetupError(f"--devices {spec!r}: expected cpu:N or a comma-separated list like cuda:0,cuda:1")
        idx = int(m.group(1))
        if not torch.cuda.is_available():
            raise ServeSetupError(f"--devices {spec!r}: CUDA is not available on this machine (use cpu:N)")
        if idx >= torch.cuda.device_count():
            raise ServeSetupError(f"--devices {spec!r}: {p} does not exist ({torch.cuda.device_count()} GPUs here)")
        out.append(p)
    if len(set(out)) != len(out):
        raise ServeSetupError(f"--devices {spec!r}: a GPU is listed twice")
    return out


def model_args(scenario_model, preset: str | None) -> tuple[str, ModelArgs]:
    """The kernel shape to serve: --model PRESET if given, else the scenario's first model by shape."""
    if preset:
        if preset not in PRESETS:
            raise ServeSetupError(f"--model {preset!r}: unknown preset; one of {', '.join(sorted(PRESETS))}")
        return preset, PRESETS[preset]
    spec = scenario_model.spec()
    if spec.kind != "decoder" or spec.mlp != "swiglu":
        raise ServeSetupError(f"model {spec.name}: the kernel serves Llama-style decoders only "
                              f"(this is a {spec.kind} with {spec.mlp}); pass --model tiny")
    return spec.name, ModelArgs(spec.hidden, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.vocab,
                                spec.intermediate, spec.max_context)


def weight_bytes(args: ModelArgs, dtype: torch.dtype) -> int:
    per_layer = 2 * args.dim * args.dim + 2 * args.dim * args.n_kv_heads * args.head_dim + 3 * args.dim * args.ffn_dim
    return (args.n_layers * per_layer + 2 * args.vocab_size * args.dim) * torch.tensor([], dtype=dtype).element_size()


@dataclass
class Pipeline:
    name: str
    args: ModelArgs
    stages: list[Stage]
    devices: list[str]
    kv_blocks: int
    block_size: int

    @property
    def kv_tokens(self) -> int:
        return self.kv_blocks * self.block_size


def build_pipeline(name: str, args: ModelArgs, devices: list[str], *, seed: int = 0, kv_blocks: int = 512,
                   block_size: int = 16, dtype: torch.dtype | None = None) -> Pipeline:
    """Random weights (seed), layers split as evenly as they go, one stage per device."""
    if len(devices) > args.n_layers:
        raise ServeSetupError(f"{len(devices)} devices for a {args.n_layers}-layer model: at most one stage per layer")
    on_gpu = devices[0].startswith("cuda")
    dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
    need = weight_bytes(args, dtype)
    # CPU stages share host memory (and the host copy made while splitting doubles it); GPU stages
    # each hold about 1/n of the layers. 0.8: leave room for KV, activations and the CUDA context.
    if on_gpu:
        need, have, where = need / len(devices), min(torch.cuda.get_device_properties(torch.device(d)).total_memory
                                                      for d in devices), "each GPU has"
    else:
        need, have, where = 2 * need, _host_memory(), "the host has"
    if need > 0.8 * have:
        raise ServeSetupError(f"model {name} needs {need / 2**30:.1f} GiB per device for its weights; {where} "
                              f"{have / 2**30:.1f} GiB (pass --model tiny)")
    n = len(devices)
    cuts = [round(i * args.n_layers / n) for i in range(n + 1)]
    model = build_model(args, seed=seed, dtype=dtype)  # on the host; split_model copies each stage over
    try:
        stages = split_model(model, cuts, devices, kv_blocks=kv_blocks, block_size=block_size)
    except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
        raise ServeSetupError(f"model {name} with {kv_blocks} KV blocks does not fit on {devices}: {e}") from None
    return Pipeline(name, args, stages, devices, kv_blocks, block_size)


def _host_memory() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 1 << 62
