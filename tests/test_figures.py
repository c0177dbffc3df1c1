"""Figures and the evaluation report never mislabel: one colour per policy and per model whatever a
panel holds, figures without data left out (and said so), axes that start at 0 for magnitudes, time
axes in minutes, titles inside the image, SLO lines on the latency CDFs, an 80-column compare table,
and human headers and percentages in the report's tables. Tiny runs (20 s, a few dozen requests)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from typer.testing import CliRunner

from flexpipe_sim.compare import with_policy
from flexpipe_sim.evaluation import Run, fig_stalls, write_report
from flexpipe_sim.runner import run_scenario
from flexpipe_sim.scenario import parse_scenario
from tests.helpers import small_raw

# the fixed colours (palette.py); written out so the test pins them
POLICY = {"flexpipe": "tab:blue", "static": "tab:orange"}
MODEL = {"llama2-7b": "tab:blue", "bert-21b": "tab:green"}


def _run(root: Path, pol: str, **changes) -> None:
    sc = parse_scenario(small_raw(horizon_s=20, **changes), "test")
    run_scenario(with_policy(sc, pol), root / sc.name / pol)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """CV 2 with static and flexpipe; CV 4 with static only; a burst test (warm-up 10 s of 20 s)."""
    base = tmp_path_factory.mktemp("runs")
    for pol in ("static", "flexpipe"):
        _run(base / "cv2", pol, name="small_cv2", **{"workload.arrivals.cv": 2.0})
    _run(base / "cv4", "static", name="small_cv4", **{"workload.arrivals.cv": 4.0})
    for pol in ("static", "flexpipe"):
        _run(base / "burst", pol, name="small_burst", warmup_s=10, **{"workload.arrivals.cv": 8.0})
    return {k: base / k for k in ("cv2", "cv4", "burst")}


class Saved(dict):
    """Every figure saved while active, by file name (its artists stay readable after close), and the
    window extents of its titles and legends, measured when it was saved."""

    def __init__(self):
        super().__init__()
        self.extents: dict[str, list[tuple[str, object]]] = {}
        self._original = Figure.savefig

    def __enter__(self):
        saved = self

        def savefig(fig, fname, *a, **kw):
            out = saved._original(fig, fname, *a, **kw)
            name = Path(fname).name
            saved[name] = fig
            r = fig.canvas.get_renderer()
            texts = [fig._suptitle, *(ax.title for ax in fig.axes)]
            boxes = [(t.get_text(), t.get_window_extent(r)) for t in texts if t is not None and t.get_text()]
            legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
            saved.extents[name] = boxes + [("legend", lg.get_window_extent(r)) for lg in legends]
            return out

        Figure.savefig = savefig
        return self

    def __exit__(self, *exc):
        Figure.savefig = self._original


@pytest.fixture
def figs():
    with Saved() as saved:
        yield saved


@pytest.fixture(scope="module")
def reports(roots, tmp_path_factory) -> dict[str, tuple[Path, Saved]]:
    """The report of CV 2 + CV 4 (CV 4 lacks flexpipe) and the burst-only report, with their figures."""
    out = {}
    for name, rs in (("cv", [roots["cv2"], roots["cv4"]]), ("burst", [roots["burst"]])):
        folder = tmp_path_factory.mktemp(f"report_{name}")
        with Saved() as saved:
            write_report(rs, folder)
        out[name] = (folder, saved)
    return out


def _same(c1, c2) -> bool:
    return np.allclose(to_rgba(c1), to_rgba(c2))


def test_policy_colours_fixed_when_a_cv_lacks_a_policy(reports):
    _, figs = reports["cv"]
    checked = 0
    for name in ("fig10_percentiles.png", "fig11_stall_cdf.png", "gpus_reserved.png"):
        for ax in figs[name].axes:
            for line in ax.get_lines():
                pol = line.get_label().split(":")[0]  # Fig. 11 labels: "static: 12 recovered"
                if pol in POLICY:
                    assert _same(line.get_color(), POLICY[pol]), (name, ax.get_title(), line.get_label())
                    checked += 1
    assert checked >= 8  # 3 runs in each of Figs. 10 and 11 and GPUs reserved (not all of Fig. 11 may stall)
    # the CV 4 panel holds static alone: still orange
    cv4 = next(ax for ax in figs["fig10_percentiles.png"].axes if ax.get_title() == "CV 4")
    assert [ln.get_label() for ln in cv4.get_lines()] == ["static"]
    assert _same(cv4.get_lines()[0].get_color(), "tab:orange")
    for bars in figs["fig12_efficiency.png"].axes[1].containers:
        assert all(_same(p.get_facecolor(), POLICY[bars.get_label()]) for p in bars.patches)


def test_burst_only_report_leaves_out_empty_figures_and_titles_its_window(reports):
    tmp_path, figs = reports["burst"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["fig09_burst.png"]
    md, page = (tmp_path / "evaluation.md").read_text(), (tmp_path / "evaluation.html").read_text()
    for f in ("fig08_breakdown.png", "fig10_percentiles.png", "fig11_stall_cdf.png", "fig12_efficiency.png",
              "gpus_reserved.png"):
        assert f"{f}: not drawn" in md and f"{f}: not drawn" in page
    assert page.count("<img") == 1
    title = figs["fig09_burst.png"]._suptitle.get_text()
    assert "300 s" not in title and "0.167-0.333 min" in title  # measured arrivals: 10-20 s


def test_magnitude_axes_start_at_zero_and_time_axes_in_minutes(reports):
    figs = {**reports["cv"][1], **reports["burst"][1]}
    goodput = figs["fig12_efficiency.png"].axes[0]
    assert goodput.get_ylim()[0] == 0 and goodput.get_xlim() == (0, 100)
    assert "(min)" in figs["fig09_burst.png"].axes[0].get_xlabel()
    assert "(min)" in figs["gpus_reserved.png"].axes[0].get_xlabel()
    assert figs["gpus_reserved.png"].axes[0].get_ylim()[0] == 0


def test_gpus_reserved_shared_axis_fits_every_panel(figs, tmp_path):
    from flexpipe_sim.evaluation import fig_gpus

    def run(cv: float, peak: int) -> Run:
        ts = pd.DataFrame({"time_s": [0.0, 30.0, 60.0], "gpus_allocated": [2, peak, peak]})
        return Run(tmp_path, f"s{cv:g}", "flexpipe", cv, False, ["m"], {}, pd.DataFrame(), ts)

    fig_gpus([run(2.0, 10), run(4.0, 60)], tmp_path / "g.png")  # the later panel has the higher peak
    for ax in figs["g.png"].axes:
        assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 60, (ax.get_title(), ax.get_ylim())


def test_titles_and_legends_inside_the_image(reports):
    for _, saved in reports.values():
        for name, boxes in saved.extents.items():
            fig = saved[name].bbox
            for text, b in boxes:
                assert fig.x0 - 1 <= b.x0 and b.x1 <= fig.x1 + 1 and fig.y0 - 1 <= b.y0 and b.y1 <= fig.y1 + 1, (
                    name, text)


def test_run_plot_titles_inside_the_image_for_a_long_scenario_name(tmp_path):
    name = "a_scenario_with_a_long_descriptive_name_" * 3
    sc = parse_scenario(small_raw(name=name, horizon_s=10, **{"outputs.plots": True}), "test")
    with Saved() as saved:
        run_scenario(sc, tmp_path)
    assert sorted(saved.extents) == ["gpus_over_time.png", "latency_cdf.png", "queue_length.png"]
    for file, boxes in saved.extents.items():
        fig = saved[file].bbox
        for text, b in boxes:
            assert fig.x0 - 1 <= b.x0 and b.x1 <= fig.x1 + 1 and b.y1 <= fig.y1 + 1, (file, text)


def test_stall_cdf_draws_no_invented_floor(figs, tmp_path):
    # normalised latency 1 (baseline), then a stall recovered at the same instant and one after 0.5 s
    arr = [*range(10), 10, 10, 20, 20.5]
    lat = [1.0] * 10 + [3.0, 1.0, 3.0, 1.0]
    req = pd.DataFrame({"id": range(len(arr)), "arrival_s": arr, "e2e_s": lat, "output_tokens": 1,
                        "drop_reason": ""})
    run = Run(tmp_path, "s", "static", 4.0, False, ["m"], {}, req, pd.DataFrame())
    fig_stalls([run], tmp_path / "f.png")
    (line,) = figs["f.png"].axes[0].get_lines()
    x, y = line.get_xdata(), line.get_ydata()
    assert min(x) == pytest.approx(500)  # no point at an invented 1e-3 ms
    assert y[0] == pytest.approx(0.5) and y[-1] == pytest.approx(1.0)  # the 0 ms half is counted, not drawn
    assert "1 under 1 µs" in line.get_label()


def test_run_latency_cdf_fixed_model_colours_and_slo_lines(figs, tmp_path):
    models = [{"name": "llama2-7b", "slo": {"ttft_s": 2.0, "tpot_s": 0.1}},
              {"name": "bert-21b", "slo": {"ttft_s": 3.0, "tpot_s": 0.4}}]  # BERT: 1 output token, no TPOT
    sc = parse_scenario(small_raw(horizon_s=20, models=models, **{"outputs.plots": True}), "test")
    run_scenario(sc, tmp_path)
    ttft, tpot, e2e = figs["latency_cdf.png"].axes
    for ax in (ttft, tpot, e2e):
        for line in ax.get_lines():
            if line.get_label() in MODEL:
                assert _same(line.get_color(), MODEL[line.get_label()]), (ax.get_xlabel(), line.get_label())
    assert [ln.get_label() for ln in tpot.get_lines() if ln.get_label() in MODEL] == ["llama2-7b"]

    def slo_lines(ax) -> set[float]:
        return {float(ln.get_xdata()[0]) for ln in ax.get_lines() if ln.get_linestyle() == "--"}

    assert slo_lines(ttft) == {2.0, 3.0} and slo_lines(tpot) == {0.1} and slo_lines(e2e) == set()


def test_compare_table_readable_at_80_columns(monkeypatch, write_scenario):
    from rich.console import Console

    import flexpipe_sim.cli as cli
    import flexpipe_sim.compare as compare

    df = pd.DataFrame([{"scenario": "paper_cv4", "policy": p, "e2e_p50_s": 3.29, "e2e_p99_s": 130.88,
                        "ttft_p99_s": 109.93, "slo_attainment": 0.948, "slo_model_mean": 0.793, "goodput_rps": 18.95,
                        "gpu_s": 2214.0, "peak_gpus": 10, "refactors": 1234, "unserved": u}
                       for p, u in (("static", "opt-66b"), ("flexpipe", ""))])
    monkeypatch.setattr(compare, "compare", lambda *a, **kw: df)
    monkeypatch.setattr(cli, "console", Console(width=80))
    res = CliRunner().invoke(cli.app, ["compare", str(write_scenario(small_raw())), "-o", "/tmp/figures/unused"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(map(len, lines)) <= 80
    row = next(ln for ln in lines if ln.lstrip().startswith("static"))
    assert re.findall(r"\S+", row) == ["static", "3.29", "130.88", "109.93", "94.8%", "79.3%", "18.95", "0.6", "10",
                                       "1234"]
    assert "unserved: paper_cv4 / static: opt-66b" in res.output


def test_report_tables_human_headers_and_percentages(reports):
    tmp_path, _ = reports["cv"]
    page = (tmp_path / "evaluation.html").read_text()
    heads = re.findall(r"<th>(.*?)</th>", page)
    assert heads and not [h for h in heads if "_" in h], heads
    runs = page.split("<h2>Runs</h2>")[1].split("<h2>")[0]
    assert '<div class="scroll">' in runs and ".scroll{overflow:auto" in page
    cols = re.findall(r"<th>(.*?)</th>", runs)
    rows = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", runs, re.S)[1:]]
    for head in ("SLO attainment", "SLO, mean over models", "GPU utilisation", "GPU reservation (of peak)"):
        cells = [r[cols.index(head)] for r in rows]
        assert all(re.fullmatch(r"\d+\.\d%", c) for c in cells), (head, cells)


def test_two_scenarios_at_one_cv_get_their_own_panels(roots, tmp_path):
    """Two scenarios at CV 2 (say two rates): one panel each, never two lines under one label."""
    other = tmp_path / "cv2b"
    _run(other, "static", name="small_cv2_other", **{"workload.arrivals.cv": 2.0, "workload.arrivals.rate": 3.0})
    with Saved() as saved:
        write_report([roots["cv2"], other], tmp_path / "report")
    for name in ("fig10_percentiles.png", "fig11_stall_cdf.png", "gpus_reserved.png"):
        titles = [ax.get_title() for ax in saved[name].axes]
        assert titles == ["CV 2: small_cv2", "CV 2: small_cv2_other"], (name, titles)
    fig10 = saved["fig10_percentiles.png"].axes
    assert [ln.get_label() for ln in fig10[0].get_lines()] == ["flexpipe", "static"]
    assert [ln.get_label() for ln in fig10[1].get_lines()] == ["static"]
