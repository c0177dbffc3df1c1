"""`flexpipe-sim calibrate`: measure the kernel, check a profile against Table 2, derive one for another
GPU or model, or build the external A100 Llama-2-7B profile from Vidur's timings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .cliio import _error, console, err
from .profiles import ProfileError


def calibrate(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Profile to write (default calibrate/profiles/<name>.json)."),
    model: Optional[str] = typer.Option(None, "--model", help="Kernel preset to measure (default llama2-7b on a GPU, tiny on CPU)."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Torch device to measure on, e.g. cuda:0 (default: first GPU, else cpu)."),
    quick: bool = typer.Option(True, "--quick/--full", help="Quick grid (minutes) or the full grid."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Layers in the measured stage (default min(layers - 2, 4))."),
    passes: int = typer.Option(3, "--passes", min=1, help="Sweeps over the grid; each point is the median of its sweeps (1: fastest, for smoke runs)."),
    repeats: int = typer.Option(7, "--repeats", min=1, help="Least timed runs per point and sweep (a point also runs for at least 0.15 s)."),
    gpu_kind: Optional[str] = typer.Option(None, "--gpu-kind", help="Catalogue name of the device (h100-sxm, a100-80gb, ...) so scenarios can match it."),
    check: Optional[Path] = typer.Option(None, "--check", help="Compare PROFILE with the paper's Table 2 (OPT-66B on A100) instead of measuring."),
    derive_from: Optional[Path] = typer.Option(None, "--derive", help="Derive a profile from PROFILE for --gpu (and --to-model) instead of measuring."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="With --derive: the GPU kind to derive for."),
    to_model: Optional[str] = typer.Option(None, "--to-model", help="With --derive: another model shape from the catalogue."),
    from_vidur: Optional[Path] = typer.Option(None, "--from-vidur", help="Build the external A100 Llama-2-7B profile from Vidur's published operator timings in DIR (e.g. ../shared/peer-data/vidur) instead of measuring."),
) -> None:
    """Measure the kernel on local devices and write a calibration profile (or check / derive one, or
    build the external A100 Llama-2-7B profile from Vidur's published operator timings: --from-vidur).

    The profile holds per-layer prefill and decode times over a grid, head and per-step overheads,
    host/device and device/device rates, weight-load and KV-migration rates and refactor pauses;
    docs/profiles.md describes the format. Scenarios use it through `cost.profiles`."""
    from .profiles import load_profile, save_profile

    try:
        if check is not None:
            _print_check(load_profile(check))
            return
        if from_vidur is not None:
            from .vidur import PROFILE_FILE, build_profile

            raw = build_profile(from_vidur)
            path = save_profile(raw, out or Path(PROFILE_FILE))
            _print_profile_summary(raw)
            f = raw["roofline_fit"]
            console.print(f"fitted roofline: compute {f['eff_compute']}, weights {f['eff_weight_bw']}, KV {f['eff_kv_bw']} "
                          f"of the A100 spec sheet (max |error| {f['max_abs_rel_err']:.0%} on the grid)")
            console.print(f"wrote {path} ({raw['name']}, external: {raw['provenance']})")
            return
        if derive_from is not None:
            from .calibration import derive

            if not gpu:
                err.print("[bold red]error:[/] --derive needs --gpu KIND")
                raise typer.Exit(2)
            raw = derive(load_profile(derive_from), gpu, to_model)
            path = save_profile(raw, out or Path("calibrate/profiles") / f"{raw['name']}.json")
            console.print(f"wrote {path} ({raw['name']}, derived from {raw['derived_from']})")
            return
    except (ProfileError, KeyError, ValueError) as e:
        _error(e)
        raise typer.Exit(2) from None
    try:
        import torch

        from flexpipe_kernel.calibrate import calibrate as measure
    except ImportError as e:
        _error(f"calibrate needs PyTorch ({e}); pip install 'flexpipe[kernel]'")
        raise typer.Exit(2) from None
    dev = devices or ("cuda:0" if torch.cuda.is_available() else "cpu")
    preset = model or ("llama2-7b" if dev.startswith("cuda") else "tiny")
    with Progress(TextColumn("[bold]calibrate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("", total=None)
        raw = measure(preset, dev, quick=quick, layers=layers, gpu_kind=gpu_kind, passes=passes, repeats=repeats,
                      progress=lambda what, done, total: bar.update(task, completed=done, total=total, description=what))
    path = save_profile(raw, out or Path("calibrate/profiles") / f"{raw['name']}.json")
    _print_profile_summary(raw)
    console.print(f"wrote {path}")


def _print_profile_summary(raw: dict) -> None:
    from rich.table import Table

    t = Table(title=f"profile {raw['name']} ({raw['device']['name']}, {raw['model'].get('preset')})")
    t.add_column("per layer")
    for c in raw["decode"]["context"]:
        t.add_column(f"ctx {c}", justify="right")
    for b, row in zip(raw["decode"]["batch"], raw["decode"]["layer_s"]):
        t.add_row(f"decode batch {b}", *(f"{1e3 * x:.3f} ms" for x in row))
    console.print(t)
    pre = ", ".join(f"{n}: {1e3 * x:.3f}" for n, x in zip(raw["prefill"]["tokens"], raw["prefill"]["layer_s"]))
    console.print(f"prefill per layer (tokens: ms): {pre}")
    links = {k: v for k, v in raw["links"].items() if isinstance(v, (int, float))}
    console.print("rates: " + ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in links.items()))
    if "refactor_pause" in raw:
        rp = raw["refactor_pause"]
        console.print("refactor pause: " + ", ".join(f"{k:.1f} MiB KV -> {1e3 * p:.2f} ms" for k, p in zip(rp["kv_mib"], rp["pause_s"])))


def _print_check(p) -> None:
    from rich.table import Table

    from .calibration import table2_check

    r = table2_check(p)
    t = Table(title=f"Table 2 (OPT-66B, A100, seq 4096) vs {r['profile']}")
    for c in ("stages", "load s (paper/ours)", "compute ms (paper/ours)", "comm ms (paper/ours)", "max batch (paper/ours)"):
        t.add_column(c, justify="right")
    for row in r["rows"]:
        pa, ou = row["paper"], row["ours"]
        comp = ou["compute_ms_prefill"] or ou["compute_ms_decode"]
        t.add_row(str(row["stages"]), f"{pa['load_s']:.2f} / {ou['load_s']:.2f}",
                  f"{pa['compute_ms']:.2f} / {'-' if comp is None else f'{comp:.2f}'}",
                  f"{pa['comm_ms']:.1f} / {ou['comm_ms']:.1f}", f"{pa['max_batch']} / {ou['max_batch']:.0f}")
    console.print(t)
    for f in r["findings"]:
        console.print(f"- {f}")
