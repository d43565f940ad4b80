"""The bench report as dataclasses; ``dataclasses.asdict`` gives the JSON (docs/bench-schema.md).

Roofline rows compare like with like: an engine's rate at its median (p50) latency against
the matmul measurement's median rate, in the engine's compute mode per provider: "device"
(resident buffers) on CUDA, "e2e" on CPU where there is nothing to copy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..timing import Latency
from .peak import Peak

SCHEMA_VERSION = "3"  # 3: engines named after the formats (onnx, not ort; docs/bench-schema.md)


@dataclass
class ModelInfo:
    path: str
    sha256: str
    size_bytes: int
    precision: str
    input_shape: list
    flops_per_image: int | None  # from the model's contract; None for files exported before it had one


@dataclass
class RunSettings:
    provider: str
    providers: list[str]
    batch_sizes: list[int]
    warmup: int
    runs: int | None
    duration_s: float | None
    min_runs: int
    threads: int
    engines: list[str] | None
    cuda_graph: bool
    input: str


@dataclass
class EngineRun:
    engine: str
    provider: str
    precision: str
    file: str
    description: str
    providers_used: list[str]
    import_s: float
    create_s: float
    config: dict
    notes: list[str]


@dataclass
class ResultRow:
    engine: str
    provider: str
    precision: str
    batch: int
    mode: str
    first_run_ms: float
    runs: int
    latency_ms: Latency
    throughput_ips: float
    bytes: int | None


@dataclass
class Skipped:
    engine: str
    provider: str | None  # None: the engine could not run anywhere
    reason: str
    batch_sizes: list[int] | None = None  # None: every batch size; else only these were not measured


@dataclass
class RooflineRow:
    engine: str
    provider: str
    precision: str
    batch: int
    mode: str
    gflops_p50: float | None = None
    gflops_best: float | None = None
    gflops_mean: float | None = None
    peak_gflops_median: float | None = None
    fraction_of_peak: float | None = None


@dataclass
class BenchReport:
    tool: str
    created: str
    command: str
    model: ModelInfo
    settings: RunSettings
    environment: dict  # toolkit.machine.environment() plus the run's load average and GPU
    engines: list[EngineRun] = field(default_factory=list)
    results: list[ResultRow] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    peak: dict[str, Peak] = field(default_factory=dict)
    roofline: list[RooflineRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)


def compute_mode(provider: str) -> str:
    return "device" if provider == "cuda" else "e2e"


def roofline(results: list[ResultRow], peaks: dict[str, Peak], flops_per_image: int | None) -> list[RooflineRow]:
    """One row per engine and provider, at its largest batch size."""
    rows = []
    for engine, provider in dict.fromkeys((r.engine, r.provider) for r in results):
        batch = max(r.batch for r in results if r.engine == engine and r.provider == provider)
        r = next((r for r in results if (r.engine, r.provider, r.batch, r.mode)
                  == (engine, provider, batch, compute_mode(provider))), None)
        if r is None:
            continue
        peak = peaks.get(provider)
        row = RooflineRow(engine, provider, r.precision, batch, r.mode,
                          peak_gflops_median=peak.gflops_median if peak else None)
        if flops_per_image:
            gflop = flops_per_image * batch / 1e9  # per run
            row.gflops_p50 = gflop / (r.latency_ms.p50 / 1e3)
            row.gflops_best = gflop / (r.latency_ms.min / 1e3)
            row.gflops_mean = flops_per_image * r.throughput_ips / 1e9
            if row.peak_gflops_median:
                row.fraction_of_peak = row.gflops_p50 / row.peak_gflops_median
        rows.append(row)
    return rows
