"""bench/gpu_suite.sh --cpu: the GPU suite's every step on CPU devices at small sizes, so the script a
GPU session runs is known to work; the report must exist and list every step as passed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("gpu-tests", "calibrate", "kernel-bench", "serve")


@pytest.mark.slow  # ~35 s of CPU (four real steps at smoke sizes); 60+ s wall on a busy 2-core machine
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_suite_runs_every_step_on_cpu_and_writes_one_report(tmp_path):
    out = tmp_path / "suite"
    # validate is another command's test (and minutes long on CPU); the rest run at smoke sizes here
    r = subprocess.run(["bash", str(ROOT / "bench/gpu_suite.sh"), "--cpu", "--out", str(out), "--skip", "validate",
                        "--budget", "150"], env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)},
                       capture_output=True, text=True, timeout=200)
    report = (out / "report.md").read_text()
    assert r.returncode == 0, r.stdout + r.stderr + report
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\S+) \| ([^|]+) \|", report, re.M)}
    for s in STEPS:
        assert rows.get(s) == "passed", (s, rows)
        assert (out / f"{s}.log").stat().st_size > 0
    assert rows["validate"].startswith("skipped")
    prof = json.loads((out / "profile.json").read_text())
    assert prof["decode"]["layer_s"] and all(t > 0 for row in prof["decode"]["layer_s"] for t in row)
    serve = json.loads((out / "serve.json").read_text())
    assert serve["concurrent_tokens"] == 4 * 8 and serve["tokens_per_s"] > 0


def test_gpu_suite_rejects_an_unknown_option(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "bench/gpu_suite.sh"), "--bogus"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
