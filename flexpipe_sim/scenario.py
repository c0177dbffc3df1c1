"""Scenario files: the pydantic schema, `load_scenario(path, overrides)`, and clear errors.

Everything a run depends on is in the scenario (plus the seed), so a scenario file and a seed
reproduce a run exactly. Unknown keys, wrong types and impossible values raise `ScenarioError`,
whose message names the file and the key; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .feasibility import check_fits, check_work
from .hardware import GPUS
from .models import CATALOGUE, ModelSpec
from .paths import resolve_data_path
from .strictnum import bad_number, is_numeric
from .yamlio import YamlError, parse_yaml, read_yaml_file

TRACE_FORMATS = ("auto", "azure-llm", "mooncake", "azure-functions", "servegen", "generic")


class ScenarioError(ValueError):
    """A scenario that cannot run, with a message meant for the person who wrote it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _strict_numbers(cls, raw: Any) -> Any:
        """Booleans are not numbers (`horizon_s: true` ran as 1 s), and infinities are not values."""
        if isinstance(raw, dict):
            for key, v in raw.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                why = bad_number(v) if field is not None and is_numeric(field.annotation) else None
                if why:
                    raise ValueError(f"{key}: {why}")
        return raw


class ServerGroupConfig(_Strict):
    """Servers of one kind in a mixed cluster (issue 15): their GPU, count, and links."""

    gpu: str = Field(description="GPU kind from the catalogue")
    servers: int = Field(ge=1, description="servers of this kind")
    gpus_per_server: int = Field(ge=1, le=16, description="GPUs in each of them")
    intra_server_link: Literal["nvlink", "pcie"] = Field("pcie", description="GPU-GPU inside a server "
                                                          "(nvlink only where the GPU kind has it)")
    rdma: bool = Field(True, description="RDMA NICs between servers (else TCP)")


class ClusterConfig(_Strict):
    servers: int = Field(42, ge=1, description="number of servers (paper: 42)")
    gpus: int = Field(82, ge=1, description="total GPUs, spread evenly over servers (paper: 82)")
    gpu: str = Field("a100-80gb", description="GPU kind from the catalogue (paper names only A100)")
    max_gpus_per_server: int = Field(8, ge=1, le=16, description="physical slots per server")
    racks: int = Field(6, ge=1, description="racks the servers are spread over (assumption: 7 servers per rack)")
    rdma_fraction: float = Field(0.8, ge=0, le=1, description="share of servers with RDMA NICs (paper: 'some')")
    network_gbps: float = Field(100.0, gt=0, description="inter-server network line rate (paper: 100 Gbps)")
    intra_server_link: Literal["nvlink", "pcie"] = "pcie"
    host_memory_gb: float = Field(256.0, gt=0, description="host memory per server (paper: >= 256 GB)")
    host_cache_fraction: float = Field(0.5, gt=0, le=1, description="share of host memory for the weight cache")
    tenant_scale: float = Field(1.0, ge=0, le=1, description="background tenant load, 1 = paper Table 1, 0 = none")
    storage_gb_s: float = Field(1.0, gt=0, description="storage read rate per server, GB/s, shared by its loads "
                                "(Table 2 implies 0.64-1.15 GB/s per stage load)")
    cluster_storage_gb_s: float = Field(22.0, gt=0, description="storage read rate of the whole cluster, GB/s "
                                        "(Table 2: 120 GB in 5.43 s at 32 stages)")
    gpus_per_pcie_uplink: int = Field(2, ge=1, description="GPUs sharing one host->GPU PCIe uplink (HGX A100: 2)")
    mix: list[ServerGroupConfig] | None = Field(None, description="a mixed cluster, group by group (servers, gpus "
                                                 "and rdma_fraction must then agree; gpu names one of the kinds)")

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterConfig":
        if self.gpu not in GPUS:
            raise ValueError(f"gpu: unknown GPU kind {self.gpu!r}; known kinds: {', '.join(sorted(GPUS))}")
        if self.mix is not None:
            from .heterosim import check_mix

            check_mix(self)
        if self.gpus < self.servers:
            raise ValueError(f"gpus: {self.gpus} GPUs cannot populate {self.servers} servers (at least 1 each)")
        if self.gpus > self.servers * self.max_gpus_per_server:
            raise ValueError(
                f"gpus: {self.gpus} GPUs on {self.servers} servers needs more than "
                f"max_gpus_per_server={self.max_gpus_per_server} per server"
            )
        if self.racks > self.servers:
            raise ValueError(f"racks: {self.racks} racks for {self.servers} servers")
        return self


class ShapeConfig(_Strict):
    """A model given by shape instead of by catalogue name."""

    num_layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    intermediate: int = Field(gt=0)
    vocab: int = Field(gt=0)
    max_context: int = Field(gt=0)
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    dtype_bytes: int = Field(2, ge=1, le=4)
    kind: Literal["decoder", "encoder", "encoder-decoder"] = "decoder"
    encoder_tokens: int = Field(0, ge=0, description="encoder-decoder: fixed encoder input length")
    max_output_tokens: int | None = Field(None, gt=0, description="decoder positions, if below max_context")

    @model_validator(mode="after")
    def _divisible(self) -> "ShapeConfig":
        if self.hidden % self.num_heads:
            raise ValueError("hidden must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if (self.kind == "encoder-decoder") != (self.encoder_tokens > 0):
            raise ValueError("encoder_tokens: give it (> 0) for kind encoder-decoder, and only for it")
        if self.encoder_tokens >= self.max_context:
            raise ValueError("encoder_tokens must be below max_context")
        return self


class SloConfig(_Strict):
    """Per-model latency objectives; a request meets its SLO when both hold (goodput counts those)."""

    ttft_s: float = Field(gt=0, description="time to first token")
    tpot_s: float = Field(gt=0, description="time per output token after the first")


class ModelConfig(_Strict):
    name: str
    shape: ShapeConfig | None = None
    slo: SloConfig
    share: float = Field(1.0, gt=0, description="relative share of the traffic")

    @model_validator(mode="after")
    def _known(self) -> "ModelConfig":
        if self.shape is None and self.name not in CATALOGUE:
            raise ValueError(
                f"name: unknown model {self.name!r}; give a 'shape' or use one of {', '.join(sorted(CATALOGUE))}"
            )
        return self

    def spec(self) -> ModelSpec:
        if self.shape is None:
            return CATALOGUE[self.name]
        return ModelSpec(name=self.name, **self.shape.model_dump())


def _must_exist(path: str) -> str:
    if not Path(path).exists():
        raise ValueError(f"no such file or folder: {path} (relative paths are looked up next to the "
                         "scenario, then in the working directory; traces/... also in the bundled traces)")
    return path


class PoissonArrivals(_Strict):
    kind: Literal["poisson"]
    rate: float = Field(gt=0, description="requests per second")


class GammaArrivals(_Strict):
    """Gamma renewal process: IATs ~ Gamma(1/cv^2, cv^2/rate)."""

    kind: Literal["gamma"]
    rate: float = Field(gt=0, description="requests per second")
    cv: float = Field(1.0, gt=0, description="coefficient of variation of inter-arrival times")


class MMPPArrivals(_Strict):
    """Markov-modulated Poisson bursts: state i emits at rates[i] for Exp(mean_sojourn_s[i])."""

    kind: Literal["mmpp"]
    rates: list[Annotated[float, Field(ge=0)]] = Field(min_length=2)
    mean_sojourn_s: list[Annotated[float, Field(gt=0)]] = Field(min_length=2)
    rate: float | None = Field(None, gt=0, description="rescale time so the mean rate is this")

    @model_validator(mode="after")
    def _same_length(self) -> "MMPPArrivals":
        if len(self.rates) != len(self.mean_sojourn_s):
            raise ValueError("rates and mean_sojourn_s need one entry per state")
        if not any(self.rates):
            raise ValueError("rates: at least one state must emit requests")
        return self


class TraceArrivals(_Strict):
    """Replay a trace file: cut from start_s, optionally reshape to a CV, time-scale to a rate."""

    kind: Literal["trace"]
    path: str
    format: Literal[TRACE_FORMATS] = "auto"  # type: ignore[valid-type]
    start_s: float = Field(0.0, ge=0, description="skip the trace before this offset")
    rate: float | None = Field(None, gt=0, description="time-scale to this mean rate (keeps the CV)")
    cv: float | None = Field(None, gt=0, description="reshape inter-arrival times to this CV")
    top: int | None = Field(None, ge=1, description="azure-functions: busiest N functions; servegen: first N clients")
    expand: Literal["uniform", "equidistant"] = "uniform"
    stream_s: float | None = Field(None, gt=0, description="realise rate and CV over a stream this long "
                                   "(default: the horizon); the run replays a window of it")
    offset_s: float = Field(0.0, ge=0, description="the run starts this far into the stream (needs stream_s)")

    @model_validator(mode="after")
    def _exists(self) -> "TraceArrivals":
        _must_exist(self.path)
        if self.offset_s > 0 and self.stream_s is None:
            raise ValueError("offset_s: a window into the stream needs stream_s (the stream's length)")
        return self


class DiurnalConfig(_Strict):
    """Modulate any arrival process by 1 + amplitude * sin(2 pi t / period_s + phase)."""

    period_s: float = Field(86400.0, gt=0)
    amplitude: float = Field(0.5, ge=0, lt=1)
    phase: float = 0.0


class FixedLengthConfig(_Strict):
    kind: Literal["fixed"] = "fixed"
    prompt_tokens: int = Field(gt=0)
    output_tokens: int = Field(gt=0)


class TraceLengths(_Strict):
    """Resample (prompt, output) pairs from a trace file that has lengths."""

    kind: Literal["trace"]
    path: str
    format: Literal[TRACE_FORMATS] = "auto"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _exists(self) -> "TraceLengths":
        _must_exist(self.path)
        return self


class ServeGenLengths(_Strict):
    """Prompt and output PMFs from a ServeGen chunk-<client>-dataset.json(.gz)."""

    kind: Literal["servegen"]
    path: str

    @model_validator(mode="after")
    def _exists(self) -> "ServeGenLengths":
        _must_exist(self.path)
        return self


class LengthPhase(_Strict):
    lengths: Literal["azure-conv", "azure-code"] | FixedLengthConfig
    duration_s: float = Field(gt=0, description="how long this phase lasts in each cycle")


class PhasedLengths(_Strict):
    """Lengths whose mix shifts over time (issue 15): the phases in order, repeated; a request takes
    the lengths of the phase its arrival falls in (e.g. long-prompt code vs chat)."""

    kind: Literal["phased"]
    phases: list[LengthPhase] = Field(min_length=2)


Arrivals = Annotated[PoissonArrivals | GammaArrivals | MMPPArrivals | TraceArrivals, Field(discriminator="kind")]
LengthSpec = Annotated[FixedLengthConfig | TraceLengths | ServeGenLengths | PhasedLengths, Field(discriminator="kind")]


class WorkloadConfig(_Strict):
    arrivals: Arrivals
    diurnal: DiurnalConfig | None = None
    lengths: Literal["azure-conv", "azure-code", "from-trace"] | LengthSpec = "azure-conv"
    assign: Literal["random", "by-key"] = Field(
        "random", description="random: each request to a model by share; by-key: whole functions/clients/"
                              "trace models to models, balanced by volume and share")

    @model_validator(mode="after")
    def _from_trace(self) -> "WorkloadConfig":
        if self.lengths == "from-trace" and self.arrivals.kind != "trace":
            raise ValueError("lengths: 'from-trace' needs arrivals of kind 'trace'")
        if self.assign == "by-key" and self.arrivals.kind != "trace":
            raise ValueError("assign: 'by-key' needs arrivals of kind 'trace'")
        return self


class PolicyConfig(_Strict):
    name: str = "static"
    params: dict[str, Any] = Field(default_factory=dict)


class EngineConfig(_Strict):
    """Per-instance serving engine (vLLM-like continuous batching). Defaults: vLLM's."""

    block_size: int = Field(16, ge=1, description="tokens per KV block (vLLM default)")
    token_budget: int = Field(2048, ge=1, description="tokens computed per micro-batch step (vLLM max_num_batched_tokens)")
    max_seqs: int = Field(256, ge=1, description="sequences per micro-batch (vLLM max_num_seqs)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of a GPU's free memory a stage may take")
    workspace_gb: float = Field(1.5, ge=0, description="activation workspace + CUDA context per stage")
    max_queue_wait_s: float = Field(120.0, gt=0, description="requests waiting longer before admission are dropped")
    control_interval_s: float = Field(1.0, gt=0, description="how often the policy is asked to decide")
    stats_window_s: float = Field(15.0, gt=0, description="window of the arrival statistics policies see "
                                  "(the paper measures CV in 15 s windows, Fig. 9)")
    prewarm: bool = Field(True, description="instances launched at t=0 are already loaded (always-on capacity)")
    fast_forward: bool = Field(True, description="advance steady decode steps in O(what changed) "
                               "(engine/fastbatch.py) and run them ahead without an event each "
                               "(engine/runahead.py); false: every request touched every step (same records)")
    compiled: bool = Field(True, description="take run-ahead windows' steps in a loop compiled with numba "
                           "(engine/stepkernel.py); false: the same loop in Python (same records, slower)")


class CostConfig(_Strict):
    """Where stage times come from: a calibration profile per model (its GPU kind must be the
    cluster's), else what `engine` says:
    - eager: the roofline of costmodel.py with efficiencies fitted to torch-eager H100 anchors;
    - paged: a paged-attention serving engine, from Vidur's A100 measurements (flexpipe_sim/vidur.py):
      Llama-2-7B-shaped models use the external profile calibrate/profiles/a100-80gb-llama2-7b-vidur.json,
      every other model the A100 roofline with efficiencies fitted to that profile. A100-80GB only."""

    engine: Literal["eager", "paged"] = Field(
        "eager", description="cost model for models without a profile: eager (torch-eager roofline) or "
                             "paged (Vidur's A100 paged-attention measurements)")
    profiles: dict[str, str] = Field(default_factory=dict, description="model name -> profile JSON")
    by_gpu: dict[str, dict[str, str]] = Field(default_factory=dict, description="mixed clusters: model name -> "
                                              "{GPU kind -> profile JSON}; other kinds use the roofline")

    def check_cluster(self, gpu: str) -> None:
        """`paged` is built from A100-80GB measurements; on another GPU it would pass them off as that GPU's."""
        from .vidur import GPU_KIND

        if self.engine == "paged" and gpu != GPU_KIND:
            raise ValueError(f"cost.engine: paged is built from Vidur's {GPU_KIND} measurements and the cluster's "
                             f"GPUs are {gpu}; use cluster.gpu: {GPU_KIND}, or cost.engine: eager")

    @model_validator(mode="after")
    def _exist(self) -> "CostConfig":
        for model, path in self.profiles.items():
            if not Path(path).is_file():
                raise ValueError(f"profiles.{model}: no such profile file: {path}")
        for model, kinds in self.by_gpu.items():
            for kind, path in kinds.items():
                if not Path(path).is_file():
                    raise ValueError(f"by_gpu.{model}.{kind}: no such profile file: {path}")
        return self


class OutputConfig(_Strict):
    dir: str = Field("results/{name}", description="results folder; {name} is the scenario name")
    format: Literal["parquet", "csv"] = "parquet"
    plots: bool = True
    sample_interval_s: float = Field(1.0, gt=0, description="time-series sampling period")

    @model_validator(mode="after")
    def _placeholders(self) -> "OutputConfig":
        # checked here, not when the results are written after the whole simulation
        if not self.dir.strip():
            raise ValueError("dir: empty; give a folder, e.g. results/{name}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.dir) if f is not None]
            bad = [f for f in fields if f != "name"]
            if bad:
                raise ValueError(f"dir: unknown placeholder {{{bad[0]}}} in {self.dir!r}; the only one is {{name}} "
                                 "(write {{ and }} for literal braces)")
            self.dir.format(name="x")
        except (KeyError, IndexError, ValueError) as e:
            if str(e).startswith("dir: "):
                raise
            raise ValueError(f"dir: {self.dir!r} is not a valid folder template ({e}); the only placeholder "
                             "is {name} (write {{ and }} for literal braces)") from None
        return self


class Scenario(_Strict):
    name: str = Field(description="letters, digits, _ . - ; not starting with . or - (a results folder name)")
    seed: int = Field(0, ge=0)
    horizon_s: float = Field(gt=0, description="arrivals stop here")
    drain_s: float = Field(300.0, ge=0, description="extra time to finish in-flight requests")
    warmup_s: float = Field(0.0, ge=0, description="arrivals before this run but are not measured "
                            "(excluded from every metric; summary.json says so)")
    cluster: ClusterConfig = ClusterConfig()
    models: list[ModelConfig] = Field(min_length=1)
    workload: WorkloadConfig
    policy: PolicyConfig = PolicyConfig()
    engine: EngineConfig = EngineConfig()
    cost: CostConfig = CostConfig()
    outputs: OutputConfig = OutputConfig()

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        # outputs.dir formats it into a path: "/", "..", "." (or a hidden name) would escape results/
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", v):
            raise ValueError(f"{v!r} is not a usable results folder name: use letters, digits, '_', '.' and '-', "
                             "starting with a letter, digit or '_'")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "Scenario":
        from .policies import registry  # local: policies import nothing from here at module level

        if self.warmup_s >= self.horizon_s:
            raise ValueError(f"warmup_s: the warm-up ({self.warmup_s:g} s) must end before the horizon "
                             f"({self.horizon_s:g} s), or nothing is measured")
        a = self.workload.arrivals
        if isinstance(a, TraceArrivals) and a.stream_s is not None and a.offset_s + self.horizon_s > a.stream_s + 1e-9:
            raise ValueError(f"workload.arrivals.offset_s: the run's window [{a.offset_s:g}, "
                             f"{a.offset_s + self.horizon_s:g}) s ends after the stream (stream_s={a.stream_s:g})")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("models: the same model is listed twice")
        check_fits(self, GPUS[self.cluster.gpu])
        check_work(self)
        self.cost.check_cluster(self.cluster.gpu)
        for model in self.cost.profiles:
            if model not in names:
                raise ValueError(f"cost.profiles.{model}: no such model in models ({', '.join(names)})")
        registry.validate_params(self.policy.name, self.policy.params, self)
        return self


def _index(node: list, k: str) -> int:
    i = int(k)
    if not 0 <= i < len(node):
        raise IndexError(f"{k} is not an index of a list of {len(node)}")
    return i


def _set_path(raw: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if any(not k.strip() for k in keys):
        raise ValueError(f"empty key part in {dotted!r}")
    node: Any = raw
    for k in keys[:-1]:
        if isinstance(node, list):
            node = node[_index(node, k)]
        elif isinstance(node, dict):
            node = node.setdefault(k, {})
        else:
            raise TypeError(f"{k!r} is under a value ({node!r}), not a mapping")
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise TypeError(f"{last!r} is under a value ({node!r}), not a mapping")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`--set a.b.c=value`: value is parsed as YAML (numbers, booleans, lists)."""
    for item in overrides:
        if "=" not in item:
            raise ScenarioError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        if not text.strip():
            raise ScenarioError(f"--set {item!r}: no value after '=' (write null to clear a key)")
        try:
            value = parse_yaml(text, f"--set {item!r}")
        except YamlError as e:
            raise ScenarioError(f"{e} (quote strings that hold YAML syntax)") from None
        try:
            _set_path(raw, key.strip(), value)
        except (IndexError, ValueError, TypeError, AttributeError) as e:
            raise ScenarioError(f"--set {item!r}: no such key ({e})") from None
    return raw


def _format(e: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid scenario"]
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"] if "[" not in str(x))  # not pydantic's union branch names
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/scenarios.md)"
        key = re.match(r"([A-Za-z_][\w.]*): ", msg)  # a model-level check names its own key
        if loc and key:
            loc, msg = f"{loc}.{key.group(1)}", msg[key.end():]
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")  # cross-checks name their own keys
    return "\n".join(lines)


def _resolve_paths(raw: dict, base_dir: Path | None) -> None:
    cost = raw.get("cost")
    if isinstance(cost, dict) and isinstance(cost.get("profiles"), dict):
        cost["profiles"] = {k: resolve_data_path(v, base_dir) if isinstance(v, str) else v
                            for k, v in cost["profiles"].items()}
    if isinstance(cost, dict) and isinstance(cost.get("by_gpu"), dict):
        cost["by_gpu"] = {m: {k: resolve_data_path(v, base_dir) if isinstance(v, str) else v for k, v in d.items()}
                          if isinstance(d, dict) else d for m, d in cost["by_gpu"].items()}
    w = raw.get("workload")
    if not isinstance(w, dict):
        return
    for key in ("arrivals", "lengths"):
        block = w.get(key)
        if isinstance(block, dict) and isinstance(block.get("path"), str):
            block["path"] = resolve_data_path(block["path"], base_dir)


def parse_scenario(raw: Any, source: str = "<scenario>", overrides: list[str] | None = None,
                   base_dir: Path | None = None) -> Scenario:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{source}: a scenario must be a YAML mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    _resolve_paths(raw, base_dir)
    try:
        return Scenario.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(_format(e, source)) from None
    except RecursionError:
        raise ScenarioError(f"{source}: nested too deeply to be a scenario") from None


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"{p}: no such scenario file")
    try:
        raw = read_yaml_file(p)
    except YamlError as e:
        raise ScenarioError(str(e)) from None
    return parse_scenario(raw, str(p), overrides, p.resolve().parent)
