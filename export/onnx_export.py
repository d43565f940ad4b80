"""Write the eval-mode model to ONNX with a dynamic batch axis and the toolkit contract in its metadata."""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.contract import ModelContract

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17


def export_onnx(model, path: str | os.PathLike, contract: ModelContract, opset: int = DEFAULT_OPSET) -> None:
    """Export to ``path`` (caller handles atomicity), then embed ``contract`` as metadata_props."""
    import warnings

    import onnx
    import torch

    spec = contract.preprocess
    dummy = torch.zeros(2, *spec.input_shape)
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of dynamo; it is 30x faster
        # for this model and its output is validated against the eager model regardless.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in contract.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "toolkit"
    onnx.save(proto, str(path))


def contract_for(loaded, opset: int, precision: str = "float32") -> ModelContract:
    """The contract for a model rebuilt from ``loaded`` (a train.checkpoint.LoadedCheckpoint)."""
    import onnx
    import torch

    spec = loaded.preprocess
    return ModelContract(
        input_name=INPUT_NAME, input_shape=["batch", *spec.input_shape], input_dtype="float32",
        output_name=OUTPUT_NAME, classes=list(loaded.classes), preprocess=spec,
        source_sha256=loaded.sha256, torch_version=str(torch.__version__), onnx_version=onnx.__version__,
        opset=opset, exporter="torch.onnx.export(dynamo=False)", precision=precision,
    )
