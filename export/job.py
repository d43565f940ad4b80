"""What the pipeline hands a format's exporter (a Job) and what the exporter hands back (Written).

Every row of toolkit.formats names one ``export(job) -> Written`` function; the pipeline calls it with the
temporary path to write, then loads the file back and judges it. A float format writes from ``job.model``;
a variant (a row with ``made_from``) writes from ``job.source``, the float file it is made from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from toolkit.contract import ModelContract


@dataclass
class Job:
    model: object  # the eval-mode torch module
    path: Path  # where to write (a temporary name; the pipeline publishes it after the gate)
    loaded: object  # the train.checkpoint.LoadedCheckpoint the model was built from
    contract: ModelContract  # the contract every file carries (no ONNX fields; set the exporter's name)
    opset: int
    onnx_exporter: str  # a key of onnx_export.EXPORTERS
    source: Path | None = None  # variants: the float file (written and passed in this run)
    source_sha256: str = ""
    source_contract: ModelContract | None = None  # variants: the contract the float file carries
    calibration: Callable[[], np.ndarray] | None = None  # normalised training images at the model's size


@dataclass
class Written:
    contract: ModelContract  # what the file carries (its exporter, the opset it really declares)
    method: str = ""  # variants: how it was made from the float file, recorded in the report
    timed: bool = False  # variants: also time batch 1 against the float file at export
