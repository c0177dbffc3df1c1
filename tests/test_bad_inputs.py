"""Bad inputs a user might try: each gives one clear error, exit code 2, and no traceback, before
any simulation (so each case takes a fraction of a second). Issue 14."""

from __future__ import annotations

import gzip
import json

import pytest
import yaml
from typer.testing import CliRunner

from flexpipe_sim.cli import app

from .conftest import ROOT
from .helpers import small_raw

runner = CliRunner()
GOOD_CSV = "timestamp,prompt_tokens,output_tokens\n0,10,5\n1.5,20,7\n2,30,9\n"
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{k}: &{k} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, k in zip("abcdefgh", "bcdefghi"))
FAT = {"num_layers": 2, "hidden": 4096, "num_heads": 32, "num_kv_heads": 32, "intermediate": 11008,
       "vocab": 32000, "max_context": 12_000_000}


def _sc(**changes) -> str:
    return yaml.safe_dump(small_raw(**changes), sort_keys=False)


# id -> (argv with {s} = a small valid scenario and {t} = the test's folder, files to write, expected text)
CASES: dict[str, tuple[list[str], dict[str, str | bytes], str]] = {
    # --- the list -------------------------------------------------------------------------
    "infinite horizon": (["run", "{s}", "--set", "horizon_s=.inf"], {}, "horizon_s: expected a finite number"),
    "infinite rate": (["run", "{s}", "--set", "workload.arrivals.rate=.inf"], {}, "rate: expected a finite number"),
    "rate 1e12": (["run", "{s}", "--set", "workload.arrivals.rate=1e12"], {}, "the limit is 5,000,000"),
    "binary scenario": (["run", "{t}/bin.yaml"], {"bin.yaml": b"\x89PNG\r\n\x1a\n\x00\x00garbage\xff"},
                        "a binary file, not a YAML scenario"),
    "deeply nested YAML": (["run", "{t}/deep.yaml"], {"deep.yaml": "[" * 500 + "]" * 500}, "nested more than 64 levels deep"),
    "invalid YAML in --set": (["run", "{s}", "--set", "horizon_s=[1"], {}, "--set 'horizon_s=[1': not valid YAML"),
    "outputs.dir placeholder typo": (["run", "{s}", "--set", "outputs.dir={t}/{nmae}"], {},
                                     "outputs.dir: unknown placeholder {nmae}"),
    "convert to a folder": (["trace", "convert", "{t}/g.csv", "{t}"], {"g.csv": GOOD_CSV}, "is a folder"),
    "convert under a file": (["trace", "convert", "{t}/g.csv", "{t}/g.csv/x.csv"], {"g.csv": GOOD_CSV},
                             "is a file, so"),
    "sample every microsecond": (["run", "{s}", "--set", "outputs.sample_interval_s=1e-6"], {},
                                 "outputs.sample_interval_s: 1e-06 s"),
    "decide every microsecond": (["run", "{s}", "--set", "engine.control_interval_s=1e-6"], {},
                                 "engine.control_interval_s: 1e-06 s"),
    "horizon 1e9": (["run", "{s}", "--set", "horizon_s=1e9"], {}, "the limit is 5,000,000"),
    "boolean horizon": (["run", "{s}", "--set", "horizon_s=true"], {}, "horizon_s: expected a number, got true"),
    "duplicate key": (["run", "{t}/dup.yaml"], {"dup.yaml": _sc() + "horizon_s: 5\n"},
                      "duplicate key 'horizon_s' (first at line 3)"),
    "KV fits no GPU": (["run", "{t}/fat.yaml"], {"fat.yaml": _sc(models=[{"name": "fat", "shape": FAT,
                                                                        "slo": {"ttft_s": 1, "tpot_s": 0.1}}])},
                       "fat cannot fit on any a100-80gb"),
    # --- numbers ---------------------------------------------------------------------------------
    "NaN drain": (["run", "{s}", "--set", "drain_s=.nan"], {}, "drain_s: expected a finite number"),
    "drain 1e12": (["run", "{s}", "--set", "drain_s=1e12"], {}, "time-series samples; the limit is 1,000,000"),
    "boolean seed": (["run", "{s}", "--set", "seed=true"], {}, "seed: expected a number, got true"),
    "fractional seed": (["run", "{s}", "--set", "seed=1.5"], {}, "seed"),
    "boolean GPU count": (["run", "{s}", "--set", "cluster.gpus=true"], {}, "cluster.gpus: expected a number"),
    "zero servers": (["run", "{s}", "--set", "cluster.servers=0"], {}, "cluster.servers"),
    "tenant scale 2": (["run", "{s}", "--set", "cluster.tenant_scale=2"], {}, "cluster.tenant_scale"),
    "infinite network": (["run", "{s}", "--set", "cluster.network_gbps=.inf"], {}, "cluster.network_gbps"),
    "GPU kind in capitals": (["run", "{s}", "--set", "cluster.gpu=A100"], {}, "unknown GPU kind 'A100'"),
    "KV block of 1e9 tokens": (["run", "{s}", "--set", "engine.block_size=1e9"], {}, "cannot fit on any"),
    "GPU memory utilisation 1%": (["run", "{s}", "--set", "engine.gpu_memory_utilization=0.01"], {},
                                  "cannot fit on any"),
    "workspace 1 TB": (["run", "{s}", "--set", "engine.workspace_gb=1000"], {}, "cannot fit on any"),
    "negative queue wait": (["run", "{s}", "--set", "engine.max_queue_wait_s=-1"], {}, "engine.max_queue_wait_s"),
    "zero token budget": (["run", "{s}", "--set", "engine.token_budget=0"], {}, "engine.token_budget"),
    "infinite stats window": (["run", "{s}", "--set", "engine.stats_window_s=.inf"], {}, "stats_window_s"),
    "infinite SLO": (["run", "{s}", "--set", "models.0.slo.ttft_s=.inf"], {}, "models.0.slo.ttft_s"),
    "zero share": (["run", "{s}", "--set", "models.0.share=0"], {}, "models.0.share"),
    "context of 1e9 tokens": (["run", "{t}/ctx.yaml"], {"ctx.yaml": _sc(models=[{
        "name": "long", "slo": {"ttft_s": 1, "tpot_s": 0.1}, "shape": {**FAT, "max_context": 1_000_000_000}}])},
        "long cannot fit on any"),
    "zero prompt tokens": (["run", "{s}", "--set", "workload.lengths={kind: fixed, prompt_tokens: 0, output_tokens: 5}"],
                           {}, "workload.lengths.fixed.prompt_tokens"),
    "fractional output tokens": (["run", "{s}", "--set",
                                  "workload.lengths={kind: fixed, prompt_tokens: 1e3, output_tokens: 1.5}"], {},
                                 "workload.lengths.fixed.output_tokens"),
    # --- workload ------------------------------------------------------------------------------
    "MMPP boolean rate": (["run", "{s}", "--set", "workload.arrivals={kind: mmpp, rates: [true, 1], "
                           "mean_sojourn_s: [1, 1]}"], {}, "rates: expected a number, got true"),
    "MMPP nanosecond states": (["run", "{s}", "--set", "workload.arrivals={kind: mmpp, rates: [1, 2], "
                                "mean_sojourn_s: [1e-9, 1e-9]}"], {}, "mean_sojourn_s: states this short"),
    "diurnal period 1 us": (["run", "{s}", "--set", "workload.diurnal={period_s: 1e-6}"], {},
                            "workload.diurnal.period_s"),
    "trace rate 1e12": (["run", "{s}", "--set", "workload.arrivals={kind: trace, path: {t}/g.csv, rate: 1e12}"],
                        {"g.csv": GOOD_CSV}, "the limit is 5,000,000"),
    "trace stream of 1e12 s": (["run", "{s}", "--set", "workload.arrivals={kind: trace, path: {t}/g.csv, rate: 1, "
                                "stream_s: 1e12}"], {"g.csv": GOOD_CSV}, "the limit is 5,000,000"),
    "from-trace lengths with gamma": (["run", "{s}", "--set", "workload.lengths=from-trace"], {}, "from-trace"),
    # --- scenario structure ---------------------------------------------------------------------
    "no models": (["run", "{s}", "--set", "models=[]"], {}, "models"),
    "model as a string": (["run", "{s}", "--set", "models.0=llama2-7b"], {}, "models.0"),
    "policy name a number": (["run", "{s}", "--set", "policy.name=123"], {}, "policy.name"),
    "policy params a list": (["run", "{s}", "--set", "policy.params=[1, 2]"], {}, "policy.params"),
    "boolean policy stages": (["run", "{s}", "--set", "policy.params.stages=true"], {},
                              "policy.params.stages: expected a number, got true"),
    "infinite policy fraction": (["run", "{s}", "--set", "policy.params.fraction=.inf"], {},
                                 "policy.params.fraction: expected a finite number"),
    "name with a space": (["run", "{s}", "--set", "name=my run"], {}, "name"),
    "warm-up past the horizon": (["run", "{s}", "--set", "warmup_s=100"], {}, "warmup_s"),
    "empty outputs.dir": (["run", "{s}", "--set", "outputs.dir=''"], {}, "outputs.dir: empty"),
    "positional placeholder": (["run", "{s}", "--set", "outputs.dir=res/{0}"], {}, "unknown placeholder {0}"),
    "unclosed placeholder": (["run", "{s}", "--set", "outputs.dir=res/{name"], {}, "not a valid folder template"),
    "outputs.dir under a file": (["run", "{s}", "--set", "outputs.dir={t}/g.csv/{name}"], {"g.csv": GOOD_CSV},
                                 "g.csv is a file"),
    "--out is a file": (["run", "{s}", "--out", "{t}/g.csv"], {"g.csv": GOOD_CSV}, "is a file, not a folder"),
    "missing profile": (["run", "{s}", "--set", "cost.profiles={llama2-7b: {t}/nope.json}"], {},
                        "no such profile file"),
    # --- --set syntax ------------------------------------------------------------------------------
    "--set index out of range": (["run", "{s}", "--set", "models.5.name=x"], {}, "no such key"),
    "--set negative index": (["run", "{s}", "--set", "models.-1.name=x"], {}, "no such key"),
    "--set empty key part": (["run", "{s}", "--set", ".horizon_s=5"], {}, "empty key part"),
    "--set under a number": (["run", "{s}", "--set", "horizon_s.x=1"], {}, "not a mapping"),
    "--set without a value": (["run", "{s}", "--set", "horizon_s="], {}, "no value after '='"),
    "--set duplicate key in value": (["run", "{s}", "--set", "cluster={gpus: 8, gpus: 16}"], {}, "duplicate key 'gpus'"),
    "--set bracketed value": (["run", "{s}", "--set", "cluster.gpu='[kernel]'"], {}, "unknown GPU kind '[kernel]'"),
    # --- scenario files ------------------------------------------------------------------------
    "empty scenario file": (["run", "{t}/empty.yaml"], {"empty.yaml": ""}, "must be a YAML mapping"),
    "a list as scenario": (["run", "{t}/list.yaml"], {"list.yaml": "- 1\n- 2\n"}, "must be a YAML mapping"),
    "python tag": (["run", "{t}/tag.yaml"], {"tag.yaml": "name: !!python/object/apply:os.system [ls]\n"},
                   "not valid YAML"),
    "scenario is a folder": (["run", "{t}"], {}, "no such scenario file"),
    "alias bomb": (["run", "{t}/bomb.yaml"], {"bomb.yaml": _sc() + BILLION_LAUGHS}, "unknown key"),
    "UTF-16 scenario": (["run", "{t}/u16.yaml"], {"u16.yaml": _sc().encode("utf-16")}, "UTF-16/32 text, not UTF-8"),
    "tab indentation": (["run", "{t}/tab.yaml"], {"tab.yaml": "name: x\ncluster:\n\tgpus: 4\n"}, "not valid YAML"),
    # --- traces ------------------------------------------------------------------------------------
    "trace stats: header only": (["trace", "stats", "{t}/h.csv", "-o", "{t}/o"],
                                 {"h.csv": "timestamp,prompt_tokens,output_tokens\n"}, "no requests"),
    "trace stats: huge prompt": (["trace", "stats", "{t}/big.csv", "-o", "{t}/o"],
                                 {"big.csv": "timestamp,prompt_tokens,output_tokens\n0,1e30,5\n1,10,5\n"},
                                 "prompt_tokens"),
    "trace stats: huge function count": (["trace", "stats", "{t}/f_inv.csv", "-o", "{t}/o"],
                                         {"f_inv.csv": "HashFunction,HashOwner,HashApp,1,2\nf,o,a,1e15,1\n"},
                                         "invocations"),
    "trace stats: servegen rate 1e12": (["trace", "stats", "{t}/chunk-1-trace.csv", "-o", "{t}/o"],
                                        {"chunk-1-trace.csv": "0,1e12,1,Gamma,1,1\n"}, "rate"),
    "trace stats: unknown format": (["trace", "stats", "{t}/g.csv", "-f", "parquet", "-o", "{t}/o"],
                                    {"g.csv": GOOD_CSV}, "unknown trace format"),
    "trace stats: --set on a trace": (["trace", "stats", "{t}/g.csv", "--set", "horizon_s=5", "-o", "{t}/o"],
                                      {"g.csv": GOOD_CSV}, "--set applies to a scenario file"),
    "trace stats: -o is a file": (["trace", "stats", "{t}/g.csv", "-o", "{t}/g.csv"], {"g.csv": GOOD_CSV},
                                  "is a file, not a folder"),
    "trace stats: folder without chunks": (["trace", "stats", "{t}", "-o", "{t}/o"], {}, "no ServeGen"),
    "trace stats: truncated gzip": (["trace", "stats", "{t}/g.csv.gz", "-o", "{t}/o"],
                                    {"g.csv.gz": gzip.compress(GOOD_CSV.encode())[:20]}, "truncated or corrupt gzip"),
    "trace stats: nothing in the horizon": (["trace", "stats", "{t}/w.yaml", "-o", "{t}/o"], {"w.yaml": _sc(**{
        "workload.arrivals": {"kind": "poisson", "rate": 0.001}, "horizon_s": 1})}, "no arrivals"),
    "mooncake huge timestamp": (["trace", "convert", "{t}/m.jsonl", "{t}/m.csv"],
                                {"m.jsonl": '{"timestamp": 1e400, "input_length": 1, "output_length": 1}\n'},
                                "timestamp"),
    # --- CLI options -------------------------------------------------------------------------------
    "negative --seed": (["run", "{s}", "--seed", "-1"], {}, "seed"),
    "empty --policies": (["compare", "{s}", "-p", ",", "-o", "{t}/o"], {}, "no policies"),
    "variant without value": (["compare", "{s}", "-p", "flexpipe:refactor", "-o", "{t}/o"], {}, "expected key=value"),
    "variant with bad YAML": (["compare", "{s}", "-p", "static:stages=[1", "-o", "{t}/o"], {}, "not valid YAML"),
    "variant with boolean stages": (["compare", "{s}", "-p", "static:stages=true", "-o", "{t}/o"], {},
                                    "expected a number, got true"),
    "loadsweep at 1e12 req/s": (["loadsweep", "{s}", "--rates", "1e12", "-o", "{t}/o"], {}, "the limit is 5,000,000"),
    "compare -o is a file": (["compare", "{s}", "-o", "{t}/g.csv"], {"g.csv": GOOD_CSV}, "is a file, not a folder"),
    "report of a garbage summary": (["report", "{t}/runs", "-o", "{t}/o"], {"runs/x/summary.json": "{not json"},
                                    "not a complete run folder"),
    "report -o under a file": (["report", "{t}", "-o", "{t}/g.csv/r"], {"g.csv": GOOD_CSV}, "g.csv is a file"),
    "calibrate --check garbage": (["calibrate", "--check", "{t}/p.json"], {"p.json": "{oops"}, "p.json"),
    "calibrate --check binary": (["calibrate", "--check", "{t}/p.json"], {"p.json": b"\x00\xff\x00"}, "p.json"),
    "calibrate --derive unknown GPU": (["calibrate", "--derive", "calibrate/profiles/a100-80gb-llama2-7b.derived.json",
                                        "--gpu", "v100", "-o", "{t}/p.json"], {}, "v100"),
    "profile with NaN": (["run", "{s}", "--set", "cost.profiles={llama2-7b: {t}/nan.json}"], {"nan.json": "NAN"},
                         "nan.json"),
}


def _materialise(tmp_path, files: dict) -> None:
    for name, content in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_error(case, tmp_path, monkeypatch):
    argv, files, expected = CASES[case]
    _materialise(tmp_path, files)
    (tmp_path / "s.yaml").write_text(_sc())
    if case == "profile with NaN":  # a profile file that parses as JSON but holds NaN everywhere
        real = json.loads(open(ROOT / "calibrate/profiles/a100-80gb-llama2-7b.derived.json").read())
        real["decode"]["layer_s"] = [[float("nan")] * len(r) for r in real["decode"]["layer_s"]]
        (tmp_path / "nan.json").write_text(json.dumps(real))
    monkeypatch.setenv("COLUMNS", "400")  # keep messages on one line for the check below
    args = [a.replace("{s}", str(tmp_path / "s.yaml")).replace("{t}", str(tmp_path)) for a in argv]
    res = runner.invoke(app, args)
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert " ".join(expected.split()) in out, res.output
