"""A paged-attention A100 cost model from Vidur's published operator timings (not our measurement).

Vidur (Agrawal et al., "Vidur: A Large-Scale Simulation Framework for LLM Inference", MLSys 2024,
github.com/microsoft/vidur, MIT licence) ships per-operator GPU timings its authors measured on an
A100 for Llama-2-7B: the linear layers, norms, activation, rotary and residual add per number of
tokens (mlp.csv), and FlashAttention prefill/decode (attention.csv; our copy is reconstructed from
Vidur's samples, see the data folder's README). Vidur prices one decoder layer as the sum of these
operators (vidur/entities/execution_time.py, `_get_block_execution_time`):

    attention: input_layernorm + attn_pre_proj (qkv) + attn_rope + attn_prefill|attn_decode
               + attn_kv_cache_save + attn_post_proj (o) [+ tensor-parallel all-reduce]
    mlp:       post_attention_layernorm + mlp_up_proj (gate+up) + mlp_act + mlp_down_proj [+ TP]
    block:     attention + mlp + add

We sum the same operators (medians, tensor-parallel 1, so no all-reduce) into our profile format:
prefill(N) = ops(N tokens) + attn_prefill(chunk N, kv 0); decode(B, C) = ops(B tokens) +
attn_decode(B, kv C). `attn_kv_cache_save` (writing the step's new K and V, 16 kB per token per
layer) is not in the reconstructed attention table and is left out. Vidur times no LM head, so
the profile's head is priced by the roofline fitted below (A100 spec sheet x fitted efficiencies).

`fit_roofline` fits costmodel.Roofline's three efficiencies (compute, weight reads, KV reads, as
fractions of the A100 spec sheet) to the profile grid by least squares on log times; `engine: paged`
scenarios price every model without a Vidur profile with that roofline.

Rebuild (one command): flexpipe-sim calibrate --from-vidur ../shared/peer-data/vidur
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from flexpipe_core.work import BatchWork

from .costmodel import CostModel, Roofline
from .hardware import get_gpu
from .models import ModelSpec, get_model
from .profiles import FORMAT, VERSION, Profile, load_profile, validate

PROFILE_NAME = "a100-80gb-llama2-7b-vidur"
PROFILE_FILE = f"calibrate/profiles/{PROFILE_NAME}.json"
GPU_KIND = "a100-80gb"  # Vidur's "a100" device SKU has 80 GB (vidur/config/device_sku_config.py)
MODEL = "llama2-7b"
DATA_SUBDIR = "hf_datasets/local/a100-llama-2-7b-hf"

# Per-layer operators Vidur sums into one decoder block (mlp.csv columns time_stats.<op>.median);
# the attention kernel itself comes from attention.csv.
LAYER_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
             "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")

# Grids: every point is a row Vidur's tables hold (no interpolation of their data). Prefill attention
# starts at a 64-token chunk; smaller prefills use the 64-token attention time (0.015 ms, an upper
# bound). Contexts stop at 4032, the largest KV size in the decode table.
GRID = {"prefill": [8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096],
        "batch": [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128],
        "context": [32, 64, 128, 256, 512, 1024, 2048, 4032],
        "head": [1, 8, 32, 128, 256]}


def _read_tables(data_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    import pandas as pd

    d = Path(data_dir)
    sub = d / DATA_SUBDIR if (d / DATA_SUBDIR).is_dir() else d
    try:
        mlp = pd.read_csv(sub / "mlp.csv.xz")
        attn = pd.read_csv(sub / "attention.csv.xz")
    except FileNotFoundError as e:
        raise ValueError(f"--from-vidur {data_dir}: no Vidur A100 Llama-2-7B tables ({e.filename})") from None
    cfg_path = sub / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    commit_file = d / "vidur_git_commit.txt"
    if commit_file.is_file():
        cfg.setdefault("commit", commit_file.read_text().strip())
    return mlp, attn, cfg


def _layer_ops_ms(mlp) -> dict[int, float]:
    """Sum of the non-attention operators of one layer (ms), per token count, tensor-parallel 1."""
    tp1 = mlp[mlp["num_tensor_parallel_workers"] == 1].drop_duplicates("num_tokens").set_index("num_tokens")
    total = sum(tp1[f"time_stats.{op}.median"] for op in LAYER_OPS)
    return {int(n): float(t) for n, t in total.items()}


def build_profile(data_dir: str | Path) -> dict[str, Any]:
    """Our profile (docs/profiles.md, kind "external") from Vidur's A100 Llama-2-7B tables."""
    mlp, attn, cfg = _read_tables(Path(data_dir))
    ops = _layer_ops_ms(mlp)
    tp1 = attn[attn["num_tensor_parallel_workers"] == 1]
    dec = tp1[~tp1["is_prefill"]].set_index(["batch_size", "kv_cache_size"])["time_stats.attn_decode.median"]
    pre = tp1[tp1["is_prefill"] & (tp1["kv_cache_size"] == 0)].set_index("prefill_chunk_size")[
        "time_stats.attn_prefill.median"]
    smallest_chunk = int(pre.index.min())

    def need(table: dict | Any, key: Any, what: str) -> float:
        try:
            return float(table[key])
        except KeyError:
            raise ValueError(f"Vidur tables have no {what} row for {key}") from None

    prefill = [1e-3 * (need(ops, n, "MLP") + need(pre, max(n, smallest_chunk), "attention prefill"))
               for n in GRID["prefill"]]
    decode = [[1e-3 * (need(ops, b, "MLP") + need(dec, (b, c), "attention decode")) for c in GRID["context"]]
              for b in GRID["batch"]]
    model, gpu = get_model(MODEL), get_gpu(GPU_KIND)
    commit = cfg.get("commit", "unknown")
    raw: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "name": PROFILE_NAME, "kind": "external",
        "provenance": f"operator timings measured by Vidur's authors on A100 (microsoft/vidur@{commit[:7]}), not by us",
        "source": (f"Vidur (Agrawal et al., MLSys 2024), microsoft/vidur commit {commit}, "
                   "data/profiling/compute/a100/meta-llama/Llama-2-7b-hf (mlp.csv; attention.csv reconstructed "
                   "from Vidur's samples); operator timings measured by Vidur's authors"),
        "derived_from": None, "date": "2024 (Vidur's measurement); assembled 2026-12-01",
        "device": {"kind": gpu.name, "name": "A100-80GB (Vidur's profiling node)", "memory_bytes": gpu.memory_bytes,
                   "driver": "-", "torch": "-", "cuda": "-", "host": "-"},
        "model": {"preset": model.name, "hidden": model.hidden, "num_heads": model.num_heads,
                  "num_kv_heads": model.num_kv_heads, "intermediate": model.intermediate, "vocab": model.vocab,
                  "dtype_bytes": model.dtype_bytes, "kv_bytes_per_token_layer": model.kv_bytes_per_token_layer},
        "method": {"statistic": "median per operator (Vidur's time_stats.*.median), tensor-parallel 1",
                   "layer": "sum of " + ", ".join(LAYER_OPS) + " + attn_prefill (chunk N, kv 0) | attn_decode "
                            "(batch B, kv C), as vidur/entities/execution_time.py sums a block",
                   "left_out": "attn_kv_cache_save (not in the reconstructed attention table); CPU overheads "
                               "(scheduling, sampling, input preparation: Vidur models them apart)",
                   "head": "Vidur times no LM head: the vocab x hidden matmul (weight read or compute, whichever "
                           "is longer) priced by the roofline fitted to this grid (roofline_fit)",
                   "build": "flexpipe-sim calibrate --from-vidur ../shared/peer-data/vidur"},
        "prefill": {"tokens": GRID["prefill"], "layer_s": prefill},
        "decode": {"batch": GRID["batch"], "context": GRID["context"], "layer_s": decode},
        "overheads": {"stage_step_s": 0.0},
        "links": {"host_to_device_pinned_Bps": gpu.host_link_bytes_per_s},
    }
    validate(raw, PROFILE_NAME)
    fit = fit_roofline(Profile(raw), model)
    raw["roofline_fit"] = fit
    cost = CostModel(model, roofline_from_fit(fit))
    raw["head"] = {"batch": GRID["head"], "s": [cost.head_time(gpu, b) for b in GRID["head"]]}
    return validate(raw, PROFILE_NAME)


# --- the roofline fitted to the profile --------------------------------------------------------------
def _grid_points(p: Profile) -> tuple[list[BatchWork], np.ndarray]:
    works, times = [], []
    for n, t in zip(p.raw["prefill"]["tokens"], p.raw["prefill"]["layer_s"]):
        works.append(BatchWork(n, 1, n * (n + 1) // 2, 0, 0))
        times.append(t)
    for b, row in zip(p.raw["decode"]["batch"], p.raw["decode"]["layer_s"]):
        for c, t in zip(p.raw["decode"]["context"], row):
            works.append(BatchWork(b, b, b * c, b * c, b))
            times.append(t)
    return works, np.asarray(times, float)


def fit_roofline(p: Profile, model: ModelSpec | None = None) -> dict[str, Any]:
    """Least squares on log times over every grid point (prefill and decode) of
    costmodel.CostModel.layer_time = max(compute, weight + KV reads) on the profile's GPU spec
    sheet, in the three efficiencies. Returns them with the fit's errors on the grid."""
    from scipy.optimize import least_squares

    model = model or get_model(p.model.get("preset", MODEL))
    gpu = get_gpu(p.gpu_kind)
    works, t = _grid_points(p)

    def predict(x: np.ndarray) -> np.ndarray:
        cost = CostModel(model, Roofline(*np.exp(x)))
        return np.array([cost.layer_time(gpu, w) for w in works])

    x0 = np.log([0.5, 0.5, 0.5])
    sol = least_squares(lambda x: np.log(predict(x)) - np.log(t), x0, bounds=(np.log(0.01), np.log(1.5)),
                        method="trf", x_scale=1.0)
    eff = np.exp(sol.x)
    rel = predict(sol.x) / t - 1.0
    return {"eff_compute": round(float(eff[0]), 4), "eff_weight_bw": round(float(eff[1]), 4),
            "eff_kv_bw": round(float(eff[2]), 4), "points": int(len(t)),
            "max_abs_rel_err": round(float(np.abs(rel).max()), 4),
            "rms_log_err": round(float(math.sqrt(np.mean(np.log1p(rel) ** 2))), 4),
            "method": "scipy least_squares on log(layer time) over all prefill and decode grid points; "
                      "efficiencies are fractions of the a100-80gb spec sheet (312 TFLOP/s, 2,039 GB/s)"}


def roofline_from_fit(fit: dict[str, Any]) -> Roofline:
    return Roofline(eff_compute=float(fit["eff_compute"]), eff_weight_bw=float(fit["eff_weight_bw"]),
                    eff_kv_bw=float(fit["eff_kv_bw"]),
                    source=(f"A100 spec-sheet roofline x efficiencies fitted to Vidur's A100 Llama-2-7B "
                            f"measurements (compute {fit['eff_compute']:.2f}, weights {fit['eff_weight_bw']:.2f}, "
                            f"KV {fit['eff_kv_bw']:.2f}); derived from Vidur's A100 measurements"))


# --- where the shipped profile lives -----------------------------------------------------------------
def profile_path() -> Path:
    from .paths import resolve_data_path

    repo = Path(__file__).resolve().parents[1]
    return Path(resolve_data_path(PROFILE_FILE, repo))


def shipped_profile() -> Profile:
    return load_profile(profile_path())
