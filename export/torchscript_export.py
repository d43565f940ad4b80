"""Write the eval-mode model as TorchScript, with the same contract the ONNX file carries.

``torch.jit.script`` rather than ``trace``: scripting records the module's code,
not one batch's shapes, so the batch dimension stays dynamic by construction
(validation still checks batches 1, 2, 7, 64). The contract goes into the archive
as an extra file, so ``toolkit inspect model.pt`` can show it without running the model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

from toolkit.contract import ModelContract
from toolkit.errors import ModelError
from toolkit.text import first_line

from .job import Job, Written

EXTRA_FILE = "toolkit_contract.json"
EXPORTER = "torch.jit.script"


def export_torchscript(model, path: str | os.PathLike, contract: ModelContract) -> None:
    """Script ``model`` (already in eval mode) and save it to ``path``; caller handles atomicity."""
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch 2.x marks TorchScript deprecated; it is still what libtorch/C++ consumers load,
        # and the file is validated against the eager model after it is written.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            scripted = torch.jit.script(model.eval())
        except Exception as e:  # a user's module (export --module) may use Python that TorchScript cannot compile
            raise ModelError(path, f"torch.jit.script cannot compile the model ({first_line(e)}); leave TorchScript "
                                   "out with --formats onnx or onnx,pt2") from None
        extra = {EXTRA_FILE: json.dumps(contract.to_metadata(), sort_keys=True)}
        # In memory first: torch's file writer reports a full disk as a RuntimeError, a plain write as OSError.
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer, _extra_files=extra)
    Path(path).write_bytes(buffer.getbuffer())


def export(job: Job) -> Written:
    """The torchscript row's exporter (toolkit.formats)."""
    contract = dataclasses.replace(job.contract, exporter=EXPORTER)
    export_torchscript(job.model, job.path, contract)
    return Written(contract)


def load_torchscript(path: str | os.PathLike):
    """Return (module in eval mode on the CPU, contract metadata dict or None); ModelError if it will not load."""
    import warnings

    import torch

    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # torch.jit.load raises RuntimeError/ValueError/zip errors, with C++ backtraces
        raise ModelError(path, f"torch.jit.load cannot load it ({first_line(e)})") from None
    raw = extra[EXTRA_FILE]
    return module.eval(), (json.loads(raw) if raw else None)
