"""The Ray engine of `toolkit predict`: block tasks on Ray Data, each decoding and predicting its files.

Nothing here is a second pipeline: the file list comes from inputs.collect (local paths) or the same rules
over a pyarrow.fs listing (uris.py); a task runs local.decode_chunk (local files) or decode.decode_gray on
the object's bytes, then preprocess.to_model_pixels, then the model (runtime.Predictor, opened once per Ray
worker process) on those pixels; the driver yields the outputs as Batches in input order to run.py, which
records them exactly as the local engine's. Rows come back in any order (a reorder buffer puts them back in
input order), each file index once: a block Ray retries after a lost worker is dropped if it came already.

Why one task does both: decoding is the cost (tens of thousands of 28x28 PNGs per core and second against
hundreds of thousands of MLP rows per ORT thread), and a separate pool of model actors made every block's
pixels cross the object store to reach them, which cost more than the model (benchmarks/ray_vs_local.py).
One task per reserved CPU, one ORT thread each.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import ClusterUnavailable, ImageError, ModelError, ProviderUnavailable, ToolkitError
from ...external_data import external_data_locations
from ...text import first_line, runtime_reason
from ...preprocess import PreprocessSpec, blank_images, model_input, to_model_pixels
from ..decode import bombs_refused
from ..local import decode_chunk
from ..output import PARQUET, check_output
from ..results import Batch
from .cluster import import_ray, plan, ray_session
from .parquet import check_parquet_output, parquet_rows
from .uris import collect_any, read_uri

# Each block task decodes and predicts on one reserved CPU; the Parquet stage's tasks take half of one.
TASK_CPUS = 1
PARQUET_CPUS = 0.5


def predict_block(batch: dict, model: list, spec_json: str, roots: list[str], settings: dict) -> dict:
    """One task per block: its files decoded and predicted in the same process, so pixel arrays never
    cross the object store (decoding, not the model, is the cost: see the module's docstring)."""
    spec = PreprocessSpec.from_dict(json.loads(spec_json))
    pixels, reasons = _decode(batch, spec, roots)
    predictor = _opened(model, settings)
    ok = np.array([not r for r in reasons], dtype=bool)
    n, size = len(ok), settings["batch_size"]
    logits = np.zeros((n, len(predictor.classes)), dtype=np.float32)
    blank = np.zeros(n, dtype=bool)
    picked = np.flatnonzero(ok)
    table = predictor.contract.preprocess.lookup_table()
    for start in range(0, len(picked), size):  # the local engine's batch size, so fixed-batch graphs pad alike
        rows = picked[start:start + size]
        logits[rows] = predictor.logits(model_input(pixels[rows], predictor.contract.preprocess, table))
        blank[rows] = blank_images(pixels[rows], predictor.contract.preprocess)
    return {"index": batch["index"], "logits": logits, "blank": blank, "reason": np.array(reasons, dtype=object),
            **_carried(batch)}


def _decode(batch: dict, spec: PreprocessSpec, roots: list[str]) -> tuple[np.ndarray, list[str]]:
    """A block's files as model pixels, and the reason each one that could not be used was skipped."""
    paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
    sources = batch["source"]
    n = len(paths)
    pixels = np.zeros((n, *spec.pixel_shape), dtype=np.uint8)
    reasons = [""] * n
    if (sources < 0).all():  # local files: the very loop the local engine's workers run
        ok, decoded, bad = decode_chunk(paths, spec)
        pixels[ok] = decoded
        for i, reason in bad:
            reasons[i] = reason
        return pixels, reasons
    with bombs_refused():
        for i, (path, source) in enumerate(zip(paths, sources)):
            try:
                if source < 0:
                    ok, decoded, bad = decode_chunk([path], spec)
                    if bad:
                        raise ImageError(path, bad[0][1])
                    pixels[i] = decoded[0]
                else:
                    pixels[i] = to_model_pixels(read_uri(roots[source], path, spec.mode), spec)
            except ImageError as e:
                reasons[i] = e.reason
            except Exception as e:  # one odd file must never end a run over thousands
                reasons[i] = f"could not be processed ({type(e).__name__}: {e})"
    return pixels, reasons


def _carried(batch: dict) -> dict:
    """What the Parquet rows need beyond the model's output: passed along by each stage (only then)."""
    return {k: batch[k] for k in ("path", "expected") if "expected" in batch}


# Ray reuses a worker process for the tasks of one function: the model is opened once per worker and run.
_OPENED: dict[str, object] = {}


def _opened(model: list, settings: dict):
    import ray

    from ...runtime import Predictor

    # [ObjectRef]: a reference inside a list is not resolved by Ray, so each block's arguments stay small
    # and the model's bytes are fetched once per worker, not once per block. settings["data"]: [(location,
    # ObjectRef)] of its external-data files, put back at their places beside it (the driver checked that
    # each location stays inside the model's folder).
    key = model[0].hex()
    if key not in _OPENED:
        _OPENED.clear()  # a worker kept from an earlier run holds at most one model
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"model{settings['suffix']}"
            path.write_bytes(ray.get(model[0]))
            for location, ref in settings.get("data", []):
                target = Path(tmp, location)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(ray.get(ref))
            # One ORT thread: the cluster runs one task per reserved CPU, each decoding and predicting.
            _OPENED[key] = Predictor.open(path, settings["provider"], 1, flags=settings["flags"])
    return _OPENED[key]


class RayEngine:
    """A Ray cluster: the one at ``address``, or a local instance started and stopped with the run."""

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address
        self.startup_seconds = 0.0
        self.ds = None
        self.sources: list[int] = []
        self.roots: list[str] = []

    def collect(self, paths):
        imported = time.perf_counter()
        import_ray(self.address)  # the install command before anything else is done
        self.startup_seconds = time.perf_counter() - imported
        inputs, self.sources, self.roots = collect_any(paths)
        return inputs

    @staticmethod
    def check_output(path, force: bool):
        if Path(path).suffix.lower() == PARQUET:
            return check_parquet_output(path, force=force)
        return check_output(path, force=force)

    def open(self, job, stack):
        """Open the model here first (a bad model fails before any cluster work), then start or join Ray."""
        from ...runtime import OpenOptions, Predictor

        options = job.options
        # On CPU here whatever --provider says: the driver only checks the model and reads its contract, and a
        # CPU-only head node of a cluster whose workers have GPUs is the usual layout. The provider is checked
        # where the model runs, in the tasks.
        predictor = Predictor.open(options.model, "cpu", 1, flags=options.flags,
                                   options=OpenOptions(run_timeout=options.run_timeout))
        ray, startup = stack.enter_context(ray_session(self.address))
        # Ray's start-up, reported apart (docs/scale.md): importing Ray and starting or joining the cluster.
        self.startup_seconds += startup
        files = job.inputs.files
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if options.provider == "cuda" and not gpus:
            raise ProviderUnavailable("--provider cuda: the Ray cluster has no GPU (no node offers a GPU resource)")
        # auto: CUDA on a cluster that has GPUs (falling back to CPU in a task where CUDA does not load).
        provider = "cuda" if options.provider == "cuda" or (options.provider == "auto" and gpus) else "cpu"
        sizing = plan(ray, len(files), provider)
        where = f"joined {self.address}" if self.address else "started a local Ray instance"
        job.reporter.notice(f"--engine ray: {where} in {startup:.1f} s; {sizing['cpus']:g} CPU(s), "
                            f"{sizing['blocks']} block(s) decoded and predicted in Ray tasks")
        items = [{"index": i, "path": os.fsencode(p), "source": s} for i, (p, s) in enumerate(zip(files,
                                                                                                  self.sources))]
        if options.output is not None and Path(options.output).suffix.lower() == PARQUET:
            # The rows are made on the cluster: each file's folder label travels with it.
            index = set(predictor.classes)
            for item, parent in zip(items, job.inputs.parents):
                item["expected"] = parent if parent in index else ""
        ds = ray.data.from_items(items, override_num_blocks=sizing["blocks"])
        gpu = {"num_gpus": sizing["gpus_per_task"]} if provider == "cuda" else {}
        model = Path(options.model)
        model_bytes = model.read_bytes()
        # A model with external data travels with its data files (the tasks' copy resolves them beside it).
        data = [(location, ray.put((model.parent / location).read_bytes()))
                for location in external_data_locations(model_bytes, model)]
        settings = {"suffix": model.suffix or ".onnx",
                    "provider": options.provider if provider == "cuda" else "cpu",
                    "flags": options.flags, "batch_size": options.batch_size, "data": data}
        # A batch is a block (Ray Data wants the size said when GPUs are asked for).
        self.ds = ds.map_batches(predict_block, batch_size=sizing["block_files"], batch_format="numpy",
                                 num_cpus=TASK_CPUS,
                                 fn_kwargs={"model": [ray.put(model_bytes)],
                                            "spec_json": predictor.contract.preprocess.to_json(),
                                            "roots": self.roots, "settings": settings}, **gpu)
        return predictor

    def batches(self, job) -> Iterator[Batch]:
        """The cluster's batches; whatever a task raised (the Parquet stages' included) is one typed error."""
        try:
            yield from self._batches(job)
        except Exception as e:
            raise _task_failure(e, job.options.model) from None

    def _batches(self, job) -> Iterator[Batch]:
        ds = self.ds
        if job.writer is not None and hasattr(job.writer, "folder"):  # Parquet, written on the cluster
            job.stop.at_once = True  # nothing partial is kept: the first signal stops at once
            ds = ds.materialize()
            ds.map_batches(parquet_rows, batch_size=None, batch_format="numpy", num_cpus=PARQUET_CPUS,
                           fn_kwargs={"classes": job.predictor.classes, "top_k": min(job.options.top_k,
                                                                                     len(job.predictor.classes)),
                                      "output_kind": job.predictor.contract.output_kind}
                           ).write_parquet(str(job.writer.folder.absolute()))
            job.stop.at_once = False
            ds = ds.select_columns(["index", "logits", "blank", "reason"])
        yield from in_order(ds, len(job.inputs.files), job.options.batch_size)


def _task_failure(error: Exception, model) -> Exception:
    """What a failed Ray task raised, told as the local engine tells it, by type: the task's own error unwrapped
    from Ray's RayTaskError (and Ray Data's UserCodeException); ours as itself, a ModelError naming the user's
    model (not the task's copy of it); anything else the model's code raised (ONNX Runtime refusing a graph at
    run time) a ModelError with the runtime's reason; Ray's own failures (a lost worker or object)
    ClusterUnavailable. Ray Data raises the task's original exception (cluster.ray_session sets
    raise_original_map_exception); the wrapper is unwrapped too should a stage still add it."""
    import ray

    if isinstance(error, ToolkitError) and not isinstance(error, ray.exceptions.RayError):
        return error  # raised on the driver (the reorder buffer, the Parquet sink), not Ray's dual-typed copy
    e = error
    for _ in range(10):
        if isinstance(e, ray.exceptions.RayTaskError) and e.cause is not None and e.cause is not e:
            e = e.cause
        elif isinstance(e, ray.exceptions.UserCodeException) and e.__cause__ is not None:
            e = e.__cause__
        else:
            break
    if isinstance(e, ModelError):
        return ModelError(model, e.reason)
    if isinstance(e, ToolkitError) and not isinstance(e, ray.exceptions.RayError):
        return e
    if isinstance(e, ray.exceptions.RayError):
        return ClusterUnavailable(f"a Ray task failed ({type(e).__name__}: {first_line(e, 300)})")
    return ModelError(model, f"failed on the cluster: {runtime_reason(e)} ({type(e).__name__})")


def in_order(ds, count: int, size: int) -> Iterator[Batch]:
    """The dataset's rows as Batches in input order (a reorder buffer), each file index once, at most ``size``
    rows a Batch: a block is thousands of rows, and a stop is heard between Batches (run.drive)."""
    seen = np.zeros(count, dtype=bool)
    waiting: dict[int, tuple] = {}  # file index -> (outputs row, blank, reason), until every earlier one came
    done = 0
    for part in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, logit, blank, reason in zip(part["index"].tolist(), part["logits"], part["blank"], part["reason"]):
            if not seen[i]:  # a block Ray ran twice (a lost worker) is recorded once
                seen[i] = True
                waiting[i] = (logit, bool(blank), reason)
        ready = []
        while done in waiting:
            ready.append((done, *waiting.pop(done)))
            done += 1
        if ready:
            for start in range(0, len(ready), size):
                yield from _runs(ready[start:start + size])


def _runs(ready: list[tuple]) -> Iterator[Batch]:
    """Consecutive ready items as Batches: decoded runs, each with the skipped files before it."""
    skipped: list[tuple[int, str]] = []
    run: list[tuple] = []
    for item in ready:
        if item[3]:
            if run:
                yield _batch(run, skipped)
                run, skipped = [], []
            skipped.append((item[0], item[3]))
        else:
            run.append(item)
    if run or skipped:
        yield _batch(run, skipped)


def _batch(run: list[tuple], skipped: list[tuple[int, str]]) -> Batch:
    width = len(run[0][1]) if run else 0
    outputs = np.stack([r[1] for r in run]) if run else np.zeros((0, width), np.float32)
    return Batch([r[0] for r in run], outputs, np.array([r[2] for r in run], dtype=bool), skipped)
