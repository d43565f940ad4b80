"""The contract an exported ONNX file carries in its metadata_props.

Everything a runtime needs to use the model correctly is in the file itself:
input name/shape/dtype, preprocessing, class labels, provenance. Values are
strings (ONNX metadata is string->string); structured ones are JSON.
Reading needs only onnxruntime (``session.get_modelmeta().custom_metadata_map``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import ModelError
from .preprocess import PreprocessSpec

CONTRACT_VERSION = "1"
KEY_PREFIX = "toolkit."
OUTPUT_KINDS = ("logits", "probabilities")


@dataclass
class ModelContract:
    input_name: str
    input_shape: list  # e.g. ["batch", 1, 28, 28]
    input_dtype: str  # "float32"
    output_name: str
    classes: list[str]
    preprocess: PreprocessSpec
    source_sha256: str = ""
    torch_version: str = ""
    onnx_version: str = ""
    opset: int = 0
    exporter: str = ""
    precision: str = "float32"
    flops_per_image: int | None = None  # multiply-adds x2 per image, counted by export; None in older files
    # "probabilities" when the graph ends in a softmax (never applied twice); older files: logits
    output_kind: str = "logits"
    extra: dict = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        p = KEY_PREFIX
        meta = {
            p + "contract_version": CONTRACT_VERSION,
            p + "input_name": self.input_name,
            p + "input_shape": json.dumps(self.input_shape),
            p + "input_dtype": self.input_dtype,
            p + "output_name": self.output_name,
            p + "classes": json.dumps(self.classes),
            p + "preprocess": self.preprocess.to_json(),
            p + "source_sha256": self.source_sha256,
            p + "torch_version": self.torch_version,
            p + "onnx_version": self.onnx_version,
            p + "opset": str(self.opset),
            p + "exporter": self.exporter,
            p + "precision": self.precision,
            p + "output_kind": self.output_kind,
        }
        if self.flops_per_image is not None:
            meta[p + "flops_per_image"] = str(self.flops_per_image)
        for k, v in self.extra.items():
            meta[p + k] = v if isinstance(v, str) else json.dumps(v)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path) -> "ModelContract":
        p = KEY_PREFIX
        if not has_contract(meta):
            raise ModelError(path, "has no toolkit metadata (input contract, preprocessing, classes); "
                                   "export it with `toolkit export`")
        try:
            known = {"contract_version", "input_name", "input_shape", "input_dtype", "output_name", "classes",
                     "preprocess", "source_sha256", "torch_version", "onnx_version", "opset", "exporter",
                     "precision", "flops_per_image", "output_kind"}
            contract = cls(
                input_name=meta[p + "input_name"],
                input_shape=json.loads(meta[p + "input_shape"]),
                input_dtype=meta[p + "input_dtype"],
                output_name=meta[p + "output_name"],
                classes=[str(c) for c in json.loads(meta[p + "classes"])],
                preprocess=PreprocessSpec.from_dict(json.loads(meta[p + "preprocess"])),
                source_sha256=meta.get(p + "source_sha256", ""),
                torch_version=meta.get(p + "torch_version", ""),
                onnx_version=meta.get(p + "onnx_version", ""),
                opset=int(meta.get(p + "opset", "0") or 0),
                exporter=meta.get(p + "exporter", ""),
                precision=meta.get(p + "precision", "float32"),
                flops_per_image=int(meta[p + "flops_per_image"]) if p + "flops_per_image" in meta else None,
                output_kind=meta.get(p + "output_kind", "logits"),
                extra={k[len(p):]: v for k, v in meta.items() if k.startswith(p) and k[len(p):] not in known},
            )
            if contract.output_kind not in OUTPUT_KINDS:
                raise ValueError(f"output_kind {contract.output_kind!r}")
            return contract
        except (KeyError, ValueError, TypeError) as e:
            raise ModelError(path, f"toolkit metadata is malformed ({type(e).__name__}: {e})") from None


def has_contract(meta: dict[str, str]) -> bool:
    return KEY_PREFIX + "contract_version" in meta


def decode_metadata(props: dict[str, str]) -> dict:
    """Any file's metadata for display: toolkit keys without their prefix, JSON objects and lists decoded."""
    out = {}
    for key, value in sorted(props.items()):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = value
        out[key.removeprefix(KEY_PREFIX)] = decoded if isinstance(decoded, (dict, list)) else value
    return out
