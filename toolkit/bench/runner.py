"""Run the benchmark plan and assemble the report document (schema: docs/bench.md)."""

from __future__ import annotations

import datetime
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__, runtime
from ..atomic import file_sha256
from ..errors import ModelError, ProviderUnavailable
from . import goals
from .base import EngineUnavailable, engines, plugin_errors
from ..machine import environment, gpu_info, physical_cores
from .flops import count_flops
from .peak import measure_peak
from .stats import summarize
from .timing import measure

SCHEMA_VERSION = "1"
DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 1024)
DEFAULT_DURATION = 0.5
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "all")


@dataclass
class BenchSettings:
    model: Path = Path("model.onnx")
    provider: str = "auto"
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 5
    runs: int | None = None  # exact timed runs per case; otherwise duration-bounded
    duration: float | None = None  # seconds per case (default DEFAULT_DURATION), at least min_runs runs
    min_runs: int = 10
    threads: int | None = None  # default: physical cores
    engines: tuple[str, ...] | None = None  # None: every engine that can run here
    cuda_graph: bool = False
    peak: bool = True
    seed: int = 0
    command: str = ""  # how the run was asked for, recorded in the report

    def validate(self) -> None:
        if self.provider not in PROVIDER_CHOICES:
            raise ValueError(f"provider must be one of {PROVIDER_CHOICES}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.runs is not None and self.duration is not None:
            raise ValueError("give runs or duration, not both")


def _model_info(path: Path):
    session, _, _ = runtime.create_session(path, "cpu")
    contract = runtime.read_contract(session, path)
    flops = count_flops(path)
    digest = file_sha256(path)
    info = {
        "path": str(path), "sha256": digest, "size_bytes": path.stat().st_size,
        "precision": contract.precision, "input_shape": contract.input_shape,
        "flops_per_image": flops.flops_per_image or None,
        "flops_source": f"ONNX graph: {flops.matmul_nodes} matrix-multiply node(s), 2*K*N per weight matrix",
        "flops_unresolved_nodes": flops.unresolved,
    }
    return contract, info


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _inputs(contract, batch: int, seed: int) -> np.ndarray:
    """Random pixels through the model's own preprocessing: realistic values, same for every engine."""
    spec = contract.preprocess
    pixels = np.random.default_rng(seed).integers(0, 256, size=(batch, spec.height, spec.width), dtype=np.uint8)
    return np.ascontiguousarray(spec.normalize(pixels))


def _select(settings: BenchSettings, skipped: list) -> list:
    registry = engines()
    explicit = settings.engines is not None
    names = list(settings.engines) if explicit else list(registry)
    for name in names:
        if name not in registry:
            raise ValueError(f"unknown engine {name!r}; known: {', '.join(registry)}")
    selected = []
    for name in names:
        engine = registry[name](settings.model)
        why = engine.missing()
        if why is None:
            selected.append(engine)
        elif not explicit:
            skipped.append({"engine": name, "provider": None, "reason": why})
        elif not engine.artifact().is_file():
            raise ModelError(engine.artifact(), f"no such file, needed by engine {name} ({engine.description})")
        else:
            raise EngineUnavailable(f"engine {name}: {why}")
    return selected


def _providers(settings: BenchSettings, threads: int, notes: list) -> list[str]:
    if settings.provider == "all":
        return ["cpu", "cuda"]
    if settings.provider != "auto":
        return [settings.provider]
    registry = engines()
    why = registry["ort"](settings.model).cuda_problem(threads)
    if why is None:
        notes.append("--provider auto: CUDA is usable, measuring on CUDA")
        return ["cuda"]
    notes.append(f"--provider auto: CUDA not usable ({why}); measuring on CPU")
    return ["cpu"]


def _plan(settings: BenchSettings, selected: list, providers: list[str], threads: int, skipped: list) -> list:
    plan, cuda_reasons = [], {}
    for provider in providers:
        for engine in selected:
            if provider == "cuda":
                why = engine.cuda_problem(threads)
                if why:
                    # Named explicitly, every engine must run on CUDA; never a CPU number in its place.
                    if settings.provider == "cuda" and settings.engines is not None:
                        raise ProviderUnavailable(f"--provider cuda: engine {engine.name}: {why}")
                    cuda_reasons.setdefault(why, []).append(engine.name)
                    skipped.append({"engine": engine.name, "provider": "cuda", "reason": why})
                    continue
            plan.append((provider, engine))
    if settings.provider == "cuda" and not plan:
        why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in cuda_reasons.items())
        raise ProviderUnavailable(f"--provider cuda: CUDA cannot be used here ({why})")
    return plan


def _run_engine(engine, provider, settings, threads, duration, data, batches, results, bar) -> dict:
    """Open one engine on one provider and time every case at every batch size into ``results``."""
    t0 = time.perf_counter()
    engine.prepare()
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    instance = engine.open(provider, threads, {"cuda_graph": settings.cuda_graph})
    create_s = time.perf_counter() - t0
    precision = instance.precision or engine.precision
    try:
        with instance.context():
            for batch in batches:
                x = data[:batch]
                for case in instance.cases(x):
                    first, times = measure(case.fn, warmup=settings.warmup, runs=settings.runs, duration=duration,
                                           min_runs=settings.min_runs)
                    row = {"engine": engine.name, "provider": provider, "precision": precision, "batch": batch,
                           "mode": case.mode, "first_run_ms": first * 1e3}
                    row.update(summarize(times, batch))
                    row["bytes"] = case.nbytes
                    results.append(row)
                bar.update(1)
    finally:
        instance.close()
    return {"engine": engine.name, "provider": provider, "precision": precision, "file": str(engine.artifact()),
            "description": engine.description, "providers_used": instance.providers_used, "import_s": import_s,
            "create_s": create_s, "config": instance.config, "notes": instance.notes}


def run_bench(settings: BenchSettings, progress: bool = False) -> dict:
    settings.validate()
    load_start = _load_average()
    model = Path(settings.model)
    contract, model_info = _model_info(model)
    threads = settings.threads or physical_cores()
    duration = None if settings.runs is not None else (settings.duration or DEFAULT_DURATION)
    notes: list[str] = []
    skipped = [{"engine": None, "provider": None, "reason": e} for e in plugin_errors]
    selected = _select(settings, skipped)
    providers = _providers(settings, threads, notes)
    plan = _plan(settings, selected, providers, threads, skipped)

    peaks = {}
    for provider in dict.fromkeys(p for p, _ in plan):
        if settings.peak:
            peak, why = measure_peak(provider, threads)
            peaks[provider] = peak if peak else {"error": why}

    batches = list(dict.fromkeys(settings.batch_sizes))
    data = _inputs(contract, max(batches), settings.seed)
    engines_out, results = [], []
    from tqdm import tqdm

    bar = tqdm(total=len(plan) * len(batches), desc="bench", unit="case", file=sys.stderr, leave=False,
               disable=not progress, dynamic_ncols=True)
    try:
        for provider, engine in plan:
            bar.set_postfix_str(f"{engine.name} on {provider}", refresh=True)
            try:
                entry = _run_engine(engine, provider, settings, threads, duration, data, batches, results, bar)
            except (ProviderUnavailable, EngineUnavailable) as e:
                if settings.engines is not None:
                    raise
                skipped.append({"engine": engine.name, "provider": provider, "reason": str(e)})
                bar.update(len(batches))
                continue
            engines_out.append(entry)
    finally:
        bar.close()

    env = environment(threads)
    # Other processes on the machine show up as long tails; this says how busy it was.
    env["load_average_1m"] = {"start": load_start, "end": _load_average()}
    if "cuda" in providers and any(p == "cuda" for p, _ in plan):
        env["gpu"] = gpu_info()
    flops = model_info["flops_per_image"]
    roofline = goals.roofline(results, peaks, flops)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": f"toolkit {__version__} bench",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": settings.command,
        "model": model_info,
        "settings": {
            "provider": settings.provider, "providers": providers, "batch_sizes": batches,
            "warmup": settings.warmup, "runs": settings.runs, "duration_s": duration, "min_runs": settings.min_runs,
            "threads": threads, "engines": list(settings.engines) if settings.engines else None,
            "cuda_graph": settings.cuda_graph,
            "input": f"random uint8 pixels (seed {settings.seed}) through the model's preprocessing",
        },
        "environment": env,
        "engines": engines_out,
        "results": results,
        "skipped": skipped,
        "peak": peaks,
        "roofline": roofline,
        "goals": goals.evaluate(results, peaks, flops),
        "notes": notes,
    }
