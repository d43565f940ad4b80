"""Write the eval-mode model as a torch.export ExportedProgram (``.pt2``), with the toolkit contract inside.

``torch.export`` is what PyTorch recommends in place of TorchScript. The file is the archive
``torch.export.save`` writes; anyone loads it with ``torch.export.load(path).module()`` and no toolkit
code. The contract is one of the archive's extra files (the same JSON the TorchScript file carries),
read back with ``torch.export.load(path, extra_files={"toolkit_contract.json": ""})``.
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
from .quiet import quiet_torch

EXTRA_FILE = "toolkit_contract.json"
EXPORTER = "torch.export.export"


def batch_dim() -> dict:
    """Dimension 0 of the single input is the batch, of any size: torch.export's dynamic_shapes entry."""
    import torch

    return {0: torch.export.Dim("batch", min=1)}


def export_pt2(model, path: str | os.PathLike, contract: ModelContract) -> ModelContract:
    """Trace ``model`` with torch.export (dynamic batch) and save it to ``path``; caller handles atomicity."""
    import torch

    dummy = torch.zeros(2, *contract.preprocess.input_shape)
    buffer = io.BytesIO()  # as for TorchScript: a full disk surfaces as OSError from the plain write below
    try:
        with quiet_torch():
            program = torch.export.export(model.eval(), (dummy,), dynamic_shapes=(batch_dim(),))
            torch.export.save(program, buffer,
                              extra_files={EXTRA_FILE: json.dumps(contract.to_metadata(), sort_keys=True)})
    except Exception as e:  # torch.export raises its own error types for untraceable code
        raise ModelError(path, f"torch.export failed: {first_line(e)}") from None
    Path(path).write_bytes(buffer.getbuffer())
    return contract


def export(job: Job) -> Written:
    """The pt2 row's exporter (toolkit.formats)."""
    return Written(export_pt2(job.model, job.path, dataclasses.replace(job.contract, exporter=EXPORTER)))


def load_pt2(path: str | os.PathLike):
    """Return (ExportedProgram, contract metadata dict or None); ModelError if it will not load."""
    import torch

    extra = {EXTRA_FILE: ""}
    try:
        with quiet_torch():
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:  # zip, JSON and schema errors alike mean the file is not a usable program
        raise ModelError(path, f"torch.export.load cannot load it ({first_line(e)})") from None
    raw = extra[EXTRA_FILE]
    return program, (json.loads(raw) if raw else None)

