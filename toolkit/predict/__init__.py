"""Batched inference over image files on ONNX Runtime; nothing here imports torch.

  prepare(image)            any image (path, bytes, PIL image, 2-D array) -> 28x28 uint8 model pixels
  predict_paths(paths, ...) the whole `toolkit predict` run; returns a Summary, raises toolkit errors

Modules: inputs (which files, in which order), decode (bytes -> gray levels, Pillow), run (the run, for
every engine), local (the worker-pool engine), ray/ (the Ray Data engine), recorder (rows, counts, the
confusion matrix), results (Summary, Reporter, Batch, outputs -> probabilities), signals (Ctrl-C and
friends), output (CSV/JSONL rows, confusion-matrix PNG), terminal (what the command shows).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import NoImages, PredictInterrupted, WorkerDied
from ..preprocess import MNIST, PreprocessSpec, to_model_pixels
from .decode import decode_gray, read_gray, to_gray
from .results import DEFAULT_BATCH_SIZE, Reporter, Summary, score
from .run import Options, predict_paths, run

__all__ = ["DEFAULT_BATCH_SIZE", "NoImages", "Options", "PredictInterrupted", "Reporter", "Summary", "WorkerDied",
           "predict_paths", "prepare", "run", "score"]


def prepare(image, spec: PreprocessSpec = MNIST) -> np.ndarray:
    """Any image -> (H, W) uint8 pixels in the model's format (for the drawing pad and other callers).

    ``image``: a path, encoded bytes, a Pillow image (any mode), or a 2-D uint8 gray array.
    Raises ImageError for files/bytes that cannot be decoded.
    """
    if isinstance(image, (str, os.PathLike)):
        gray = read_gray(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        gray = decode_gray(bytes(image))
    elif isinstance(image, np.ndarray):
        gray = image
    else:
        gray = to_gray(image)
    return to_model_pixels(gray, spec)
