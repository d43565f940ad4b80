"""ONNX Runtime sessions with honest provider selection, and the Predictor built on them.

Provider rules (see GUIDE): ``get_available_providers()`` lists CUDA even on a
machine without a GPU, and a session asked for CUDA silently falls back to CPU.
So CUDA is attempted only where an NVIDIA driver exists (toolkit.machine.nvidia_driver_missing:
without one, loading the CUDA libraries costs ~250 MB for nothing), after ``onnxruntime.preload_dlls()``,
and judged only by ``session.get_providers()``. ORT's own (coloured) log lines are captured and
condensed into one plain sentence.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import ModelContract, has_contract
from .errors import ModelError, NonFiniteOutput, ProviderUnavailable
from .flags import PreprocessFlags, check_agreement, contract_from_flags
from .machine import nvidia_driver_missing
from .text import first_line, runtime_reason

PROVIDERS = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def import_ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only; we report failures ourselves
    return ort


@contextlib.contextmanager
def captured_stderr():
    """Capture file-descriptor-level stderr (C++ logs, dlopen messages) into a list of lines."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as buf:
        saved = os.dup(2)
        try:
            os.dup2(buf.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            text = _ANSI.sub("", buf.read().decode("utf-8", "replace"))
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _reason(lines: list[str], default: str) -> str:
    """The most telling sentence of ORT's log: a dlopen error if there is one."""
    for line in reversed(lines):
        m = re.search(r"with error: (.+)$", line)
        if m:
            detail = m.group(1).strip()
            if "libcuda.so" in detail:
                return f"no NVIDIA driver on this machine ({detail})"
            return detail
    for line in reversed(lines):
        if any(w in line.lower() for w in ("error", "fail", "cannot", "not found", "no such")):
            return re.sub(r"^.*?: ", "", line)[-300:]
    return default


def session_options(threads: int | None = None, spin: bool = True):
    """``spin=False``: ONNX Runtime's pool threads sleep between runs instead of spin-waiting for the next one,
    which a process that also needs its CPUs for other work (serve's event loop) wants."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def _load(ort, path: Path, opts, providers):
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types for every kind of bad file
        raise ModelError(path, f"not a loadable ONNX model ({runtime_reason(e)})") from None


def cuda_session(path: Path, opts, cuda_options: dict | None = None):
    """Return (session, None) on a real CUDA session, or (None, reason)."""
    ort = import_ort()
    if CUDA not in ort.get_available_providers():
        return None, "this onnxruntime build has no CUDA execution provider (install onnxruntime-gpu)"
    missing = nvidia_driver_missing()
    if missing:  # before any CUDA library is loaded: without a driver none of them can work
        return None, "CUDA provider could not be loaded: " + missing
    with captured_stderr() as lines:
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception as e:
                lines.append(f"error: preload_dlls failed: {e}")
        session = _load(ort, path, opts, [(CUDA, dict(cuda_options or {})), CPU])
    if session.get_providers()[0] == CUDA:
        return session, None
    return None, "CUDA provider could not be loaded: " + _reason(lines, "no CUDA device or libraries found")


def create_session(path: str | os.PathLike, provider: str = "auto", threads: int | None = None, spin: bool = True):
    """Return (session, provider_used, notice). ``notice`` is a sentence for the user, or None."""
    path = Path(path)
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}")
    if not path.exists():
        raise ModelError(path, "no such model file; create one with `toolkit export model.pth`")
    if path.is_dir():
        raise ModelError(path, "is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise ModelError(path, "empty file (0 bytes)")
    ort = import_ort()
    opts = session_options(threads, spin)
    if provider in ("auto", "cuda"):
        session, reason = cuda_session(path, opts)
        if session is not None:
            return session, "cuda", "using the CUDA execution provider" if provider == "auto" else None
        if provider == "cuda":
            raise ProviderUnavailable(f"--provider cuda: {reason}")
        return _load(ort, path, opts, [CPU]), "cpu", f"CUDA not usable ({reason}); using CPU"
    return _load(ort, path, opts, [CPU]), "cpu", None


def read_contract(session, path) -> ModelContract:
    """The model's own contract, checked against the graph's actual input."""
    contract = ModelContract.from_metadata(session.get_modelmeta().custom_metadata_map, path)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(path, f"expected one input, the graph has {len(inputs)}")
    inp = inputs[0]
    if inp.name != contract.input_name:
        raise ModelError(path, f"graph input is named {inp.name!r} but the metadata says {contract.input_name!r}")
    if inp.type != "tensor(float)" or contract.input_dtype != "float32":
        raise ModelError(path, f"graph input type {inp.type} / metadata {contract.input_dtype}: expected float32")
    want = list(contract.preprocess.input_shape)
    got = list(inp.shape[1:])
    if len(inp.shape) != 4 or got != want or list(contract.input_shape[1:]) != want:
        raise ModelError(path, f"graph input shape {inp.shape} does not match the metadata "
                               f"{contract.input_shape} / preprocessing {['batch', *want]}")
    outputs = {o.name: o for o in session.get_outputs()}
    if contract.output_name not in outputs:
        raise ModelError(path, f"metadata names output {contract.output_name!r}; graph has {list(outputs)}")
    check_output_width(path, outputs[contract.output_name].shape[-1:], contract.classes)
    return contract


def model_contract(session, path, flags: PreprocessFlags | None = None) -> ModelContract:
    """The contract the model carries (options, if given, must agree with it), or one built from the
    options and the graph (toolkit.flags); its output_kind is settled by ``Predictor.open``'s probe."""
    if has_contract(session.get_modelmeta().custom_metadata_map):
        contract = read_contract(session, path)
        if flags is not None and flags.given:
            check_agreement(path, contract, flags)
        return contract
    from .graph import input_facts

    return contract_from_flags(path, flags, input_facts(session, path))


def check_output_width(path, width: list, classes: list[str]) -> None:
    """A class list that does not match the output width would mislabel every prediction.

    ``width`` is the graph's last output dimension ([] or a symbolic name when unknown until run time).
    """
    if width and isinstance(width[0], int) and width[0] != len(classes):
        raise ModelError(path, f"the model has {width[0]} outputs but its contract names {len(classes)} classes")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass(frozen=True)
class OpenOptions:
    """How ``Predictor.open`` runs a model. ``run_timeout``: seconds per batch (default
    toolkit.run_guard.DEFAULT_RUN_TIMEOUT; 0: none); ``probe_timeout``: per probe run at open (default the smaller
    of it and PROBE_TIMEOUT); ``spin=False``: pool threads sleep between runs (see ``session_options``)."""

    run_timeout: float | None = None
    probe_timeout: float | None = None
    spin: bool = True


@dataclass
class Predictor:
    """An ONNX model plus its contract: uint8 pixels in MNIST's format (the model's size) in, class probabilities out.

    A model without the toolkit's contract is opened with ``flags`` (toolkit.flags); whether its output
    is already a probability is then found by a probe run (toolkit.graph.outputs_are_probabilities).
    """

    path: Path
    session: object
    provider: str
    notice: str | None
    contract: ModelContract
    guard: object = None  # toolkit.run_guard.Guard: every run bounded by run_timeout, stoppable by signals
    batch: int | None = None  # the batch size the graph must run at (declared, or found by the probe); None: any
    max_rows: int | None = None  # the most images one run may take in the free memory (None: unknown)

    @classmethod
    def open(cls, path: str | os.PathLike = "model.onnx", provider: str = "auto", threads: int | None = None,
             flags: PreprocessFlags | None = None, options: OpenOptions = OpenOptions()):
        """Before any run: the memory one image's input needs is checked against the free memory (ModelError when
        not even one fits; ``max_rows`` otherwise), and the batch sizes the graph accepts are probed
        (toolkit.batch_limits)."""
        from .batch_limits import accepted_batch, rows_that_fit
        from .run_guard import DEFAULT_RUN_TIMEOUT, PROBE_TIMEOUT, Guard, check_limit

        path = Path(path)
        limit = check_limit(DEFAULT_RUN_TIMEOUT if options.run_timeout is None else options.run_timeout)
        probe_limit = check_limit(options.probe_timeout) if options.probe_timeout is not None else (
            PROBE_TIMEOUT if limit is None else min(limit, PROBE_TIMEOUT))
        session, used, notice = create_session(path, provider, threads, options.spin)
        contract = model_contract(session, path, flags)
        predictor = cls(path=path, session=session, provider=used, notice=notice, contract=contract,
                        guard=Guard(session, path, limit))
        spec = contract.preprocess
        row = [int(d) for d in session.get_inputs()[0].shape[1:]]
        predictor.max_rows = rows_that_fit(path, [None, *row], spec.pixel_shape)
        predictor.batch = accepted_batch(predictor.guard, (contract.input_name, contract.output_name), row,
                                         predictor.fixed_batch, predictor.max_rows, probe_limit)
        if not has_contract(session.get_modelmeta().custom_metadata_map):
            from .graph import PROBE_IMAGES, outputs_are_probabilities, probe_pixels

            n = min(PROBE_IMAGES, predictor.max_rows or PROBE_IMAGES)
            probe = predictor.logits(spec.normalize(probe_pixels(spec.pixel_shape, n)), limit=probe_limit,
                                     what="the probe run")
            contract.output_kind = "probabilities" if outputs_are_probabilities(probe) else "logits"
        return predictor

    @property
    def classes(self) -> list[str]:
        return self.contract.classes

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph was exported with, when it is not dynamic."""
        first = self.session.get_inputs()[0].shape[0]
        return first if isinstance(first, int) and first > 0 else None

    def rows_per_batch(self, asked: int) -> int:
        """The batch size to assemble when ``asked`` for: at most what the free memory holds (see ``max_rows``)."""
        return max(1, min(asked, self.max_rows)) if self.max_rows is not None else asked

    def logits(self, x: np.ndarray, limit=..., what: str = "a batch") -> np.ndarray:
        """Raw outputs for a float32 batch of any size: a graph that runs at one batch size only (declared or
        probed) runs in chunks of it, the last padded; any graph in chunks of at most ``max_rows``. Each run is
        bounded by the guard's limit (or ``limit``)."""
        fixed = self.batch
        step = fixed or self.max_rows or max(1, len(x))
        if len(x) == fixed or (fixed is None and len(x) <= step):
            out = self._run(x, limit, what)
        else:
            parts = []
            for start in range(0, len(x), step):
                chunk = x[start:start + step]
                n = len(chunk)
                if fixed is not None and n < fixed:  # padding rows are zeros; their outputs are dropped below
                    chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), dtype=chunk.dtype)])
                parts.append(self._run(chunk, limit, what)[:n])
            out = np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), dtype=np.float32)
        if out.ndim != 2 or out.shape[1] != len(self.classes):
            raise ModelError(self.path, f"the model returned shape {list(out.shape)}, expected "
                                        f"[{len(x)}, {len(self.classes)}] for its {len(self.classes)} classes")
        return out

    def _run(self, x: np.ndarray, limit=..., what: str = "a batch") -> np.ndarray:
        return self.guard.run([self.contract.output_name], {self.contract.input_name: x}, limit=limit, what=what)[0]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W) already in model format (see preprocess.to_model_pixels).

        Raises NonFiniteOutput when the model's output for any image is NaN or infinite:
        such a row is not a prediction, whatever its argmax says.
        """
        logits = self.logits(self.contract.preprocess.normalize(pixels))
        bad = non_finite_rows(logits)
        if bad:
            raise NonFiniteOutput(self.path, bad)
        return self.to_probabilities(logits)

    def to_probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """The model's finite outputs as probabilities: softmax of logits; a graph's own softmax is not repeated."""
        if self.contract.output_kind == "probabilities":
            return outputs.astype(np.float32)
        return softmax(outputs.astype(np.float32))


def non_finite_rows(logits: np.ndarray) -> list[int]:
    """Indices of the batch rows whose outputs hold a NaN or an infinity."""
    return np.flatnonzero(~np.isfinite(logits).all(axis=1)).tolist()


def session_on(path: str | os.PathLike, provider: str, opts, cuda_options: dict | None = None):
    """A session on exactly ``provider`` ("cpu" or "cuda") with the caller's SessionOptions.

    For tools that tune their own options (the benchmark). CUDA follows the same rules as
    ``cuda_session`` and may take provider options (e.g. ``enable_cuda_graph``); when CUDA
    cannot be used this raises ProviderUnavailable with the reason instead of returning a CPU session.
    """
    path = Path(path)
    if provider == "cpu":
        return _load(import_ort(), path, opts, [CPU])
    if provider != "cuda":
        raise ValueError("provider must be 'cpu' or 'cuda'")
    session, reason = cuda_session(path, opts, cuda_options)
    if session is None:
        raise ProviderUnavailable(reason)
    return session
