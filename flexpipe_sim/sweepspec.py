"""SWEEP.yaml for `flexpipe-sim sweep`: what to run, expanded into one point per simulator run.

A sweep file names base scenarios, policies, seeds and a grid of scenario keys (dotted paths, the
same override mechanism as `run --set`: scenario.apply_overrides). Its points are the cartesian
product scenarios x grid x policies x seeds; every point is built and validated here, before the
first run starts, so a bad key or value is one clear error (SweepError) and not a failed run.

    name: example                      # optional; the default is the file's stem
    scenarios: [../default.yaml]       # relative to this file
    policies: [static, flexpipe]       # as `compare --policies` takes them (variants too)
    seeds: [1, 2, 3]
    grid:                              # optional; every combination of these values
      workload.arrivals.rate: [3, 6]
    set: {outputs.plots: false}        # optional; fixed overrides applied to every point
    horizon_s: 120                     # optional; overrides the scenarios' horizon_s
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .compare import parse_policy, with_policy
from .scenario import Scenario, ScenarioError, load_scenario
from .yamlio import YamlError, read_yaml_file


class SweepError(ValueError):
    """A sweep file that cannot be run; the message says where and why."""


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    scenarios: list[str] = Field(min_length=1)
    policies: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)
    horizon_s: float | None = Field(None, gt=0)

    @field_validator("policies", "seeds", "scenarios")
    @classmethod
    def _unique(cls, v: list) -> list:
        dup = [x for i, x in enumerate(v) if x in v[:i]]
        if dup:
            raise ValueError(f"{dup[0]!r} appears twice")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list]) -> dict[str, list]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"{key}: no values (give at least one)")
            if len({json.dumps(x, sort_keys=True) for x in values}) < len(values):
                raise ValueError(f"{key}: a value appears twice")
        return v


@dataclass(frozen=True)
class Point:
    """One simulator run of a sweep. `id` (<scenario>_<grid>_s<seed>/<policy>) names its folder under
    runs/ and its manifest rows."""

    id: str
    base: str  # the base scenario's name
    grid: dict[str, Any]  # this point's grid values, by key
    policy: str
    seed: int
    scenario: dict = field(repr=False)  # the full scenario (JSON-able), validated; workers re-parse it


def _label(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def grid_label(grid: dict[str, Any]) -> str:
    """'workload.arrivals.rate=5' -> 'rate5': the last key part and the value, folder-safe."""
    return "_".join(f"{k.split('.')[-1]}{_label(v)}" for k, v in grid.items())


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: `--set` parses it back to the same value


def load_sweep(path: Path) -> SweepSpec:
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    try:
        raw = read_yaml_file(path)
    except YamlError as e:
        raise SweepError(str(e)) from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: a sweep must be a YAML mapping, got {type(raw).__name__}")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: invalid sweep"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (valid: name, scenarios, policies, seeds, grid, set, horizon_s)"
            lines.append(f"  {loc}: {msg}")
        raise SweepError("\n".join(lines)) from None


def expand(spec: SweepSpec, base_dir: Path) -> list[Point]:
    """Every point, in a fixed order (scenario, grid, policy, seed); each scenario validated."""
    from .policies import registry

    for pol in spec.policies:
        try:
            name = parse_policy(pol)[0]
        except ValueError as e:
            raise SweepError(f"policies: {e}") from None
        if name not in registry.names():
            raise SweepError(f"policies: unknown policy {name!r}; valid: {', '.join(registry.names())}")
    fixed = [_override(k, v) for k, v in spec.set.items()]
    if spec.horizon_s is not None:
        fixed.append(_override("horizon_s", spec.horizon_s))
    keys = list(spec.grid)
    points: list[Point] = []
    for sc_path in spec.scenarios:
        path = (base_dir / sc_path) if not Path(sc_path).is_absolute() else Path(sc_path)
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            grid = dict(zip(keys, values))
            sets = fixed + [_override(k, v) for k, v in grid.items()]
            for pol in spec.policies:
                for seed in spec.seeds:
                    sc = _build(path, sets, seed, pol, grid)
                    raw = _named(sc, grid, seed)
                    # <scenario>/<policy label>, as compare lays runs out (the report reads the policy
                    # from the folder name)
                    points.append(Point(f"{raw['name']}/{pol.replace('/', '_')}", sc.name, grid, pol, seed, raw))
    ids = [p.id for p in points]
    dup = next((i for n, i in enumerate(ids) if i in ids[:n]), None)
    if dup:
        raise SweepError(f"two points share the folder name {dup!r} (grid values that differ only in "
                         "characters a folder name drops); make them distinct")
    return points


def _build(path: Path, sets: list[str], seed: int, policy: str, grid: dict) -> Scenario:
    where = f"{path}" + (f" with {', '.join(f'{k}={v}' for k, v in grid.items())}" if grid else "")
    try:
        return with_policy(load_scenario(path, [*sets, f"seed={seed}"]), policy)
    except ScenarioError as e:
        raise SweepError(f"{where}, policy {policy}, seed {seed}:\n{e}") from None


def _named(sc: Scenario, grid: dict, seed: int) -> dict:
    """The scenario named for its point, so the evaluation report tells runs apart (names allow
    [A-Za-z0-9_.-]); the seed is in the name because the report keys runs by (scenario, policy)."""
    raw = sc.model_dump(mode="json")
    raw["name"] = "_".join(x for x in (sc.name, grid_label(grid), f"s{seed}") if x)
    return raw
