"""`toolkit serve`: ONNX models over the Open Inference Protocol v2 (HTTP/REST and gRPC), idle-first batching.

  build_app(models, options, limits)  -> ServeApp: an ASGI app, with .grpc_handler() for a grpc.aio server
  run(app, listen)                    hosts it under uvicorn + grpc.aio until SIGTERM/SIGINT; the exit code

Modules: protocol (v2 requests and responses, HTTP side), batcher (idle-first dynamic batching), model
(one served model: contract, images, outputs, reload), metrics (Prometheus, Triton's names), app (the
routes), grpc_service (inference.GRPCInferenceService), runner (process, sockets, signals).
Needs the serve extra (uvicorn, grpcio, orjson, prometheus_client); nothing here imports torch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..machine import cpu_budget
from .app import Limits, ServeApp
from .model import ModelOptions, ServedModel
from .runner import Listen, ServeError, run

__all__ = ["Limits", "Listen", "ModelOptions", "ServeApp", "ServeError", "ServedModel", "build_app", "read_token",
           "run"]


def build_app(models: list[tuple[str, str | os.PathLike]], options: ModelOptions, limits: Limits | None = None,
              load: bool = True) -> ServeApp:
    """A ServeApp for (name, path) pairs; each model is opened now (a bad file raises its toolkit error) unless
    ``load`` is False. ONNX Runtime threads: the CPU budget shared among the models unless options.threads is set;
    image decoding gets a thread pool of its own of the same size."""
    budget = cpu_budget()
    if options.threads is None:
        options.threads = max(1, budget // len(models))
    pool = ThreadPoolExecutor(budget, thread_name_prefix="decode")
    served = [ServedModel(name, path, options, pool) for name, path in models]
    if load:
        for model in served:
            model.load()
    return ServeApp(served, limits)


def read_token(path: str | os.PathLike) -> bytes:
    """The bearer token in ``path`` (surrounding whitespace dropped); refused if empty or not printable ASCII."""
    try:
        token = Path(path).read_bytes().strip()
    except OSError as e:
        raise ServeError(f"{path}: cannot read the token file ({e.strerror})") from None
    if len(token) < 16 or not all(33 <= b < 127 for b in token):
        raise ServeError(f"{path}: the token must be at least 16 printable ASCII characters without spaces")
    return token
