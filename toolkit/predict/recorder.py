"""Rows, counts and the confusion matrix of a predict run: every engine's batches go through one Recorder."""

from __future__ import annotations

import numpy as np

from ..runtime import non_finite_rows
from .inputs import Inputs
from .results import Batch, Reporter, Summary, score


class Recorder:
    """Turns an engine's batches into rows (``writer``), the Summary's counts and its confusion matrix.

    A file's true label is its folder's name when that is a class (see inputs.expected_label); a blank
    image (no ink) has no label whatever the model said, and is never counted in the confusion matrix.
    """

    def __init__(self, inputs: Inputs, summary: Summary, output_kind: str, top_k: int, reporter: Reporter):
        self.files, self.summary, self.output_kind, self.top_k = inputs.files, summary, output_kind, top_k
        self.reporter = reporter
        self.done = 0  # files accounted for: predicted or skipped
        self.writer = None  # a ResultWriter (or a sink with the same write()), set once the output is open
        self.index = {c: i for i, c in enumerate(summary.classes)}
        self.labels = [name if name in self.index else None for name in inputs.parents]
        summary.confusion = np.zeros((len(self.index), len(self.index)), dtype=np.int64)

    def skip(self, i: int, reason: str) -> None:
        self.reporter.skipped(self.files[i], reason)
        self.summary.skipped += 1

    def record(self, batch: Batch) -> None:
        for i, reason in batch.skipped:
            self.skip(i, reason)
        picked, outputs, blank = batch.indices, batch.outputs, batch.blank
        bad = non_finite_rows(outputs)
        if bad:  # NaN/Inf is no prediction, whatever its argmax: those images are skipped, the others kept
            for j in bad:
                kind = "NaN" if np.isnan(outputs[j]).any() else "Inf"
                self.skip(picked[j], f"the model's output for this image is {kind}, not a prediction")
            keep = np.ones(len(picked), dtype=bool)
            keep[bad] = False
            picked, blank, outputs = [f for f, k in zip(picked, keep) if k], blank[keep], outputs[keep]
        if len(picked):
            self._rows(picked, outputs, blank)
        self.done += len(batch.indices) + len(batch.skipped)
        self.reporter.advance(len(batch.indices) + len(batch.skipped))

    def _rows(self, picked: list[int], outputs: np.ndarray, blank: np.ndarray) -> None:
        s = self.summary
        probs, top = score(outputs, self.output_kind, self.top_k)
        paths = [self.files[i] for i in picked]
        expected = [self.labels[i] for i in picked]
        labelled = [j for j, e in enumerate(expected) if e is not None and not blank[j]]
        if labelled:
            np.add.at(s.confusion, ([self.index[expected[j]] for j in labelled], top[labelled, 0]), 1)
        if self.writer is not None:
            self.writer.write(paths, expected, probs, top, blank)
        s.images += len(paths)
        s.blank += int(blank.sum())
        self.reporter.predicted(paths, expected, probs, top, blank)
