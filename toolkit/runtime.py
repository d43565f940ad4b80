"""ONNX Runtime sessions with honest provider selection, and the Predictor built on them.

Provider rules (see GUIDE): ``get_available_providers()`` lists CUDA even on a
machine without a GPU, and a session asked for CUDA silently falls back to CPU.
So CUDA is attempted after ``onnxruntime.preload_dlls()`` and judged only by
``session.get_providers()``. ORT's own (coloured) log lines are captured and
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

from .contract import ModelContract
from .errors import ModelError, ProviderUnavailable

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


def session_options(threads: int | None = None):
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def _load(ort, path: Path, opts, providers):
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types for every kind of bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(path, f"not a loadable ONNX model ({first[:200]})") from None


def cuda_session(path: Path, opts, cuda_options: dict | None = None):
    """Return (session, None) on a real CUDA session, or (None, reason)."""
    ort = import_ort()
    if CUDA not in ort.get_available_providers():
        return None, "this onnxruntime build has no CUDA execution provider (install onnxruntime-gpu)"
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


def create_session(path: str | os.PathLike, provider: str = "auto", threads: int | None = None):
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
    opts = session_options(threads)
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
    names = [o.name for o in session.get_outputs()]
    if contract.output_name not in names:
        raise ModelError(path, f"metadata names output {contract.output_name!r}; graph has {names}")
    return contract


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass
class Predictor:
    """An ONNX model plus its contract: uint8 28x28 pixels in, class probabilities out."""

    path: Path
    session: object
    provider: str
    notice: str | None
    contract: ModelContract

    @classmethod
    def open(cls, path: str | os.PathLike = "model.onnx", provider: str = "auto", threads: int | None = None):
        path = Path(path)
        session, used, notice = create_session(path, provider, threads)
        return cls(path=path, session=session, provider=used, notice=notice, contract=read_contract(session, path))

    @property
    def classes(self) -> list[str]:
        return self.contract.classes

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.contract.output_name], {self.contract.input_name: x})[0]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W) already in model format (see preprocess.to_model_pixels)."""
        return softmax(self.logits(self.contract.preprocess.normalize(pixels)).astype(np.float32))


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
