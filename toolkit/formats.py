"""The export formats, one row each: the only place a format's name, file suffix, kind and the code that writes,
validates and times it are stated. Export (defaults, suffixes, dispatch), the parity gate, bench (its engines and
``--formats``), inspect, the CLI help texts and the README's format table are all derived from FORMATS.

Edge core: nothing here imports torch or the torch side. The exporter, the parity runner and the torch engines
are named by "package.module:attribute" strings and imported by ``load`` only when they are used, by the torch
side or the CLI (tests/test_layers.py checks the static imports; docs/export.md shows how to add a format).
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass

KINDS = {"float": "float32", "int8": "int8", "fp16": "float16"}  # kind -> the precision a file's contract states
_EXPORT = "toolkit.export."
_ORT = "toolkit.bench.ort_engines:"


@dataclass(frozen=True)
class Format:
    name: str  # the one name: export --formats, the export report, bench engines and --formats, inspect
    suffix: str  # the file is <stem><suffix>
    kind: str  # a key of KINDS: float formats pass the logit gate, the others the accuracy gate
    what: str  # a few words for the help texts and the README table
    exporter: str  # "module:function" (torch side) taking an export.job.Job, returning an export.job.Written
    runtime: str  # what the parity gate loads the written file with, in words
    validator: str  # "module:function" (torch side): path -> a runner, numpy in, numpy out
    engine: str  # "module:Class" of the bench engine that times this file (it takes this row's name)
    container: str  # what toolkit.inspect.identify finds in the file: "onnx", "torchscript", "pt2", "executorch"
    extra: str = "train"  # the pip extra (pyproject.toml) that brings ``modules``
    modules: tuple[str, ...] = ()  # what must be importable to write it, checked without importing
    made_from: str | None = None  # a variant made from that format's file, judged on accuracy against it
    default: bool = False  # written by a plain `toolkit export`
    aliases: tuple[str, ...] = ()  # earlier names, still accepted with a deprecation warning

    @property
    def precision(self) -> str:
        return KINDS[self.kind]

    @property
    def install(self) -> str:
        return f"pip install 'toolkit[{self.extra}]'"


_ONNX_MODULES = ("onnx", "onnxscript")  # the default (dynamo) ONNX exporter; legacy needs no onnxscript
# name, suffix, kind, what; exporter, runtime, validator; bench engine, container; then the keywords.
FORMATS = (
    Format("onnx", ".onnx", "float", "ONNX, opset 18 by default, written by the --onnx-exporter",
           _EXPORT + "onnx_export:export", "ONNX Runtime, contract checked", _EXPORT + "parity:onnx_runner",
           _ORT + "OrtEngine", "onnx", modules=_ONNX_MODULES, default=True, aliases=("ort",)),
    Format("int8", ".int8.onnx", "int8", "ONNX Runtime dynamic quantization of the onnx file, also --int8",
           _EXPORT + "quantize:export_dynamic", "ONNX Runtime", _EXPORT + "parity:onnx_runner",
           _ORT + "OrtFileEngine", "onnx", modules=_ONNX_MODULES, made_from="onnx", aliases=("onnx-int8", "ort-int8")),
    Format("int8-static", ".int8-static.onnx", "int8", "static INT8, QDQ calibrated on 1,024 training images",
           _EXPORT + "quantize:export_static", "ONNX Runtime", _EXPORT + "parity:onnx_runner",
           _ORT + "OrtFileEngine", "onnx", modules=_ONNX_MODULES, made_from="onnx",
           aliases=("onnx-int8-static", "ort-int8-static")),
    Format("fp16", ".fp16.onnx", "fp16", "float16 weights and compute, float32 in and out",
           _EXPORT + "fp16:export", "ONNX Runtime", _EXPORT + "parity:onnx_runner",
           _ORT + "OrtFileEngine", "onnx", modules=(*_ONNX_MODULES, "onnxconverter_common"), made_from="onnx",
           aliases=("onnx-fp16", "ort-fp16")),
    Format("torchscript", ".pt", "float", "TorchScript, torch.jit.script",
           _EXPORT + "torchscript_export:export", "torch.jit.load", _EXPORT + "parity:torchscript_runner",
           _EXPORT + "bench_engines:TorchScriptEngine", "torchscript", default=True),
    Format("pt2", ".pt2", "float", "a torch.export program",
           _EXPORT + "pt2_export:export", "torch.export.load", _EXPORT + "parity:pt2_runner",
           _EXPORT + "bench_engines:Pt2Engine", "pt2"),
    Format("executorch", ".pte", "float", "an ExecuTorch program, XNNPACK delegate",
           _EXPORT + "executorch_export:export", "executorch.runtime", _EXPORT + "executorch_export:executorch_runner",
           _EXPORT + "bench_engines:ExecuTorchEngine", "executorch", extra="executorch", modules=("executorch",)),
)
BY_NAME = {f.name: f for f in FORMATS}
NAMES = tuple(BY_NAME)
DEFAULTS = tuple(f.name for f in FORMATS if f.default)
ALIASES = {alias: f.name for f in FORMATS for alias in f.aliases}


def canonical(name: str, warn=None) -> str:
    """The one name of the format ``name`` names; an earlier name is accepted with a one-line deprecation warning
    (``warn(message)``, default a DeprecationWarning). Any other name comes back unchanged for the caller to judge."""
    new = ALIASES.get(name)
    if new is None:
        return name
    message = f"'{name}' is an old name of the {new} format, accepted for now; use '{new}'"
    if warn is None:
        warnings.warn(message, DeprecationWarning, stacklevel=3)
    else:
        warn(message)
    return new


def get(name: str) -> Format:
    """The row of ``name`` (an earlier name warns); ValueError naming the known formats otherwise."""
    row = BY_NAME.get(canonical(name))
    if row is None:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(NAMES)}")
    return row


def missing(row: Format, onnx_exporter: str = "dynamo") -> str | None:
    """Why ``row`` cannot be written here, with the install command; None when it can (nothing is imported)."""
    modules = [m for m in row.modules if not (m == "onnxscript" and onnx_exporter == "legacy")]
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(absent)}: {row.install}" if absent else None


def of_file(name: str, container: str) -> Format | None:
    """The format a file is, by its name and what its content was found to be: model.int8.onnx holding ONNX is int8;
    None when no row fits (an ONNX file called weights.bin)."""
    rows = [f for f in FORMATS if f.container == container and name.endswith(f.suffix)]
    return max(rows, key=lambda f: len(f.suffix), default=None)


def load(reference: str):
    """The object a "package.module:attribute" reference of a row names, imported now."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def markdown_table() -> str:
    """The README's table of formats (tests/test_formats.py checks that README.md holds exactly this)."""
    rows = ["| format | file | kind | what | validated by | needs |", "|---|---|---|---|---|---|"]
    for f in FORMATS:
        kind = f.precision + (f", made from {f.made_from}, judged on accuracy" if f.made_from else ", logit parity")
        name = f"`{f.name}`" + (" (default)" if f.default else "")
        rows.append(f"| {name} | `<stem>{f.suffix}` | {kind} | {f.what} | {f.runtime} | `{f.install}` |")
    return "\n".join(rows)
