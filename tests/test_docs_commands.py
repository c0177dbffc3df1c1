"""Every documented command works: the shell lines of README.md's "Using it" block and the `--set`
examples in `--help` parse, name real options, scenario keys and policies; the cheap ones run
(shortened with `--set horizon_s=...`, writing under tmp_path)."""

from __future__ import annotations

import re
import shlex

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from flexpipe_sim.cli import app
from flexpipe_sim.compare import parse_policy, split_policies
from flexpipe_sim.loadsweep import parse_rates
from flexpipe_sim.policies import registry
from flexpipe_sim.scenario import load_scenario

from .conftest import ROOT

runner = CliRunner()
SHORT = {"run": ["--set", "horizon_s=5", "--set", "drain_s=5", "-q"], "trace stats": ["--set", "horizon_s=60"]}
RUNS = ("run", "cluster stats", "trace stats", "calibrate --check")  # cheap enough to run for real


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [args for args in (shlex.split(line, comments=True) for line in lines) if args]


def parse(args: list[str]):
    """Resolve subcommands and parse options as typer would, without running anything; returns
    (command path, params). Raises click's UsageError for an unknown option or a bad value."""
    cmd = get_command(app)
    ctx = cmd.make_context("flexpipe-sim", list(args))
    path = []
    while hasattr(cmd, "resolve_command"):
        rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        path.append(name)
        ctx = cmd.make_context(name, rest, parent=ctx)
    return " ".join(path), ctx.params


COMMANDS = readme_commands()


def test_the_readme_block_was_found():
    assert len(COMMANDS) >= 10 and all(c[0] == "flexpipe-sim" for c in COMMANDS)


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c[1:4]) for c in COMMANDS])
def test_readme_command(args, tmp_path):
    args = args[1:]
    if "--help" in args:
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "Usage" in res.output, res.output
        return
    path, params = parse(args)
    overrides = params.get("set_") or []
    for key in ("scenario", "scenarios", "source"):  # every --set key is a real scenario key
        value = params.get(key)
        for p in value if isinstance(value, list) else [value]:
            if p is not None and p.suffix == ".yaml":
                load_scenario(ROOT / p, overrides)  # raises ScenarioError naming an unknown key
    if params.get("policies"):
        assert all(parse_policy(n)[0] in registry.names() for n in split_policies(params["policies"]))
    if path == "loadsweep":
        parse_rates(params["rates"])
    label = path + (" --check" if params.get("check") else "")
    if label not in RUNS:
        return
    out = str(tmp_path / "out")
    args = [out if i and args[i - 1] in ("--out", "-o") else a for i, a in enumerate(args)]
    if path in ("run", "trace stats") and "--out" not in args and "-o" not in args:
        args += ["--out", out]
    short = SHORT.get(path, []) if any(a.endswith(".yaml") for a in args) else []
    res = runner.invoke(app, [*args, *short])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output


def help_texts() -> list[str]:
    texts = []

    def walk(cmd) -> None:
        texts.append(cmd.help or "")
        texts.extend(getattr(p, "help", None) or "" for p in cmd.params)
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(get_command(app))
    return texts


def test_help_set_examples_name_real_keys():
    examples = [m for t in help_texts() for m in re.findall(r"--set ([\w.]+=\S+)", t)]
    assert examples, "the --help texts give --set examples"
    load_scenario(ROOT / "scenarios" / "default.yaml", [e.rstrip(".,)") for e in examples])
