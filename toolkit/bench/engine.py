"""Engines: one small class per way of running the model.

An engine names the file it runs (beside ``--model``), says why it cannot run without
importing anything heavy, and opens an Instance on a provider. The Instance turns an input
batch into Cases: named callables, each timed exactly as it is (one call = one run).
``run_bench`` takes the engines as a plain name -> class mapping; the CLI assembles it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


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
    precision: str | None = None  # what the file's contract says, when it says; else the engine's own label
    fixed_batch: int | None = None  # the only batch size the model accepts, when its graph fixes one
    max_batch: int | None = None  # the largest batch the runtime accepts (ExecuTorch plans its buffers for one)

    def cases(self, x: np.ndarray) -> list[Case]:
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's outputs for ``x`` as a host array, through this engine's own runtime (for accuracy)."""
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
        return self.model.with_name(self.model.stem + self.suffix)

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

    @classmethod
    def for_format(cls, row) -> type[Engine]:
        """This engine bound to a row of toolkit.formats: named after the format, running its <stem><suffix>."""
        described = {} if "description" in vars(cls) else {
            "description": f"the {row.name} file written by export (<stem>{row.suffix}: {row.what})"}
        return type(cls.__name__, (cls,), {"name": row.name, "suffix": row.suffix, "precision": row.precision,
                                           **described})


def format_engines(module: str, classes: dict[str, type[Engine]]) -> dict[str, type[Engine]]:
    """Name -> engine for every row of toolkit.formats whose engine is one of ``classes`` of ``module``."""
    from ..formats import FORMATS

    prefix = module + ":"
    return {f.name: classes[f.engine.removeprefix(prefix)].for_format(f) for f in FORMATS
            if f.engine.startswith(prefix)}
