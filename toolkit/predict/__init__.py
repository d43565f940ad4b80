"""Batched inference over image files on ONNX Runtime; nothing here imports torch.

  prepare(image, spec)      any image (path, bytes, PIL image, array) -> the model's uint8 pixels, either pipeline
  predict_paths(paths, ...) the whole `toolkit predict` run; returns a Summary, raises toolkit errors

Modules: inputs (which files, in which order), decode (bytes -> gray levels or RGB, Pillow), run (the run, for
every engine), local (the worker-pool engine), ray/ (the Ray Data engine), recorder (rows, counts, the
confusion matrix), results (Summary, Reporter, Batch, outputs -> probabilities), signals (Ctrl-C and
friends), output (CSV/JSONL rows, confusion-matrix PNG), terminal (what the command shows).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import NoImages, PredictInterrupted, WorkerDied
from ..preprocess import MNIST, PreprocessSpec, to_model_pixels
from .decode import decode_image, read_image, to_gray
from .results import DEFAULT_BATCH_SIZE, Reporter, Summary, score
from .run import Options, predict_paths, run

__all__ = ["DEFAULT_BATCH_SIZE", "NoImages", "Options", "PredictInterrupted", "Reporter", "Summary", "WorkerDied",
           "predict_paths", "prepare", "run", "score"]


def prepare(image, spec: PreprocessSpec = MNIST) -> np.ndarray:
    """Any image -> uint8 pixels in the model's format, ``spec.pixel_shape`` (digit (H, W), image (H, W, C)).

    ``image``: a path, encoded bytes, a Pillow image (any mode: the digit pipeline makes it gray, the image
    pipeline RGB with Pillow's convert), or a uint8 array (2-D gray; (H, W, 3) RGB for the image pipeline).
    Files and bytes are decoded as `toolkit predict` decodes them. Raises ImageError for files/bytes that
    cannot be decoded.
    """
    if isinstance(image, (str, os.PathLike)):
        decoded = read_image(image, spec.mode)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        decoded = decode_image(bytes(image), spec.mode)
    elif isinstance(image, np.ndarray) or spec.mode == "image":
        decoded = image
    else:
        decoded = to_gray(image)
    return to_model_pixels(decoded, spec)
