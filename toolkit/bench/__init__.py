"""`toolkit bench`: latency and throughput of the exported model across engines, providers and batch sizes.

This package is edge core: it never imports torch or the torch side. The ONNX Runtime engines
live here; the torch engines and the CUDA matmul peak live in toolkit.export.bench_engines, and
the CLI passes them to ``run_bench``. See docs/bench.md and docs/bench-schema.md.
"""

from .document import SCHEMA_VERSION, BenchReport
from ..errors import EngineUnavailable
from .engine import Case, Engine, Instance
from .ort_engines import ORT_ENGINES
from .runner import DEFAULT_BATCH_SIZES, DEFAULT_DURATION, BenchSettings, run_bench

__all__ = ["BenchReport", "BenchSettings", "Case", "DEFAULT_BATCH_SIZES", "DEFAULT_DURATION", "Engine",
           "EngineUnavailable", "Instance", "ORT_ENGINES", "SCHEMA_VERSION", "run_bench"]
