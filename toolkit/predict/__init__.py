"""Batched inference over image files on ONNX Runtime; nothing here imports torch.

  prepare(image)            any image (path, bytes, PIL image, 2-D array) -> 28x28 uint8 model pixels
  predict_paths(paths, ...) the whole `toolkit predict` run; returns a Summary, raises toolkit errors

Modules: inputs (which files, in which order), decode (bytes -> gray levels, Pillow),
output (CSV/JSONL rows, confusion-matrix PNG), terminal (what the command shows),
pipeline (workers, batches, the run).
"""

from .pipeline import (DEFAULT_BATCH_SIZE, NoImages, PredictInterrupted, Reporter, Summary, WorkerDied, predict_paths,
                       prepare)

__all__ = ["DEFAULT_BATCH_SIZE", "NoImages", "PredictInterrupted", "Reporter", "Summary", "WorkerDied",
           "predict_paths", "prepare"]
