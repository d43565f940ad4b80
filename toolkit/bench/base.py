"""Engines: one small class per way of running the model, found through a registry.

An engine names the file it runs (beside ``--model``), says why it cannot run without
importing anything heavy, and opens an Instance on a provider. The Instance turns an input
batch into Cases: named callables, each timed exactly as it is (one call = one run).

Add an engine from your own code::

    from toolkit.bench.base import Engine, register

    @register
    class MyEngine(Engine):
        name = "my-engine"
        ...

or from an installed package, with an entry point in the group ``toolkit.bench_engines``
pointing at the class; ``toolkit bench --engines my-engine`` then finds it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EXIT_UNAVAILABLE, ToolkitError

ENTRY_POINT_GROUP = "toolkit.bench_engines"
_REGISTRY: dict[str, type["Engine"]] = {}
_loaded = False
plugin_errors: list[str] = []  # plug-ins that failed to load; reported, not fatal


class EngineUnavailable(ToolkitError):
    """An engine's library (torch, matplotlib for plots) is not installed or cannot be imported."""

    exit_code = EXIT_UNAVAILABLE


@dataclass
class Case:
    """One thing to time. ``mode`` says what a run includes:

    e2e        host arrays in, host array out (on CUDA that includes both copies)
    device     input and output resident on the device, no copies
    h2d, d2h   the input copy to the device / the output copy back, alone
    cuda-graph like device, replayed from a captured CUDA graph
    """

    mode: str
    fn: Callable[[], object]
    nbytes: int | None = None  # bytes moved, for the copy modes


@dataclass
class Instance:
    """An engine opened on one provider."""

    providers_used: list[str]
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    precision: str | None = None  # what the file says it is, when it says; else the engine's own label

    def cases(self, x: np.ndarray) -> list[Case]:
        raise NotImplementedError

    def context(self):
        """Entered around all timed runs of this instance (e.g. torch.inference_mode)."""
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


class Engine:
    name = ""
    precision = "float32"
    description = ""
    suffix = ".onnx"  # the artefact is <stem><suffix> beside the model

    def __init__(self, model: str | os.PathLike):
        self.model = Path(model)

    def artifact(self) -> Path:
        stem = self.model.name[: -len(self.model.suffix)] if self.model.suffix else self.model.name
        return self.model.with_name(stem + self.suffix)

    def missing(self) -> str | None:
        """Why this engine cannot run here at all, judged without heavy imports; None if it may run."""
        path = self.artifact()
        return None if path.is_file() else f"no {path.name} beside the model"

    def prepare(self) -> None:
        """Import the engine's library, so that its import time is not billed as session creation."""

    def cuda_problem(self, threads: int) -> str | None:
        """Why this engine cannot run on CUDA here; None if it can."""
        return "this engine has no CUDA path"

    def open(self, provider: str, threads: int, options: dict) -> Instance:
        raise NotImplementedError


def register(cls: type[Engine]) -> type[Engine]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def engines() -> dict[str, type[Engine]]:
    """Every registered engine, built-ins first; plug-ins are loaded on first use."""
    global _loaded
    if not _loaded:
        _loaded = True
        from . import ort_engines, torch_engines  # noqa: F401  (registration happens on import)
        from importlib import metadata

        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                register(ep.load())
            except Exception as e:  # one broken plug-in must not stop the built-in engines
                plugin_errors.append(f"engine plug-in {ep.name} ({ep.value}) failed to load: {type(e).__name__}: {e}")
    return dict(_REGISTRY)
