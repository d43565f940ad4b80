"""What a predict run produces, whatever its engine: the Summary, the Reporter a front end listens with,
the batches engines yield, and the step from model outputs to labels and probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EXIT_OK, EXIT_PARTIAL
from ..runtime import softmax

DEFAULT_BATCH_SIZE = 256


@dataclass
class Summary:
    images: int = 0
    blank: int = 0  # of ``images``: no ink found, so no label (never counted in the confusion matrix)
    skipped: int = 0
    ignored: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # of ``seconds``: starting or joining a cluster (--engine ray), reported apart
    provider: str = ""
    classes: list[str] = field(default_factory=list)
    confusion: np.ndarray | None = None
    output: Path | None = None
    rows_written: int = 0
    confusion_png: Path | None = None
    interrupted: bool = False
    discarded: str | None = None  # why an interrupted run kept no --output at all (a Parquet directory)

    @property
    def labelled(self) -> int:
        return int(self.confusion.sum()) if self.confusion is not None else 0

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion)) if self.confusion is not None else 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.skipped else EXIT_OK


class Reporter:
    """What a front end hears during a run; every method is optional to override."""

    def notice(self, text: str) -> None: ...

    def begin(self, files: list[str], classes: list[str], top_k: int) -> None: ...

    def skipped(self, path: str, reason: str) -> None: ...

    def predicted(self, paths: list[str], expected: list, probs: np.ndarray, top: np.ndarray,
                  blank: np.ndarray) -> None:
        """``blank[i]``: image i has no ink; its ``probs``/``top`` row is no prediction and must not be shown as one."""

    def advance(self, files_done: int) -> None: ...

    def end(self, summary: Summary) -> None: ...


@dataclass
class Batch:
    """What an engine yields, in input order: model outputs for some files, and the files it could not read.

    ``indices``: file indices of the ``outputs`` rows, ascending, each following the previous batch's;
    ``blank[j]``: no ink in image j (its output is no prediction); ``skipped``: (file index, reason) of files
    that could not be read, reported as they come.
    """

    indices: list[int]
    outputs: np.ndarray
    blank: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)


def score(outputs: np.ndarray, output_kind: str, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Finite model outputs (N, classes) -> (probabilities as float32, the top-k class indices per row).

    ``output_kind`` (the model contract's): "logits" get a softmax, "probabilities" are taken as they are.
    Ties go to the lower class index, so the result is deterministic.
    """
    probs = outputs.astype(np.float32)
    if output_kind != "probabilities":
        probs = softmax(probs)
    return probs, np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
