"""bench/sim_speed.py runs end to end (tiny scale) and reports every figure the issue asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sim_speed_bench_reports_ratios(tmp_path):
    out = tmp_path / "speed.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench/sim_speed.py"), "--cases", "azure-conv-1,cv4-static",
                        "--scale", "0.005", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads(out.read_text())
    assert [r["case"] for r in rows] == ["azure-conv-1", "cv4-static"]
    for r in rows:
        assert r["requests"] > 0 and r["wall_s"] > 0 and r["peak_rss_gb"] > 0
        assert abs(r["rps"] - r["requests"] / r["wall_s"]) < 1e-6 * r["rps"]
        assert r["ratio"] > 0 and r["rss_ratio"] > 0
    assert "target ratio" in p.stdout


def test_pyspy_summary_counts_inclusive_and_self(tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("pyspy_summary", ROOT / "bench/pyspy_summary.py")
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    raw = tmp_path / "p.raw"
    raw.write_text("main (a.py:1);f (a.py:5);g (a.py:9) 3\nmain (a.py:1);f (a.py:6) 1\n")
    text = mod.summarise(raw, 5)
    assert "4 samples" in text
    assert " 100.0%  f (a.py)" in text  # f's two lines count together, on every stack
    assert "  75.0%  g (a.py)" in text and "  25.0%  f (a.py)" in text.split("self")[1]
