"""Protobuf wire-format reading, just enough to look inside an ONNX file without the onnx package.

The edge install has onnxruntime but not onnx; predict (metadata before ORT is imported)
and bench (FLOPs from weight shapes) each need a few fields of the ``ModelProto``.
"""

from __future__ import annotations

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


def read_varint(buf, i: int) -> tuple[int, int]:
    """(value, next index) of the varint starting at ``buf[i]``."""
    result = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def iter_fields(buf):
    """Yield (field_number, wire_type, value): int for varints, bytes for the other wire types.

    Raises ValueError on malformed input, including trailing partial fields.
    """
    i, n = 0, len(buf)
    while i < n:
        key, i = read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == VARINT:
            value, i = read_varint(buf, i)
        elif wire == LEN:
            length, i = read_varint(buf, i)
            if i + length > n:
                raise ValueError("truncated field")
            value = bytes(buf[i:i + length])
            i += length
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            if i + width > n:
                raise ValueError("truncated field")
            value, i = bytes(buf[i:i + width]), i + width
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value
