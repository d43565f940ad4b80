"""`toolkit bench`: latency and throughput of the exported model across engines, providers and batch sizes.

torch is never imported by this package's modules at import time; the torch engines import
it when they are opened. See docs/bench.md for the JSON schema and the measured results.
"""

from .base import Case, Engine, EngineUnavailable, Instance, engines, register
from .runner import DEFAULT_BATCH_SIZES, DEFAULT_DURATION, SCHEMA_VERSION, BenchSettings, run_bench

__all__ = ["BenchSettings", "Case", "DEFAULT_BATCH_SIZES", "DEFAULT_DURATION", "Engine", "EngineUnavailable",
           "Instance", "SCHEMA_VERSION", "engines", "register", "run_bench"]
