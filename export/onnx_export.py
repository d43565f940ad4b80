"""Write the eval-mode model to ONNX with a dynamic batch axis and the toolkit contract in its metadata."""

from __future__ import annotations

import os

from toolkit.contract import ModelContract
from toolkit.errors import ModelError

from .defaults import DEFAULT_OPSET

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTER = "torch.onnx.export(dynamo=False)"


def export_onnx(model, path: str | os.PathLike, contract: ModelContract, opset: int = DEFAULT_OPSET) -> None:
    """Export to ``path`` (caller handles atomicity), then embed ``contract`` as metadata_props."""
    import warnings

    import torch

    spec = contract.preprocess
    dummy = torch.zeros(2, *spec.input_shape)
    try:
        with warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated in favour of dynamo; it is 30x faster
            # for this model and its output is validated against the eager model regardless.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval(), (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
    except Exception as e:  # e.g. an opset this torch cannot target
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(path, f"torch.onnx.export failed at opset {opset}: {first[:200]}") from None
    embed_contract(path, contract)


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
        raise ModelError(path, f"onnx.checker rejected the exported graph: {str(e).strip()[:200]}") from None


def graph_opset(path: str | os.PathLike) -> int:
    """The default-domain opset the file really declares (the quantizer may raise it)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def contract_for(loaded, opset: int, precision: str = "float32", exporter: str = EXPORTER,
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
    )
