"""Write the eval-mode model to ONNX with a dynamic batch axis and the toolkit contract in its metadata."""

from __future__ import annotations

import dataclasses
import os

from toolkit.contract import ModelContract
from toolkit.errors import ModelError
from toolkit.text import first_line, runtime_reason

from .defaults import DEFAULT_ONNX_EXPORTER, DEFAULT_OPSET
from .job import Job, Written
from .pt2_export import batch_dim
from .quiet import quiet_torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTERS = {"dynamo": "torch.onnx.export(dynamo=True)", "legacy": "torch.onnx.export(dynamo=False)"}


def export_onnx(model, path: str | os.PathLike, contract: ModelContract, opset: int = DEFAULT_OPSET,
                exporter: str = DEFAULT_ONNX_EXPORTER) -> ModelContract:
    """Export to ``path`` (caller handles atomicity), embed ``contract`` as metadata_props and return it.

    The returned contract records the exporter used and the opset the file really declares (the dynamo
    exporter writes opset 18 or later and converts down to ``opset`` when it can).
    """
    import torch

    dummy = torch.zeros(2, *contract.preprocess.input_shape)
    try:
        with quiet_torch():
            if exporter == "dynamo":
                program = torch.onnx.export(
                    model.eval(), (dummy,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=(batch_dim(),), opset_version=opset, dynamo=True, optimize=True,
                    verbose=False)
                program.save(str(path))
            elif exporter == "legacy":
                torch.onnx.export(
                    model.eval(), (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                    do_constant_folding=True, dynamo=False)
            else:
                raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    except ValueError:
        raise
    except Exception as e:  # e.g. an opset this torch cannot target
        raise ModelError(path, f"{EXPORTERS[exporter]} failed at opset {opset}: {first_line(e)}") from None
    written = graph_opset(path)
    if written != opset:  # the dynamo exporter keeps its own opset when the down-conversion fails
        raise ModelError(path, f"{EXPORTERS[exporter]} wrote opset {written}, not the opset {opset} asked for; "
                               "for opsets below 18 use --onnx-exporter legacy")
    contract = dataclasses.replace(contract, exporter=EXPORTERS[exporter], opset=written)
    embed_contract(path, contract)
    return contract


def export(job: Job) -> Written:
    """The onnx row's exporter (toolkit.formats): its own contract, with the opset the file declares."""
    contract = contract_for(job.loaded, job.opset, exporter=EXPORTERS[job.onnx_exporter])
    return Written(export_onnx(job.model, job.path, contract, opset=job.opset, exporter=job.onnx_exporter))


def embed_contract(path: str | os.PathLike, contract: ModelContract) -> None:
    """Replace the file's metadata_props with ``contract`` and check the result strictly."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in contract.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    from toolkit import __version__

    proto.producer_name = "toolkit"
    proto.producer_version = __version__
    onnx.save(proto, str(path))
    check_onnx(path)


def check_onnx(path: str | os.PathLike) -> None:
    """``onnx.checker`` with full shape inference; a failure is a broken export, reported as such."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # ValidationError, InferenceError: both mean the graph is not valid ONNX
        raise ModelError(path, f"onnx.checker rejected the graph: {runtime_reason(e)}") from None


def graph_opset(path: str | os.PathLike) -> int:
    """The default-domain opset the file really declares (the quantizer may raise it)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def contract_for(loaded, opset: int, precision: str = "float32", exporter: str = EXPORTERS["dynamo"],
                 extra: dict | None = None) -> ModelContract:
    """The contract for a model rebuilt from ``loaded`` (a train.checkpoint.LoadedCheckpoint)."""
    import onnx
    import torch

    spec = loaded.preprocess
    return ModelContract(
        input_name=INPUT_NAME, input_shape=["batch", *spec.input_shape], input_dtype="float32",
        output_name=OUTPUT_NAME, classes=list(loaded.classes), preprocess=spec,
        source_sha256=loaded.sha256, torch_version=str(torch.__version__), onnx_version=onnx.__version__,
        opset=opset, exporter=exporter, precision=precision, extra=dict(extra or {}),
        flops_per_image=loaded.config.flops_per_image(),  # bench's roofline reads it from the file
        output_kind=getattr(loaded, "output_kind", "logits"),  # a user's module may end in softmax
    )
