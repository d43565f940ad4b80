"""Read an ONNX file's metadata_props without onnxruntime or onnx.

`toolkit predict` uses this to learn the preprocessing before onnxruntime is imported,
so the decoding workers (forked before ORT exists in the process) start on the images
while the main process is still importing ORT and building the session. The contract
is validated afterwards by ``runtime.read_contract`` on the real session; this reader
is only a head start, and anything it cannot read simply means no head start.

ONNX files are protobuf ``ModelProto`` messages; metadata_props is field 14, a repeated
``StringStringEntryProto`` (key = field 1, value = field 2). Only the top level is
walked; the graph is one length-prefixed field and is not parsed.
"""

from __future__ import annotations

import mmap
import os

from .protowire import LEN, iter_fields

_METADATA_FIELD = 14


def read_metadata_props(path: str | os.PathLike) -> dict[str, str] | None:
    """The file's metadata as a dict, or None when it cannot be read as an ONNX model."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return {k: v for k, v in (_entry(value) for number, wire, value in iter_fields(data)
                                      if number == _METADATA_FIELD and wire == LEN)}
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _entry(data: bytes) -> tuple[str, str]:
    strings = {1: "", 2: ""}
    for number, wire, value in iter_fields(data):
        if number in strings and wire == LEN:
            strings[number] = value.decode("utf-8")
    return strings[1], strings[2]
