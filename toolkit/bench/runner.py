"""Run the benchmark plan and assemble the report (schema: docs/bench-schema.md)."""

from __future__ import annotations

import datetime
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .. import __version__, runtime
from ..atomic import file_sha256
from ..batch_limits import rows_that_fit
from ..formats import canonical
from ..errors import BatchTooLarge, EngineUnavailable, ModelError, ProviderUnavailable
from ..machine import available_memory, environment, gpu_info, physical_cores
from ..timing import measure, summarize
from .document import BenchReport, EngineRun, ModelInfo, ResultRow, RunSettings, Skipped, roofline
from .engine import Case, Engine
from .ort_engines import OrtEngine
from .peak import Peak, cpu_peak

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
    flags: object = None  # toolkit.flags.PreprocessFlags for a model without the toolkit's contract
    run_timeout: float | None = None  # seconds per ONNX Runtime run (toolkit.run_guard; None: its default, 0: none)

    def validate(self) -> None:
        if self.provider not in PROVIDER_CHOICES:
            raise ValueError(f"provider must be one of {PROVIDER_CHOICES}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.runs is not None and self.duration is not None:
            raise ValueError("give runs or duration, not both")


def _model_info(path: Path, flags=None):
    session, _, _ = runtime.create_session(path, "cpu")
    contract = runtime.model_contract(session, path, flags)
    return contract, ModelInfo(path=str(path), sha256=file_sha256(path), size_bytes=path.stat().st_size,
                               precision=contract.precision, input_shape=contract.input_shape,
                               flops_per_image=contract.flops_per_image)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _inputs(contract, batch: int, seed: int) -> np.ndarray:
    """Random pixels through the model's own preprocessing: realistic values, same for every engine."""
    spec = contract.preprocess
    pixels = np.random.default_rng(seed).integers(0, 256, size=(batch, *spec.pixel_shape), dtype=np.uint8)
    return np.ascontiguousarray(spec.normalize(pixels))


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def check_memory(contract, batch: int, engines: int, available: int | None = None) -> None:
    """Refuse, before allocating, a batch whose arrays would not fit in the memory that is free.

    Needed: the random uint8 pixels and their float32 input (made once), then per engine its input
    and output arrays, doubled as the margin for the engine's own copies and intermediate activations.
    """
    available = available_memory() if available is None else available
    if available is None:
        return  # cannot tell on this platform: let the allocation decide
    pixels = batch * int(np.prod(contract.input_shape[1:]))
    inputs, outputs = pixels * 4, batch * len(contract.classes) * 4
    need = pixels + inputs + 2 * max(1, engines) * (inputs + outputs)
    if need > available:
        raise BatchTooLarge(f"batch size {batch} needs about {_gb(need)} of memory (input {_gb(inputs)}, "
                            f"output {_gb(outputs)} per engine, {max(1, engines)} engine(s), with margin), "
                            f"but {_gb(available)} is available")


def _select(settings: BenchSettings, engines: Mapping[str, type[Engine]], skipped: list[Skipped]) -> list[Engine]:
    explicit = settings.engines is not None
    # an earlier name of a format's engine (ort-int8 for int8) still works, with a DeprecationWarning
    names = [canonical(n) for n in settings.engines] if explicit else list(engines)
    unknown = [n for n in names if n not in engines]
    if unknown:
        raise ValueError(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(engines)}")
    selected = []
    for name in names:
        engine = engines[name](settings.model)
        why = engine.missing()
        if why is None:
            selected.append(engine)
        elif not explicit:
            skipped.append(Skipped(name, None, why))
        elif not engine.artifact().is_file():
            raise ModelError(engine.artifact(), f"no such file, needed by engine {name} ({engine.description})")
        else:
            raise EngineUnavailable(f"engine {name}: {why}")
    return selected


def _providers(settings: BenchSettings, threads: int, notes: list[str]) -> list[str]:
    if settings.provider == "all":
        return ["cpu", "cuda"]
    if settings.provider != "auto":
        return [settings.provider]
    why = OrtEngine(settings.model).cuda_problem(threads)
    if why is None:
        notes.append("--provider auto: CUDA is usable, measuring on CUDA")
        return ["cuda"]
    notes.append(f"--provider auto: CUDA not usable ({why}); measuring on CPU")
    return ["cpu"]


def _plan(settings: BenchSettings, selected: list[Engine], providers: list[str], threads: int,
          skipped: list[Skipped]) -> list[tuple[str, Engine]]:
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
                    skipped.append(Skipped(engine.name, "cuda", why))
                    continue
            plan.append((provider, engine))
    if settings.provider == "cuda" and not plan:
        why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in cuda_reasons.items())
        raise ProviderUnavailable(f"--provider cuda: CUDA cannot be used here ({why})")
    return plan


def _peak(provider: str, threads: int, measure_peak: Callable[[int], Peak] | None) -> Peak:
    if measure_peak is None:
        return Peak(provider, error=f"no matmul measurement for {provider} in this install")
    try:
        return measure_peak(threads)
    except Exception as e:  # the roof is context for the numbers, not a reason to lose them
        return Peak(provider, error=f"the {provider} matmul measurement failed: {type(e).__name__}: {e}"[:300])


def _run_engine(engine: Engine, provider: str, run_timeout: float | None, data: Callable[[int], np.ndarray],
                report: BenchReport, bar) -> EngineRun:
    """Open one engine on one provider and time every case at every batch size into ``report.results``, as
    ``report.settings`` records the run (threads, batch sizes, warm-up and timed runs, CUDA graph).

    A graph exported with a fixed batch dimension is timed at that size only: N images run as
    chunks of it would be another measurement than "batch N", so the other sizes are listed as skipped.
    """
    settings, batches = report.settings, report.settings.batch_sizes
    t0 = time.perf_counter()
    engine.prepare()
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    instance = engine.open(provider, settings.threads, {"cuda_graph": settings.cuda_graph, "run_timeout": run_timeout})
    create_s = time.perf_counter() - t0
    precision = instance.precision or engine.precision
    fixed = instance.fixed_batch
    if fixed is not None and batches != [fixed]:
        others = [b for b in batches if b != fixed]
        report.skipped.append(Skipped(engine.name, provider, f"the graph's batch dimension is fixed at {fixed}: "
                                      f"timed at batch {fixed} only", batch_sizes=others))
        bar.update(len(batches) - 1)  # the one size timed advances it below
        batches = [fixed]
    too_large = [b for b in batches if instance.max_batch is not None and b > instance.max_batch]
    if too_large:
        report.skipped.append(Skipped(engine.name, provider, f"the runtime accepts batches of at most "
                                      f"{instance.max_batch}", batch_sizes=too_large))
        bar.update(len(too_large))
        batches = [b for b in batches if b not in too_large]
    try:
        with instance.context():
            for batch in batches:
                x = data(batch)
                cases = list(instance.cases(x))
                pipeline = getattr(data, "pipeline", lambda _: None)(batch) if provider == "cpu" else None
                if pipeline is not None and any(c.mode == "e2e" for c in cases):
                    cases.append(_with_preprocessing(instance, pipeline))
                for case in cases:
                    first, times = measure(case.fn, warmup=settings.warmup, runs=settings.runs,
                                           duration=settings.duration_s, min_runs=settings.min_runs)
                    stats = summarize(times, batch)
                    report.results.append(ResultRow(engine.name, provider, precision, batch, case.mode, first * 1e3,
                                             stats.runs, stats.latency_ms, stats.throughput_ips, case.nbytes))
                bar.update(1)
    finally:
        instance.close()
    return EngineRun(engine.name, provider, precision, str(engine.artifact()), engine.description,
                     instance.providers_used, import_s, create_s, instance.config, instance.notes)


def _with_preprocessing(instance, pipeline) -> Case:
    """Image models: the image pipeline (decoded RGB images at the model's size -> resize and crop as the contract
    says -> the model's input) and then the model, on exactly what the pipeline made, timed as one."""
    def run():
        x = pipeline()
        return next(c for c in instance.cases(x) if c.mode == "e2e").fn()

    return Case("preprocess+e2e", run)


class _Inputs:
    """The model's input for a batch size (random uint8 pixels through its preprocessing, made once); for an image
    model also ``pipeline(batch)``: the preprocessing itself, from decoded images, to be timed with the model."""

    def __init__(self, contract, batch: int, seed: int):
        self.contract, self.seed = contract, seed
        self.data = _inputs(contract, batch, seed)

    def __call__(self, batch: int) -> np.ndarray:
        if batch > len(self.data):  # an engine's fixed batch larger than every size asked for
            check_memory(self.contract, batch, 1)
            return _inputs(self.contract, batch, self.seed)
        return self.data[:batch]

    def pipeline(self, batch: int):
        spec = self.contract.preprocess
        if spec.mode != "image":
            return None
        from PIL import Image

        from ..preprocess import model_input, to_model_pixels

        rng = np.random.default_rng(self.seed)
        images = [Image.fromarray(rng.integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8))
                  for _ in range(batch)]
        table = spec.lookup_table()
        return lambda: model_input(np.stack([to_model_pixels(im, spec) for im in images]), spec, table)


def run_bench(settings: BenchSettings, engines: Mapping[str, type[Engine]],
              peaks: Mapping[str, Callable[[int], Peak]] | None = None, progress: bool = False) -> BenchReport:
    """Time ``engines`` (name -> Engine class) as ``settings`` asks.

    ``peaks`` maps a provider to the function measuring its matmul roof with a thread count
    (default: the CPU one; the CLI adds CUDA's from the torch side).
    """
    settings.validate()
    peaks = {"cpu": cpu_peak} if peaks is None else peaks
    load_start = _load_average()
    model = Path(settings.model)
    contract, model_info = _model_info(model, settings.flags)
    threads = settings.threads or physical_cores()
    duration = None if settings.runs is not None else (settings.duration or DEFAULT_DURATION)
    batches = list(dict.fromkeys(settings.batch_sizes))
    report = BenchReport(
        tool=f"toolkit {__version__} bench",
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=settings.command, model=model_info, environment={},
        settings=RunSettings(
            provider=settings.provider, providers=[], batch_sizes=batches, warmup=settings.warmup, runs=settings.runs,
            duration_s=duration, min_runs=settings.min_runs, threads=threads,
            engines=list(settings.engines) if settings.engines else None, cuda_graph=settings.cuda_graph,
            input=f"random uint8 pixels (seed {settings.seed}) through the model's preprocessing"))
    selected = _select(settings, engines, report.skipped)
    providers = report.settings.providers = _providers(settings, threads, report.notes)
    plan = _plan(settings, selected, providers, threads, report.skipped)
    rows_that_fit(model, contract.input_shape, contract.preprocess.pixel_shape)  # one image, or the model is refused
    check_memory(contract, max(batches), len(plan))
    if settings.peak:
        report.peak = {p: _peak(p, threads, peaks.get(p)) for p in dict.fromkeys(p for p, _ in plan)}

    inputs = _Inputs(contract, max(batches), settings.seed)

    from tqdm import tqdm

    bar = tqdm(total=len(plan) * len(batches), desc="bench", unit="case", file=sys.stderr, leave=False,
               disable=not progress, dynamic_ncols=True)
    try:
        for provider, engine in plan:
            bar.set_postfix_str(f"{engine.name} on {provider}", refresh=True)
            try:
                report.engines.append(_run_engine(engine, provider, settings.run_timeout, inputs, report, bar))
            except (ProviderUnavailable, EngineUnavailable) as e:
                if settings.engines is not None:
                    raise
                report.skipped.append(Skipped(engine.name, provider, str(e)))
                bar.update(len(batches))
    finally:
        bar.close()

    env = report.environment = environment(threads)
    # Other processes on the machine show up as long tails; this says how busy it was.
    env["load_average_1m"] = {"start": load_start, "end": _load_average()}
    if any(p == "cuda" for p, _ in plan):
        env["gpu"] = gpu_info()
    report.roofline = roofline(report.results, report.peak, model_info.flops_per_image)
    return report
