"""One served model: its ONNX Runtime predictor, its batcher, its metrics, and what a request may ask of it.

A model answers two kinds of requests, both through the same batcher:
  * tensors: its graph input by name (FP32, shape [N, *input shape]); outputs its graph output, raw;
  * images: an input named ``image`` of datatype BYTES, shape [N], one encoded image file per element,
    decoded and preprocessed by the model's own contract (toolkit.predict.prepare) in a pool of
    threads of their own, off the event loop.
Either may ask for the derived outputs ``probabilities``, ``label``, ``confidence`` (and, for images,
``blank``): the values `toolkit predict` computes for the same pixels.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError, ToolkitError
from ..preprocess import blank_images
from ..runtime import OpenOptions, Predictor, non_finite_rows
from ..text import runtime_reason
from .batcher import Batcher, QueueFull, Stopped, warm, warm_sizes
from .metrics import ModelStats
from .protocol import BYTES, InferRequest, InferResponse, ProtocolError, Tensor

log = logging.getLogger("toolkit.serve")
IMAGE_INPUT = "image"
DERIVED = ("probabilities", "label", "confidence")
IMAGE_OUTPUTS = ("label", "confidence", "probabilities", "blank")
# Rows one request may carry (tensors or images), whatever --max-batch is.
MAX_REQUEST_ROWS = 1024
VERSION = "1"


@dataclass
class ModelOptions:
    """How every model of one server is opened and batched (the command's options)."""

    provider: str = "auto"
    threads: int | None = None
    flags: object = None  # toolkit.flags.PreprocessFlags
    max_batch: int = 32
    max_queue: int = 256
    max_delay_s: float = 0.0
    timeout_s: float | None = 10.0


def file_identity(path: Path) -> tuple:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ServedModel:
    def __init__(self, name: str, path: str | os.PathLike, options: ModelOptions, decode_pool: Executor):
        self.name = name
        self.path = Path(path)
        self.options = options
        self.decode_pool = decode_pool
        self.predictor: Predictor | None = None
        self.identity: tuple | None = None
        self.ready = False
        self.stats = ModelStats(name=name, version=VERSION, max_batch=options.max_batch)
        self.batcher: Batcher | None = None
        self.loaded: tuple | None = None

    # ------------------------------------------------------------ life cycle

    def open(self) -> tuple[Predictor, tuple]:
        """Load the file (blocking); raises toolkit errors that name the file."""
        identity = file_identity(self.path)
        # No spin-waiting: ONNX Runtime's idle pool threads would take the CPUs the event loop needs to read the
        # requests that form the next batch (measured on 2 cores, 32 connections: about 2x the requests/s without).
        predictor = Predictor.open(self.path, self.options.provider, self.options.threads, flags=self.options.flags,
                                   options=OpenOptions(spin=False))
        return predictor, identity

    def load(self) -> None:
        """The first load, before the server starts: a bad file ends the command with its one-line reason."""
        self.loaded = self.open()
        if self.loaded[0].notice:
            log.warning("model %s: %s", self.name, self.loaded[0].notice)

    async def start(self) -> None:
        """Warm the loaded predictor at every batch size it will run, then take traffic."""
        predictor, identity = self.loaded
        await self._warm(predictor)
        self.predictor, self.identity = predictor, identity
        self.batcher = Batcher(predictor.logits, self.stats, self.options.max_batch, self.options.max_queue,
                               self.options.max_delay_s, name=self.name)
        self.batcher.start()
        self.ready = True

    async def reload(self) -> str | None:
        """SIGHUP: a changed file is loaded and warmed beside the serving model, then swapped in.

        Returns a sentence for the log (None when the file is unchanged). A file that fails to load
        leaves the old model serving; the failure is counted in the metrics.
        """
        try:
            if file_identity(self.path) == self.identity:
                return None
            loaded = await asyncio.get_running_loop().run_in_executor(None, self.open)
            predictor, identity = loaded
            await self._warm(predictor)
        except (ToolkitError, OSError, ValueError) as e:
            self.stats.reloads["failure"] = self.stats.reloads.get("failure", 0) + 1
            self.stats.last_reload_failed = True
            return f"model {self.name}: reload of {self.path} failed, the previous model keeps serving: {e}"
        self.predictor, self.identity = predictor, identity
        self.batcher.set_runner(predictor.logits)
        self.stats.reloads["success"] = self.stats.reloads.get("success", 0) + 1
        self.stats.last_reload_failed = False
        return f"model {self.name}: reloaded {self.path}"

    async def close(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.close()

    async def _warm(self, predictor: Predictor) -> None:
        """One run at each batch size it will see; a size the graph cannot run is the file's error (ModelError),
        found before the model takes traffic, not by the first request that needs it."""
        example = self._example(predictor)
        for n in self._sizes(predictor):
            try:
                await warm(predictor.logits, [n], example)
            except ToolkitError:
                raise
            except Exception as e:  # ONNX Runtime's own exception types
                hint = "; --max-batch 1 serves it one row at a time" if n > 1 else ""
                raise ModelError(self.path, f"fails its warm-up run at batch size {n} ({runtime_reason(e)}){hint}") \
                    from None

    def _sizes(self, predictor: Predictor) -> list[int]:
        return [predictor.fixed_batch] if predictor.fixed_batch else warm_sizes(self.options.max_batch)

    @staticmethod
    def _example(predictor: Predictor) -> np.ndarray:
        spec = predictor.contract.preprocess
        return spec.normalize(np.zeros((1, *spec.pixel_shape), dtype=np.uint8))

    # ------------------------------------------------------------ protocol

    @property
    def busy(self) -> bool:
        return self.batcher is not None and self.batcher.busy

    def metadata(self) -> dict:
        c = self.predictor.contract
        classes = len(c.classes)
        return {
            "name": self.name, "versions": [VERSION], "platform": "onnxruntime_onnx",
            "inputs": [{"name": c.input_name, "datatype": "FP32", "shape": [-1, *c.preprocess.input_shape]}],
            "outputs": [{"name": c.output_name, "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "label", "datatype": BYTES, "shape": [-1]},
                        {"name": "confidence", "datatype": "FP32", "shape": [-1]}],
        }

    async def infer(self, request: InferRequest) -> InferResponse:
        predictor = self.predictor
        contract = predictor.contract
        if len(request.inputs) != 1:
            raise ProtocolError(f"model {self.name!r} takes one input ({contract.input_name!r}, or {IMAGE_INPUT!r} "
                                f"as BYTES image files); the request has {len(request.inputs)}")
        tensor = request.inputs[0]
        blank = None
        if tensor.name == IMAGE_INPUT and contract.input_name != IMAGE_INPUT or tensor.datatype == BYTES:
            if tensor.name != IMAGE_INPUT or tensor.datatype != BYTES or len(tensor.shape) != 1:
                raise ProtocolError(f"input {IMAGE_INPUT!r}: encoded image files are datatype BYTES, shape [N]")
            _check_rows(tensor.shape[0])
            pixels = await self.prepare_images(tensor.data, predictor)
            x = predictor.contract.preprocess.normalize(pixels)
            blank = blank_images(pixels, predictor.contract.preprocess)
            default = IMAGE_OUTPUTS
        else:
            x = self._tensor_input(tensor, contract)
            default = (contract.output_name,)
        outputs = await self.run(x, request.timeout_s)
        names = [r.name for r in request.outputs] if request.outputs is not None else list(default)
        tensors = [self._output(name, outputs, blank, predictor) for name in names]
        return InferResponse(self.name, VERSION, request.id, tensors)

    def _tensor_input(self, tensor: Tensor, contract) -> np.ndarray:
        if tensor.name != contract.input_name:
            raise ProtocolError(f"model {self.name!r} has no input {tensor.name!r}; its input is "
                                f"{contract.input_name!r} (or {IMAGE_INPUT!r} as BYTES image files)")
        if tensor.datatype != "FP32":
            raise ProtocolError(f"input {tensor.name!r} is FP32, the request sends {tensor.datatype}")
        want = list(contract.preprocess.input_shape)
        if len(tensor.shape) != len(want) + 1 or tensor.shape[1:] != want:
            raise ProtocolError(f"input {tensor.name!r} has shape [-1, {', '.join(map(str, want))}], the request "
                                f"sends {tensor.shape}")
        _check_rows(tensor.shape[0])
        return np.ascontiguousarray(tensor.data, dtype=np.float32)

    async def run(self, x: np.ndarray, timeout_s: float | None) -> np.ndarray:
        """Through the batcher, with the server's deadline or the request's, whichever is sooner."""
        limits = [t for t in (self.options.timeout_s, timeout_s) if t]
        try:
            return await self.batcher.submit(x, min(limits) if limits else None)
        except QueueFull:
            self.stats.reject("queue_full")
            raise ProtocolError(f"model {self.name!r}: {self.batcher.max_queue} requests already wait; retry shortly",
                                429, retry_after=1) from None
        except TimeoutError:
            self.stats.reject("timeout")
            raise ProtocolError(f"model {self.name!r}: no answer within the request's deadline", 504) from None
        except Stopped:
            self.stats.reject("draining")
            raise ProtocolError("the server is shutting down", 503) from None
        except ToolkitError as e:  # the model's own failure on these rows: this request's answer, one line
            raise ProtocolError(f"model {self.name!r} failed on this request: {getattr(e, 'reason', e)}", 500) \
                from None
        except Exception as e:  # ONNX Runtime's exception types
            raise ProtocolError(f"model {self.name!r} failed on this request: {runtime_reason(e)}", 500) from None

    def _output(self, name: str, outputs: np.ndarray, blank, predictor: Predictor) -> Tensor:
        contract = predictor.contract
        n = len(outputs)
        if name == contract.output_name:
            return Tensor(name, "FP32", list(outputs.shape), outputs)
        if name == "blank" and blank is not None:
            return Tensor(name, "BOOL", [n], np.asarray(blank, dtype=np.bool_).reshape(n))
        if name not in DERIVED:
            raise ProtocolError(f"model {self.name!r} has no output {name!r}; it has "
                                f"{', '.join([contract.output_name, *DERIVED])}"
                                + (", blank" if blank is not None else ""))
        if bad := non_finite_rows(outputs):
            raise ProtocolError(f"model {self.name!r}: its output is not finite (NaN or Inf) for {len(bad)} of the "
                                f"{n} rows: no label or probability for them", 500)
        probs = predictor.to_probabilities(outputs)
        if name == "probabilities":
            return Tensor(name, "FP32", list(probs.shape), probs)
        best = probs.argmax(axis=1)
        if name == "confidence":
            return Tensor(name, "FP32", [n], probs[np.arange(n), best])
        labels = [b"" if blank is not None and blank[i] else contract.classes[j].encode() for i, j in enumerate(best)]
        return Tensor(name, BYTES, [n], labels)

    # ------------------------------------------------------------ images

    async def prepare_images(self, files: list[bytes], predictor: Predictor) -> np.ndarray:
        """Model pixels (N, *spec.pixel_shape) uint8 for encoded image files, decoded in the decode pool."""
        loop = asyncio.get_running_loop()
        spec = predictor.contract.preprocess
        jobs = [loop.run_in_executor(self.decode_pool, _prepare_one, data, spec, i) for i, data in enumerate(files)]
        return np.stack(await asyncio.gather(*jobs)) if jobs else np.zeros((0, *spec.pixel_shape), np.uint8)

    async def classify(self, data: bytes, view: bool, timeout_s: float | None = None) -> dict:
        """The plain image route: one encoded file -> label, confidence, probabilities as `toolkit predict` writes them."""
        from ..predict.output import row_columns
        from ..predict.results import score

        predictor = self.predictor
        classes = predictor.classes
        pixels = await self.prepare_images([data], predictor)
        outputs = await self.run(predictor.contract.preprocess.normalize(pixels), timeout_s)
        if non_finite_rows(outputs):
            raise ProtocolError(f"model {self.name!r}: its output is not finite (NaN or Inf) for this image", 500)
        probs, top = score(outputs, predictor.contract.output_kind, len(classes))
        blank = blank_images(pixels, predictor.contract.preprocess)
        cols = row_columns([""], [None], probs, top, blank, classes)
        answer = {"model_name": self.name, "label": cols["label"][0], "confidence": cols["confidence"][0],
                  "probabilities": None if blank[0] else _in_class_order(cols, classes),
                  "blank": bool(blank[0])}
        if view:
            answer["view"] = png_base64(pixels[0])
        return answer


def _in_class_order(cols: dict, classes: list[str]) -> dict:
    ranked = {cols[f"top{i}_label"][0]: cols[f"top{i}_prob"][0] for i in range(1, len(classes) + 1)}
    return {c: ranked[c] for c in classes}


def _check_rows(rows: int) -> None:
    if not 1 <= rows <= MAX_REQUEST_ROWS:
        raise ProtocolError(f"a request carries 1 to {MAX_REQUEST_ROWS} rows, this one {rows}")


def _prepare_one(data: bytes, spec, index: int) -> np.ndarray:
    from ..predict import prepare

    try:
        return prepare(data, spec)
    except ToolkitError as e:
        reason = getattr(e, "reason", str(e))
        raise ProtocolError(f"image {index}: {reason}") from None


def png_base64(pixels: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def timed(stats: ModelStats):
    """A context for one request's duration and outcome in the model's metrics."""
    return _Timed(stats)


class _Timed:
    def __init__(self, stats: ModelStats):
        self.stats = stats

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, kind, error, tb):
        ok = error is None
        reason = "OTHER"
        if isinstance(error, ProtocolError) and error.status in (429, 503, 504):
            reason = None  # already counted as REJECTED
        if reason is not None or ok:
            self.stats.answered(time.perf_counter() - self.start, ok, reason or "OTHER")
        else:
            self.stats.request_us += (time.perf_counter() - self.start) * 1e6
        return False
