"""The paper's workload (issue 11, "Workload and costs"): model kinds and their lengths, the stated
rate and CV, the warm burst test and its window under a horizon override."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flexpipe_sim.models import CATALOGUE
from flexpipe_sim.scenario import ScenarioError, load_scenario, parse_scenario
from flexpipe_sim.workload import build_workload
from flexpipe_sim.workload.arrivals import iat_cv
from flexpipe_sim.workload.lengths import SpeechLengths

from .helpers import small_raw

PAPER = Path(__file__).resolve().parents[1] / "scenarios" / "paper"


def _workload(sc):
    return build_workload(sc, np.random.default_rng(np.random.SeedSequence(sc.seed).spawn(3)[1]))


# --- 1. the paper's models -------------------------------------------------------------------------

def test_paper_models_have_their_kind_and_size():
    bert, whisper = CATALOGUE["bert-21b"], CATALOGUE["whisper-9b"]
    assert bert.kind == "encoder" and not bert.has_lm_head
    assert whisper.kind == "encoder-decoder" and whisper.encoder_tokens == 1500
    assert 20.5e9 < bert.total_bytes / 2 < 21.5e9  # fp16: 2 bytes a parameter
    assert 8.5e9 < whisper.total_bytes / 2 < 9.5e9
    # An encoder's last stage carries a pooler, not a vocab x hidden LM head.
    assert bert.head_bytes < bert.embedding_bytes / 4
    # Fused encoder+decoder layers: a frame or a decoded token costs one block + cross-attention
    # k, v projections (~14 h^2), not the whole fused layer (~28 h^2).
    h = whisper.hidden
    assert 13.5 * h * h < whisper.flops_per_token_layer / 2 < 14.5 * h * h < 0.55 * whisper.params_per_layer
    assert CATALOGUE["paper-9b"].kind == CATALOGUE["paper-21b"].kind == "decoder"  # old scenarios keep working


def test_lengths_follow_each_models_kind():
    raw = small_raw(horizon_s=600, models=[
        {"name": "llama2-7b", "slo": {"ttft_s": 2, "tpot_s": 0.1}},
        {"name": "whisper-9b", "slo": {"ttft_s": 2, "tpot_s": 0.16}},
        {"name": "bert-21b", "slo": {"ttft_s": 2, "tpot_s": 0.4}},
    ], **{"workload.arrivals": {"kind": "poisson", "rate": 10.0}})
    w = _workload(parse_scenario(raw))
    llama, whisper, bert = (w.model_idx == i for i in range(3))
    assert (w.output_tokens[bert] == 1).all() and (w.prompt_tokens[bert] <= 511).all()
    assert (w.prompt_tokens[whisper] == 1500).all()
    out = w.output_tokens[whisper]
    assert out.min() >= 7 and out.max() <= 104
    assert abs(out.mean() - SpeechLengths(1500).mean_output) < 3
    assert 150 < w.output_tokens[llama].mean() < 280  # Azure conversation replies, ~212
    assert w.mean_output_of(2) == 1.0


def test_decoder_only_scenarios_keep_their_lengths(monkeypatch):
    # Per-kind draws come after the scenario's: a decoder-only workload is what it was without them.
    from flexpipe_sim.workload import generate

    sc = parse_scenario(small_raw())
    w = _workload(sc)
    monkeypatch.setattr(generate, "per_kind_lengths", lambda *a: None)
    before = _workload(sc)
    assert np.array_equal(w.prompt_tokens, before.prompt_tokens) and np.array_equal(w.output_tokens, before.output_tokens)


def test_an_encoder_request_finishes_at_its_first_token_and_is_judged_on_ttft():
    from flexpipe_sim.metrics import requests_frame
    from flexpipe_sim.runner import run_scenario

    enc = {"num_layers": 4, "hidden": 256, "num_heads": 8, "num_kv_heads": 8, "intermediate": 1024,
           "vocab": 1024, "max_context": 512, "mlp": "gelu", "kind": "encoder"}
    raw = small_raw(horizon_s=20, models=[{"name": "enc", "shape": enc, "slo": {"ttft_s": 1.0, "tpot_s": 1e-6}}],
                    **{"policy.params": {"stages": 1}})
    out = run_scenario(parse_scenario(raw), write=False)
    df = requests_frame(out.raw)
    fin = df[df.drop_reason == ""]
    assert len(fin) > 10 and (fin.output_tokens == 1).all()
    assert np.allclose(fin.ttft_s, fin.e2e_s) and fin.tpot_s.isna().all()
    # A 1e-6 s TPOT SLO would fail every decoder; the encoder is judged on TTFT alone.
    assert fin.met_slo.mean() > 0.9


# --- 2. the stated load ----------------------------------------------------------------------------

@pytest.mark.parametrize("cv", ["1", "8"])
def test_paper_workload_hits_the_stated_rate_and_cv(cv):
    # Before: 7,200 s at rate 20 held 127,465-135,565 requests (17.7-18.8 req/s), CV 7.67 for 8.
    sc = load_scenario(PAPER / f"cv{cv}.yaml", ["horizon_s=1800"])
    w = _workload(sc)
    assert abs(len(w) / sc.horizon_s - 20.0) <= 0.01 * 20.0
    assert abs(iat_cv(w.arrival_s) - float(cv)) <= 0.01 * float(cv)
    assert w.arrival_s.max() < sc.horizon_s


# --- 3 and 4. the warm burst test and its window ------------------------------------------------

def test_burst_test_under_a_horizon_override_is_not_the_cv8_run():
    # Before: with --set horizon_s=600 both scenarios replayed the same 600 s (same start, seed, shape).
    burst = load_scenario(PAPER / "burst_cv8.yaml", ["horizon_s=600"])
    cv8 = load_scenario(PAPER / "cv8.yaml", ["horizon_s=600"])
    wb, wc = _workload(burst), _workload(cv8)
    assert burst.warmup_s == 300 and cv8.warmup_s == 0
    assert len(wb) != len(wc) or not np.allclose(wb.arrival_s, wc.arrival_s)
    # The burst's window is the CV 8 two-hour stream's [0, 600) s whatever the horizon says.
    full = _workload(load_scenario(PAPER / "cv8.yaml"))
    assert np.array_equal(wb.arrival_s, full.arrival_s[full.arrival_s < 600])
    measured = wb.arrival_s[wb.arrival_s >= burst.warmup_s]
    assert len(measured) / 300 > 20  # a burst: above the stream's mean rate


def test_warmup_requests_and_gpu_time_are_not_measured():
    from flexpipe_sim.metrics import requests_frame, summarize, timeseries_frame
    from flexpipe_sim.runner import run_scenario

    sc = parse_scenario(small_raw(horizon_s=40, warmup_s=20))
    out = run_scenario(sc, write=False)
    df, ts = requests_frame(out.raw), timeseries_frame(out.raw)
    arrivals = np.array([r.arrival_s for r in out.raw.requests])
    assert len(df) == int((arrivals >= 20).sum()) < len(arrivals)
    assert ts.time_s.min() >= 20
    s = summarize(out.raw, df, ts)
    assert s["warmup_s"] == 20 and s["overall"]["requests"] == len(df)
    assert any("warm-up" in n for n in s["notes"])
    assert s["overall"]["throughput_rps"] == pytest.approx(s["overall"]["finished"] / 20, abs=1e-6)


@pytest.mark.parametrize("changes, key", [
    ({"warmup_s": 60}, "warmup_s"),
    ({"workload.arrivals": {"kind": "trace", "path": str(PAPER.parents[1] / "traces/azure_functions_2019_invitro_sample/1350_inv.csv.gz"),
                            "rate": 20.0, "offset_s": 10}}, "offset_s"),
    ({"workload.arrivals": {"kind": "trace", "path": str(PAPER.parents[1] / "traces/azure_functions_2019_invitro_sample/1350_inv.csv.gz"),
                            "rate": 20.0, "stream_s": 100, "offset_s": 50}}, "offset_s"),
    ({"models": [{"name": "x", "shape": {"num_layers": 2, "hidden": 64, "num_heads": 4, "num_kv_heads": 4, "intermediate": 128,
                                        "vocab": 100, "max_context": 64, "kind": "encoder-decoder"}, "slo": {"ttft_s": 1, "tpot_s": 1}}]},
     "encoder_tokens"),
])
def test_bad_window_and_kind_keys_name_the_key(changes, key):
    with pytest.raises(ScenarioError, match=key):
        parse_scenario(small_raw(**changes))
