"""A `flexpipe-sim serve` session driven by the official openai client: start the server as a
subprocess on a free port, send a completion, a streamed chat and N concurrent completions,
print what came back and the rates, stop the server. Used by bench/gpu_suite.sh.

    python bench/serve_session.py --devices cpu:2 --model tiny
    python bench/serve_session.py --devices cuda:0 --model small --cuda-graphs --concurrent 16
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/default.yaml")
    ap.add_argument("--devices", default="cpu:2")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--startup-s", type=float, default=120.0, help="how long to wait for the server to answer")
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "flexpipe_sim.cli", "serve", a.scenario, "--port", str(port), "--devices", a.devices,
           "--model", a.model] + (["--cuda-graphs"] if a.cuda_graphs else [])
    print("$", " ".join(cmd), flush=True)
    srv = subprocess.Popen(cmd, env=os.environ.copy())
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
    try:
        t0 = time.perf_counter()
        while True:
            try:
                models = [m.id for m in client.models.list().data]
                break
            except openai.APIConnectionError:
                if srv.poll() is not None or time.perf_counter() - t0 > a.startup_s:
                    print(f"server did not come up (exit code {srv.poll()})")
                    return 1
                time.sleep(0.25)
        startup = time.perf_counter() - t0
        print(f"models: {models} (up after {startup:.1f} s)")
        name = models[0]
        r = client.completions.create(model=name, prompt="The pipeline says", max_tokens=a.max_tokens, temperature=0)
        print(f"completion: {r.choices[0].text!r} usage={r.usage.model_dump()}")
        t = time.perf_counter()
        first, pieces = None, []
        for ch in client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hello"}],
                                                 max_tokens=a.max_tokens, temperature=0, stream=True):
            if ch.choices and ch.choices[0].delta.content:
                first = first or time.perf_counter() - t
                pieces.append(ch.choices[0].delta.content)
        stream_s = time.perf_counter() - t
        print(f"streamed chat: {len(pieces)} chunks, first token after {1e3 * first:.1f} ms, {stream_s:.2f} s in all")
        prompts = [f"request {i}: " + "x" * (8 * i) for i in range(a.concurrent)]
        t = time.perf_counter()
        with ThreadPoolExecutor(a.concurrent) as ex:
            outs = list(ex.map(lambda p: client.completions.create(model=name, prompt=p, max_tokens=a.max_tokens,
                                                                   temperature=0), prompts))
        wall = time.perf_counter() - t
        toks = sum(o.usage.completion_tokens for o in outs)
        print(f"{a.concurrent} concurrent completions: {toks} tokens in {wall:.2f} s = {toks / wall:.1f} tok/s")
        figures = {"devices": a.devices, "model": name, "cuda_graphs": a.cuda_graphs, "startup_s": startup,
                   "stream_ttft_s": first, "stream_s": stream_s, "concurrent": a.concurrent,
                   "concurrent_tokens": toks, "concurrent_s": wall, "tokens_per_s": toks / wall}
        if a.json:
            with open(a.json, "w") as f:
                json.dump(figures, f, indent=1)
        return 0
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()


if __name__ == "__main__":
    sys.exit(main())
