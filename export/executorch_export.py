"""Write the eval-mode model as an ExecuTorch program (``.pte``) with its linear layers delegated to XNNPACK.

ExecuTorch is PyTorch's runtime for phones and microcontrollers. The path is the one ExecuTorch documents:
``torch.export.export`` -> ``executorch.exir.to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``
-> ``to_executorch()``. ExecuTorch plans every buffer ahead of time, so the batch axis is dynamic only up to a
bound (MAX_BATCH): a larger batch is refused by the runtime, and the runner here feeds larger inputs in chunks.
The file is read back with ``executorch.runtime.Runtime`` (the Python bindings of the C++ runtime), which is
how the parity gate and ``toolkit bench`` run it. The contract is not inside the file (a .pte has no
free-form metadata); it stays in the ONNX/TorchScript files and the export report.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from toolkit.contract import ModelContract
from toolkit.errors import ModelError
# ExecuTorch's C++ runtime logs CPU probing lines straight to file descriptor 2: kept off the terminal.
from toolkit.runtime import captured_stderr
from toolkit.text import first_line

from .job import Job, Written
from .quiet import quiet_torch

EXPORTER = "executorch.exir.to_edge_transform_and_lower (XNNPACK)"
MAX_BATCH = 1024  # the planned buffers hold this many images; the largest batch toolkit bench times by default
INSTALL = "pip install 'toolkit[executorch]'"


def export_executorch(model, path: str | os.PathLike, contract: ModelContract) -> ModelContract:
    """Lower ``model`` to an XNNPACK-delegated ExecuTorch program at ``path``; caller handles atomicity."""
    import torch

    try:
        with quiet_torch(), captured_stderr():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower

            dummy = torch.zeros(2, *contract.preprocess.input_shape)
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            program = torch.export.export(model.eval(), (dummy,), dynamic_shapes=({0: batch},))
            buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    except ImportError as e:
        raise ModelError(path, f"ExecuTorch is not installed ({first_line(e)}): {INSTALL}") from None
    except Exception as e:  # lowering raises its own error types for unsupported graphs
        raise ModelError(path, f"ExecuTorch lowering failed: {first_line(e)}") from None
    Path(path).write_bytes(buffer)
    return contract


def export(job: Job) -> Written:
    """The executorch row's exporter (toolkit.formats)."""
    return Written(export_executorch(job.model, job.path, dataclasses.replace(job.contract, exporter=EXPORTER)))


def check_pte_header(path: str | os.PathLike) -> None:
    """ModelError unless ``path`` starts like an ExecuTorch program: a FlatBuffer whose file identifier (bytes 4-8)
    is "ET" and two digits. Checked first because the C++ loader, given other bytes, logs them in a message
    that its Python bindings cannot decode, and the process aborts (no exception to catch)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelError(path, f"cannot be read ({e.strerror})") from None
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isdigit():
        start = head.hex(" ") if head else "empty"
        raise ModelError(path, f"not an ExecuTorch program (a .pte starts with a FlatBuffer identified as ET12; "
                               f"this file starts {start})")


def load_executorch(path: str | os.PathLike):
    """The program's ``forward`` method, loaded by ExecuTorch's runtime; ModelError if it will not load.

    The whole FlatBuffer is verified (Verification.InternalConsistency): with the default minimal check a
    corrupt body after a valid header crashes the process (SIGSEGV) instead of raising."""
    check_pte_header(path)
    try:
        with quiet_torch(), captured_stderr():
            from executorch.runtime import Runtime, Verification

            program = Runtime.get().load_program(Path(path), verification=Verification.InternalConsistency)
            return program.load_method("forward")
    except ImportError as e:
        raise ModelError(path, f"ExecuTorch is not installed ({first_line(e)}): {INSTALL}") from None
    except Exception as e:  # a corrupt flatbuffer surfaces as RuntimeError from the C++ loader
        raise ModelError(path, f"executorch.runtime cannot load it ({first_line(e)})") from None


def executorch_runner(path: str | os.PathLike):
    """numpy in, numpy out through the ExecuTorch runtime; batches over MAX_BATCH run as chunks of it."""
    import torch

    method = load_executorch(path)

    def run(x: np.ndarray) -> np.ndarray:
        outs = []
        with captured_stderr():  # a refused input is logged by the runtime before it raises
            for start in range(0, len(x), MAX_BATCH):
                outs.append(method.execute([torch.from_numpy(x[start:start + MAX_BATCH])])[0].detach().numpy())
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    return run
