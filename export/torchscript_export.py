"""Write the eval-mode model as TorchScript, with the same contract the ONNX file carries.

``torch.jit.script`` rather than ``trace``: scripting records the module's code,
not one batch's shapes, so the batch dimension stays dynamic by construction
(validation still checks batches 1, 2, 7, 64). The contract goes into the archive
as an extra file, so ``toolkit inspect model.pt`` can show it without running the model.
"""

from __future__ import annotations

import json
import os

from toolkit.contract import ModelContract

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
        scripted = torch.jit.script(model.eval())
        extra = {EXTRA_FILE: json.dumps(contract.to_metadata(), sort_keys=True)}
        torch.jit.save(scripted, str(path), _extra_files=extra)


def load_torchscript(path: str | os.PathLike):
    """Return (module, contract metadata dict or None). Raises the loader's own exceptions."""
    import warnings

    import torch

    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    raw = extra[EXTRA_FILE]
    meta = json.loads(raw) if raw else None
    return module.eval(), meta
