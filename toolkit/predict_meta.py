"""Read an ONNX file's metadata_props without onnxruntime or onnx.

`toolkit predict` uses this to learn the preprocessing before onnxruntime is imported,
so the decoding workers (forked before ORT exists in the process) start on the images
while the main process is still importing ORT and building the session. The contract
is validated afterwards by ``runtime.read_contract`` on the real session; this reader
is only a head start, and anything it cannot read simply means no head start.

ONNX files are protobuf ``ModelProto`` messages; metadata_props is field 14, a repeated
``StringStringEntryProto`` (key = field 1, value = field 2). Only the top level is
walked, skipping the graph by its length prefix, so large models cost no more.
"""

from __future__ import annotations

import mmap
import os

_METADATA_FIELD = 14
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def read_metadata_props(path: str | os.PathLike) -> dict[str, str] | None:
    """The file's metadata as a dict, or None when it cannot be read as an ONNX model."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _scan(data)
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _scan(data) -> dict[str, str]:
    props: dict[str, str] = {}
    pos, end = 0, len(data)
    while pos < end:
        field, wire, pos = _key(data, pos)
        if wire == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("truncated field")
            if field == _METADATA_FIELD:
                key, value = _entry(bytes(data[pos:pos + length]))
                props[key] = value
            pos += length
        else:
            pos = _skip(data, wire, pos)
    if pos != end:
        raise ValueError("trailing bytes")
    return props


def _entry(data: bytes) -> tuple[str, str]:
    strings = {1: "", 2: ""}
    pos = 0
    while pos < len(data):
        field, wire, pos = _key(data, pos)
        if wire == _LEN:
            length, pos = _varint(data, pos)
            if field in strings:
                strings[field] = data[pos:pos + length].decode("utf-8")
            pos += length
        else:
            pos = _skip(data, wire, pos)
    return strings[1], strings[2]


def _key(data, pos: int) -> tuple[int, int, int]:
    key, pos = _varint(data, pos)
    if key >> 3 == 0:
        raise ValueError("field number 0")
    return key >> 3, key & 7, pos


def _skip(data, wire: int, pos: int) -> int:
    if wire == _VARINT:
        return _varint(data, pos)[1]
    if wire == _FIXED64:
        return pos + 8
    if wire == _FIXED32:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire}")


def _varint(data, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
