"""`toolkit predict --engine ray`: the local pipeline, distributed with Ray Data.

Nothing here is a second pipeline. The file list comes from inputs.collect (local paths) or from the
same rules applied to a pyarrow.fs listing (s3://... and any other URI pyarrow reads); decode tasks run
pipeline._decode_chunk (local files) or decode.decode_gray on the object's bytes, then
preprocess.to_model_pixels; a pool of actors, each opening the model once with runtime.Predictor,
computes the logits; the driver turns them into rows with pipeline.record_batch and output.ResultWriter,
exactly as the local engine does. Rows come back in any order and are written in input order (a
reorder buffer), each file index once: a batch Ray replays after a lost actor or worker is dropped.

Cluster: without an address, a local Ray instance sized to this machine is started and stopped with the
run. With one, the driver joins that cluster; Ray 2.60 clusters require their authentication token, and
its drivers still default to sending none, so RAY_AUTH_MODE=token is set unless the environment chose a
mode. The token itself is Ray's business: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.

Sizing: decoding is the bottleneck (tens of thousands of 28x28 PNGs per core and second against hundreds
of thousands of MLP rows per ORT thread), so there is one model actor per eight CPUs (at least one), and
actors reserve a quarter of a CPU and decode tasks half of one: an actor reserving a whole CPU on a 2-CPU
node left nothing for the decode tasks and the run stalled.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..atomic import _umask, atomic_file, check_parent_writable, check_writable
from ..errors import ClusterUnavailable, ImageError, OutputError
from ..machine import usable_cpus
from ..preprocess import PreprocessSpec, is_blank, to_model_pixels
from .decode import IMAGE_SUFFIXES, bombs_refused, decode_gray
from .inputs import Inputs, collect
from .output import (PARQUET, ResultWriter, check_output, default_confusion_path, output_format, row_columns,
                     top_k_indices, write_confusion_png)
from .pipeline import (PredictInterrupted, Reporter, Summary, _decode_chunk, _Stop, begin_report, record_batch,
                       require_files)

INSTALL = "pip install 'toolkit[cluster]'"
CPUS_PER_ACTOR = 8
# Different reservations also keep Ray Data from fusing the decode tasks into the actors.
ACTOR_CPUS = 0.25
DECODE_CPUS = 0.5
# Files per decode task: large enough that task overhead (~ms) is small against decoding (~50 us a file).
MAX_BLOCK = 2048


def is_uri(path) -> bool:
    return "://" in os.fspath(path)


def import_ray(address: str | None = None):
    if address and "RAY_AUTH_MODE" not in os.environ:
        # Ray reads the mode when imported: a joining driver must send the cluster's token (see above).
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ClusterUnavailable(f"--engine ray needs Ray Data, which is not installed; install it with: {INSTALL}") \
            from None
    return ray


# ---------------------------------------------------------------- inputs beyond local folders

def collect_any(paths) -> tuple[Inputs, list[int], list[str]]:
    """inputs.collect's result for local paths and URIs alike, in argument order.

    Returns (inputs, source of each file: -1 local or an index into ``roots``, roots: the URI arguments).
    A URI is listed with the local walk's rules: files of a prefix in name order before its sub-prefixes,
    image suffixes only, hidden names passed over, the parent folder's name as the label.
    """
    found, sources, roots = Inputs(), [], []
    local: list[str] = []

    def flush_local():
        if local:
            part = collect(local)
            found.files += part.files
            found.parents += part.parents
            found.skipped += part.skipped
            found.ignored += part.ignored
            found.notes += part.notes
            sources.extend([-1] * len(part.files))
            local.clear()

    for arg in map(os.fspath, paths):
        if not is_uri(arg):
            local.append(arg)
            continue
        flush_local()
        roots.append(arg)
        before = len(found.files)
        _list_uri(arg, found)
        sources.extend([len(roots) - 1] * (len(found.files) - before))
    flush_local()
    return found, sources, roots


def _list_uri(uri: str, found: Inputs) -> None:
    import pyarrow.fs as pafs

    shown = uri.split("?", 1)[0].rstrip("/")  # query parameters (endpoint, scheme) configure, they name nothing
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            found.add(shown, _parent(shown))
            return
        if info.type == pafs.FileType.NotFound:
            found.skipped.append((shown, "no such file or directory"))
            return
        listing = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as e:
        found.skipped.append((shown, f"cannot list ({e})"))
        return
    root = root.rstrip("/")
    entries = []
    ignored = 0
    for entry in listing:
        if entry.type != pafs.FileType.File:
            continue
        parts = entry.path[len(root):].strip("/").split("/")
        if any(p.startswith(".") for p in parts):
            continue
        if os.path.splitext(parts[-1])[1].lower() not in IMAGE_SUFFIXES:
            found.ignored.append(f"{shown}/{'/'.join(parts)}")
            ignored += 1
            continue
        # Depth-first as the local walk: within a folder its files (0) before its subfolders (1), each by name.
        entries.append(([(1, p) for p in parts[:-1]] + [(0, parts[-1])], parts))
    if not entries:
        tail = f" ({ignored} other file(s) ignored)" if ignored else ""
        found.skipped.append((shown, f"folder holds no image files{tail}"))
    for _, parts in sorted(entries):
        path = f"{shown}/{'/'.join(parts)}"
        found.add(path, parts[-2] if len(parts) > 1 else _parent(shown))


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 2)[-2] if uri.count("/") > 3 else ""


# ---------------------------------------------------------------- what runs on the cluster

_filesystems: dict[str, tuple] = {}


def _read_uri(root: str, path: str) -> np.ndarray:
    import pyarrow.fs as pafs

    if root not in _filesystems:
        fs, base = pafs.FileSystem.from_uri(root)
        _filesystems[root] = (fs, base.rstrip("/"), root.split("?", 1)[0].rstrip("/"))
    fs, base, shown = _filesystems[root]
    inside = base + path[len(shown):] if path != shown else base
    try:
        with fs.open_input_stream(inside) as f:
            data = f.read()
    except (OSError, ValueError) as e:
        raise ImageError(path, f"cannot read ({e})") from None
    return decode_gray(data, path)


def decode_batch(batch: dict, spec_json: str, roots: list[str]) -> dict:
    """Decode tasks: file locations in, model pixels (or the reason each file was skipped) out."""
    spec = PreprocessSpec.from_dict(json.loads(spec_json))
    paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
    sources = batch["source"]
    n = len(paths)
    pixels = np.zeros((n, spec.height, spec.width), dtype=np.uint8)
    reasons = [""] * n
    if (sources < 0).all():  # local files: the very loop the local engine's workers run
        ok, pixel_bytes, bad = _decode_chunk(paths, spec)
        if ok:
            pixels[ok] = np.frombuffer(pixel_bytes, dtype=np.uint8).reshape(len(ok), spec.height, spec.width)
        for i, reason in bad:
            reasons[i] = reason
    else:
        with bombs_refused():
            for i, (path, source) in enumerate(zip(paths, sources)):
                try:
                    if source < 0:
                        ok, pixel_bytes, bad = _decode_chunk([path], spec)
                        if bad:
                            raise ImageError(path, bad[0][1])
                        pixels[i] = np.frombuffer(pixel_bytes, dtype=np.uint8).reshape(spec.height, spec.width)
                    else:
                        pixels[i] = to_model_pixels(_read_uri(roots[source], path), spec)
                except ImageError as e:
                    reasons[i] = e.reason
                except Exception as e:  # one odd file must never end a run over thousands
                    reasons[i] = f"could not be processed ({type(e).__name__}: {e})"
    return {"index": batch["index"], "pixels": pixels, "reason": np.array(reasons, dtype=object),
            **_carried(batch)}


def _carried(batch: dict) -> dict:
    """What the Parquet rows need beyond the model's output: passed along by each stage (only then)."""
    return {k: batch[k] for k in ("path", "expected") if "expected" in batch}


class ModelActor:
    """One per actor: the model opened once (from bytes the driver sent: a node need not hold the file)."""

    def __init__(self, model: list, suffix: str, provider: str, flags=None):
        import ray

        from ..runtime import Predictor

        # [ObjectRef]: a reference inside a list is not resolved by Ray, so the actor's constructor arguments
        # stay small (restarting an actor whose arguments live in the object store is fragile) and the
        # model's bytes are fetched here, once per actor.
        model_bytes = ray.get(model[0])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"model{suffix}"
            path.write_bytes(model_bytes)
            self.predictor = Predictor.open(path, provider, 1, flags=flags)
        self.spec = self.predictor.contract.preprocess
        self.lookup = self.spec.lookup_table()
        self.width = len(self.predictor.classes)

    def __call__(self, batch: dict) -> dict:
        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        n = len(ok)
        logits = np.zeros((n, self.width), dtype=np.float32)
        blank = np.zeros(n, dtype=bool)
        if ok.any():
            pixels = batch["pixels"][ok]
            # == the local engine's run_batch: normalisation by table, the same arrangement
            logits[ok] = self.predictor.logits(self.spec.arrange(self.lookup[pixels]))
            blank[ok] = is_blank(pixels)
        return {"index": batch["index"], "logits": logits, "blank": blank, "reason": batch["reason"],
                **_carried(batch)}


def parquet_rows(batch: dict, classes: list[str], top_k: int, probabilities: bool):
    """Cluster side of a Parquet output: the rows the CSV would hold (output.row_columns), as an Arrow table.

    Files that were skipped (a decoding reason, or NaN/Inf from the model) have no row, as in the CSV.
    """
    import pyarrow as pa

    from ..runtime import softmax

    logits = batch["logits"]
    keep = np.array([not r for r in batch["reason"]], dtype=bool) & np.isfinite(logits).all(axis=1)
    logits = logits[keep].astype(np.float32)
    probs = logits if probabilities else softmax(logits)
    paths = [os.fsdecode(bytes(p)) for p in batch["path"][keep]]
    expected = [e or None for e in batch["expected"][keep].tolist()]
    cols = row_columns(paths, expected, probs, top_k_indices(probs, top_k), batch["blank"][keep], classes, top_k)
    return pa.table({k: pa.array(v, type=_parquet_type(k)) for k, v in cols.items()})


def _parquet_type(column: str):
    import pyarrow as pa

    if column == "blank":
        return pa.bool_()
    return pa.float64() if column == "confidence" or column.endswith("_prob") else pa.string()


# ---------------------------------------------------------------- the cluster

@contextlib.contextmanager
def ray_session(address: str | None, reporter: Reporter):
    """Join the cluster at ``address`` or start a local one; leave (stopping a local one) however the run ends."""
    ray = import_ray(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's C++ core logs warnings (e.g. on the actor pool's pickled arguments) straight to this process's
    # stderr; the CLI's rule is one line per problem, said by us. Set it to "warning" to see them again.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    started = time.perf_counter()
    from ..runtime import captured_stderr

    # Ray's C++ client logs every refused retry (and its own log level) on stderr: the reason is said once, below.
    # Processes a local start spawns write to Ray's log files, not to this captured stream.
    with captured_stderr() as lines:
        try:
            if address:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            else:
                # "local": a new instance even where `ray start` runs one on this machine (ray.init would join it)
                ray.init(address="local", num_cpus=usable_cpus(), include_dashboard=False, logging_level="ERROR",
                         log_to_driver=False)
        except Exception as e:
            if address:
                raise ClusterUnavailable(_join_failure(address, e, lines)) from None
            raise ClusterUnavailable(f"cannot start a local Ray instance ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:300]})") from None
    try:
        import logging

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # "execution finished in ..." and the like
        yield ray, time.perf_counter() - started
    finally:
        ray.shutdown()


def _join_failure(address: str, error: Exception, lines: list[str]) -> str:
    text = " ".join([str(x) for x in _chain(error)] + lines)
    if "no authentication token was found" in text:
        return (f"the Ray cluster at {address} requires its authentication token and this machine has none: set "
                "RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it (`ray get-auth-token` on the head "
                "prints it)")
    if "InvalidAuthToken" in text or "Unauthenticated" in text:
        return (f"the Ray cluster at {address} refused this driver: its authentication token is missing or wrong "
                "(set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token; `ray get-auth-token` on the "
                "head prints it)")
    return f"cannot join the Ray cluster at {address} ({type(error).__name__}: {str(error).splitlines()[0][:300]})"


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def plan(ray, files: int, batch_size: int, provider: str) -> dict:
    """How many actors and blocks, from the cluster's resources (see the module's docstring)."""
    resources = ray.cluster_resources()
    cpus = max(1.0, float(resources.get("CPU", 1)))
    actors = max(1, math.floor(cpus / CPUS_PER_ACTOR))
    if provider == "cuda":
        actors = max(1, int(resources.get("GPU", 1)))
    # A few blocks per CPU keep every decode slot busy and bound what waits in the reorder buffer.
    blocks = max(1, min(math.ceil(files / 64), max(math.ceil(files / MAX_BLOCK), int(cpus * 4))))
    return {"cpus": cpus, "actors": actors, "blocks": blocks}


# ---------------------------------------------------------------- the run

def predict_paths_ray(paths, *, address: str | None = None, model: str | os.PathLike = "model.onnx",
                      provider: str = "auto", batch_size: int = 256, top_k: int = 3,
                      output: str | os.PathLike | None = None, confusion: str | os.PathLike | None = None,
                      force: bool = False, reporter: Reporter | None = None, flags=None) -> Summary:
    """predict_paths on a Ray cluster: same checks, same rows in the same order, same Summary and errors."""
    from ..runtime import Predictor

    started = time.perf_counter()
    reporter = reporter or Reporter()
    parquet = output is not None and Path(output).suffix.lower() == PARQUET
    if parquet:
        out_path = check_parquet_output(output, force=force)
    else:
        out_path = check_output(output, force=force) if output is not None else None
    png_path = Path(confusion) if confusion is not None else (default_confusion_path(out_path) if out_path else None)
    if png_path is not None and (confusion is not None or png_path.exists()):
        check_writable(png_path, force=force)
    imported = time.perf_counter()
    import_ray(address)  # the install command before anything else is done
    imported = time.perf_counter() - imported
    inputs, sources, roots = collect_any(paths)
    files = require_files(inputs, reporter)
    # Opened here first: a bad model or provider fails before any cluster work, with the local engine's errors.
    predictor = Predictor.open(model, provider, 1, flags=flags)
    model_bytes = Path(model).read_bytes()
    classes = predictor.classes
    top_k = min(top_k, len(classes))
    summary = Summary(provider=predictor.provider, classes=classes, skipped=len(inputs.skipped),
                      ignored=len(inputs.ignored), output=out_path)
    summary.confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    outcome = None
    with ray_session(address, reporter) as (ray, startup):
        # Ray's start-up, reported apart (docs/scale.md): importing Ray and starting or joining the cluster.
        summary.startup_seconds = imported + startup
        begin_report(reporter, predictor, inputs, classes, top_k)
        sizing = plan(ray, len(files), batch_size, predictor.provider if provider != "auto" else provider)
        where = f"joined {address}" if address else "started a local Ray instance"
        reporter.notice(f"--engine ray: {where} in {startup:.1f} s; {sizing['cpus']:g} CPU(s), "
                        f"{sizing['actors']} model actor(s), {sizing['blocks']} decode task(s)")
        items = [{"index": i, "path": os.fsencode(p), "source": s} for i, (p, s) in enumerate(zip(files, sources))]
        if parquet:  # the rows are made on the cluster: each file's folder label travels with it
            index = set(classes)
            for item, parent in zip(items, inputs.parents):
                item["expected"] = parent if parent in index else ""
        ds = ray.data.from_items(items, override_num_blocks=sizing["blocks"])
        ds = ds.map_batches(decode_batch, batch_size=None, batch_format="numpy", num_cpus=DECODE_CPUS,
                            fn_kwargs={"spec_json": predictor.contract.preprocess.to_json(), "roots": roots})
        gpu = {"num_gpus": 1} if predictor.provider == "cuda" or provider == "cuda" else {}
        ds = ds.map_batches(ModelActor, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=sizing["actors"]), num_cpus=ACTOR_CPUS,
                            fn_constructor_kwargs={"model": [ray.put(model_bytes)], "suffix": Path(model).suffix or ".onnx",
                                                   "provider": provider, "flags": flags}, **gpu)
        if parquet:
            outcome = _write_parquet(ds, out_path, force, inputs, predictor, top_k, summary, reporter)
        else:
            outcome = _write_rows(ds, out_path, force, inputs, predictor, top_k, summary, reporter)
        summary.interrupted = outcome is not None
    if summary.labelled and png_path is not None and not summary.interrupted:
        write_confusion_png(png_path, summary.confusion, summary.classes,
                            f"confusion matrix: {summary.accuracy * 100:.2f}% correct of {summary.labelled} "
                            "labelled images", replace=force)
        summary.confusion_png = png_path
    summary.seconds = time.perf_counter() - started
    reporter.end(summary)
    if outcome:
        raise PredictInterrupted(summary)
    return summary


def _write_rows(ds, out_path, force, inputs, predictor, top_k, summary, reporter):
    """CSV/JSONL (or no file): rows written by the driver in input order, as the local engine writes them."""
    with contextlib.ExitStack() as stack, _Stop() as stop:
        writer = None
        if out_path is not None:
            writer = ResultWriter(stack.enter_context(atomic_file(out_path, replace=force)),
                                  output_format(out_path), predictor.classes, top_k)
        try:
            try:
                stop.armed = True
                outcome = _drain(ds, inputs, predictor, top_k, summary, writer, reporter, stop)
            finally:
                stop.armed = False
        except KeyboardInterrupt:
            outcome = "interrupted"
        if writer:
            writer.finish()
            summary.rows_written = writer.rows
    return outcome


def check_parquet_output(path, *, force: bool) -> Path:
    """-o NAME.parquet: a directory that must not exist yet (or --force), in a writable folder."""
    path = Path(path)
    if os.path.lexists(path) and not force:
        raise OutputError(path, "already exists; pass --force to replace it")
    check_parent_writable(path)
    return path


def _write_parquet(ds, out_path, force, inputs, predictor, top_k, summary, reporter):
    """Rows written on the cluster by Ray Data's write_parquet into a hidden sibling directory, renamed at the end.

    The model's outputs are materialised once (Ray's object store, spilled to disk when large): the rows are
    written from them and the driver then records counts, accuracy and the skipped files from the same blocks.
    An interrupted run leaves no directory (its rows are not in input order: a prefix cannot be kept).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".part", dir=out_path.parent if
                                str(out_path.parent) else "."))
    try:
        with _Stop() as stop:
            stop.requested = True  # nothing partial is kept: the first signal stops at once
            try:
                stop.armed = True
                done = ds.materialize()
                done.map_batches(parquet_rows, batch_size=None, batch_format="numpy", num_cpus=DECODE_CPUS,
                                 fn_kwargs={"classes": predictor.classes, "top_k": top_k,
                                            "probabilities": predictor.contract.output_kind == "probabilities"}
                                 ).write_parquet(str(tmp.absolute()))
                stop.armed = False
                stop.requested = False
                outcome = _drain(done.select_columns(["index", "logits", "blank", "reason"]), inputs, predictor,
                                 top_k, summary, None, reporter, stop)
            except KeyboardInterrupt:
                return "interrupted"
            finally:
                stop.armed = False
        if outcome is None:
            _publish_folder(tmp, out_path, force)
            summary.rows_written = summary.images
        return outcome
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish_folder(tmp: Path, path: Path, force: bool) -> None:
    """The finished directory takes its name; without --force nothing that appeared there meanwhile is replaced."""
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700, as a plain mkdir would have made it
    if os.path.lexists(path):
        if not force:
            for n in range(1, 1000):
                kept = path.with_name(f"{path.stem}.{n}{path.suffix}")
                if not os.path.lexists(kept):
                    os.rename(tmp, kept)
                    raise OutputError(path, f"appeared while this run was writing it and was left untouched; "
                                            f"the results are in {kept} instead")
            raise OutputError(path, "appeared while this run was writing it and was left untouched")
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=tmp.parent))
        os.rename(path, old / "replaced")  # aside first, so the new directory is never mixed with the old one
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, path)


def _drain(ds, inputs, predictor, top_k, summary, writer, reporter, stop):
    """Record results in input order as they arrive; None when all came, "interrupted" when a signal asked."""
    files = inputs.files
    index = {c: i for i, c in enumerate(predictor.classes)}
    labels = [name if name in index else None for name in inputs.parents]
    seen = np.zeros(len(files), dtype=bool)
    waiting: dict[int, tuple] = {}  # file index -> (logits row, blank, reason), until every earlier one came
    done = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, logit, blank, reason in zip(batch["index"].tolist(), batch["logits"], batch["blank"], batch["reason"]):
            if not seen[i]:  # a batch Ray ran twice (a lost actor or worker) is recorded once
                seen[i] = True
                waiting[i] = (logit, bool(blank), reason)
        ready = []
        while done in waiting:
            ready.append((done, *waiting.pop(done)))
            done += 1
        _record(ready, files, labels, index, top_k, summary, writer, reporter, predictor)
        reporter.advance(len(ready))
        if stop.requested:
            return "interrupted"
    return None


def _record(ready, files, labels, index, top_k, summary, writer, reporter, predictor) -> None:
    """Skipped files are reported and runs of decoded ones recorded, keeping input order."""
    run: list[tuple] = []

    def flush():
        if run:
            record_batch(files, labels, index, top_k, summary, writer, reporter, predictor, [r[0] for r in run],
                         np.stack([r[1] for r in run]), np.array([r[2] for r in run], dtype=bool))
            run.clear()

    for item in ready:
        if item[3]:
            flush()
            reporter.skipped(files[item[0]], item[3])
            summary.skipped += 1
        else:
            run.append(item)
    flush()
