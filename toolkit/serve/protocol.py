"""The Open Inference Protocol v2 (KServe v2) over HTTP/REST: requests in, responses out, nothing model-specific.

A request body is JSON, or, with the binary tensor data extension, a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors in input order
(each input's ``parameters.binary_data_size`` says how many bytes are its). BYTES tensors,
raw, are each element as a 4-byte little-endian length and that many bytes; in JSON an
image (not UTF-8) is sent base64-encoded.

Everything is checked before anything is allocated from it: a shape is multiplied in Python
integers and compared with the bytes or values actually present, so a shape claiming gigabytes
costs nothing; the body itself is bounded by the server (``--max-body``) before it gets here.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

# v2 datatype -> numpy dtype (BYTES is a list of bytes objects, not an array).
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64}
BYTES = "BYTES"
# More inputs or outputs than this in one request is hostile: a model here has one input.
MAX_TENSORS = 16
MAX_DIMS = 8
# BYTES elements in one tensor (image files: the served models take at most 1024 rows a request). Checked before
# they are split, which costs a Python object each: 3 million one-byte elements fit in the default --max-body.
MAX_BYTES_ELEMENTS = 1024
_LENGTH = struct.Struct("<I")


class ProtocolError(Exception):
    """A request the protocol refuses; ``status`` is the HTTP status (the gRPC code is derived from it)."""

    def __init__(self, message: str, status: int = 400, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: object  # np.ndarray of ``shape``, or a list of bytes for BYTES


@dataclass
class Requested:
    """An output the client asked for by name; ``binary``: return it raw (HTTP binary extension)."""

    name: str
    binary: bool


@dataclass
class InferRequest:
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Requested] | None = None  # None: the model's default outputs
    binary_default: bool = False  # request parameter binary_data_output
    timeout_s: float | None = None  # request parameter "timeout" (microseconds, as Triton's clients send it)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]


def elements(shape: list[int]) -> int:
    return math.prod(shape)


def check_shape(name: str, shape) -> list[int]:
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: shape must be a list of at most {MAX_DIMS} non-negative integers")
    return shape


def split_bytes(buf: memoryview, count: int, name: str) -> list[bytes]:
    """``count`` length-prefixed BYTES elements that must fill ``buf`` exactly."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(buf):
            raise ProtocolError(f"input {name!r}: BYTES data ends inside an element's length")
        (n,) = _LENGTH.unpack_from(buf, pos)
        pos += 4
        if pos + n > len(buf):
            raise ProtocolError(f"input {name!r}: BYTES element of {n} bytes runs past the data")
        out.append(bytes(buf[pos:pos + n]))
        pos += n
    if pos != len(buf):
        raise ProtocolError(f"input {name!r}: {len(buf) - pos} bytes left over after {count} BYTES elements")
    return out


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(b)) + b for b in items)


def _check_bytes_count(name: str, count: int) -> None:
    if count > MAX_BYTES_ELEMENTS:
        raise ProtocolError(f"input {name!r}: {count} BYTES elements; at most {MAX_BYTES_ELEMENTS} are read")


def raw_tensor(name: str, datatype: str, shape: list[int], buf: memoryview) -> object:
    count = elements(shape)
    if datatype == BYTES:
        _check_bytes_count(name, count)
        return split_bytes(buf, count, name)
    dtype = np.dtype(DTYPES[datatype])
    if len(buf) != count * dtype.itemsize:
        raise ProtocolError(f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                            f"the request has {len(buf)}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def json_tensor(name: str, datatype: str, shape: list[int], data) -> object:
    count = elements(shape)
    if datatype == BYTES:
        _check_bytes_count(name, count)
        flat = _flatten_strings(data, name, count)
        if len(flat) != count:
            raise ProtocolError(f"input {name!r}: shape {shape} holds {count} elements, data has {len(flat)}")
        return flat
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # an out-of-range value is refused just below
            array = np.asarray(data, dtype=DTYPES[datatype])
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"input {name!r}: data is not a (nested) list of {datatype} numbers") from None
    if array.size != count:
        raise ProtocolError(f"input {name!r}: shape {shape} holds {count} elements, data has {array.size}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # JSON has no NaN/Inf: a number past the range
        raise ProtocolError(f"input {name!r}: a value is out of {datatype}'s range")
    return array.reshape(shape)


def _flatten_strings(data, name: str, count: int) -> list[bytes]:
    """JSON BYTES elements: strings, base64 of the raw bytes (an image file is not text); decoding stops one past
    ``count`` (the shape's), enough to tell the mismatch."""
    stack, out = [data], []
    while stack and len(out) <= count:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            try:
                out.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise ProtocolError(f"input {name!r}: a BYTES element in JSON must be base64") from None
        else:
            raise ProtocolError(f"input {name!r}: BYTES data must be strings (base64)")
    return out


def _header_length(value: str | None, body_size: int) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > body_size:  # '²'.isdigit(), int('²') fails
        raise ProtocolError(f"Inference-Header-Content-Length {value[:40]!r} is not a length within the "
                            f"{body_size}-byte body")
    return int(value)


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """The request in ``body`` (HTTP), with ``header_length`` the Inference-Header-Content-Length header or None."""
    size = _header_length(header_length, len(body))
    head = body if size is None else body[:size]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"the request is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object")
    raw = memoryview(body)[len(head):]
    request = InferRequest(id=_text(doc.get("id", ""), "id"))
    params = _params(doc.get("parameters"), "request")
    request.binary_default = params.get("binary_data_output") is True
    request.timeout_s = _timeout(params.get("timeout"))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request needs a non-empty list 'inputs'")
    if len(inputs) > MAX_TENSORS:
        raise ProtocolError(f"{len(inputs)} inputs; at most {MAX_TENSORS} are read")
    pos = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise ProtocolError("each input must be a JSON object")
        name = _text(item.get("name"), "input name")
        datatype = item.get("datatype")
        if datatype != BYTES and datatype not in DTYPES:
            raise ProtocolError(f"input {name!r}: unknown datatype {str(datatype)[:20]!r}")
        shape = check_shape(name, item.get("shape"))
        size_param = _params(item.get("parameters"), f"input {name!r}").get("binary_data_size")
        if size_param is not None:
            if not isinstance(size_param, int) or size_param < 0 or pos + size_param > len(raw):
                raise ProtocolError(f"input {name!r}: binary_data_size {str(size_param)[:20]} runs past the "
                                    f"{len(raw)} bytes of binary data (truncated request?)")
            data = raw_tensor(name, datatype, shape, raw[pos:pos + size_param])
            pos += size_param
        elif "data" in item:
            data = json_tensor(name, datatype, shape, item["data"])
        else:
            raise ProtocolError(f"input {name!r}: neither 'data' nor parameters.binary_data_size")
        request.inputs.append(Tensor(name, datatype, shape, data))
    if pos != len(raw):
        raise ProtocolError(f"{len(raw) - pos} bytes of binary data after the inputs' binary_data_size")
    if (outputs := doc.get("outputs")) is not None:
        if not isinstance(outputs, list) or len(outputs) > MAX_TENSORS:
            raise ProtocolError(f"'outputs' must be a list of at most {MAX_TENSORS} objects")
        request.outputs = []
        for item in outputs:
            if not isinstance(item, dict):
                raise ProtocolError("each requested output must be a JSON object")
            name = _text(item.get("name"), "output name")
            binary = _params(item.get("parameters"), f"output {name!r}").get("binary_data", request.binary_default)
            request.outputs.append(Requested(name, binary is True))
    return request


def _text(value, what: str) -> str:
    if not isinstance(value, str) or len(value) > 256:
        raise ProtocolError(f"{what} must be a string of at most 256 characters")
    return value


def _params(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: parameters must be a JSON object")
    return value


def _timeout(value) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError("parameter 'timeout' must be a non-negative integer (microseconds)")
    return value / 1e6 if value else None


def encode_infer(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): outputs asked binary go raw after the JSON header."""
    binary = {r.name: r.binary for r in request.outputs} if request.outputs is not None else {}
    tensors, raws = [], []
    for t in response.outputs:
        entry = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary.get(t.name, request.binary_default):
            raw = join_bytes(t.data) if t.datatype == BYTES else np.ascontiguousarray(t.data).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        elif t.datatype == BYTES:
            entry["data"] = [b.decode("utf-8", "replace") for b in t.data]
        else:
            entry["data"] = np.ascontiguousarray(t.data).reshape(-1)
            if entry["data"].dtype.kind == "f" and not np.isfinite(entry["data"]).all():
                raise ProtocolError(f"output {t.name!r} holds NaN or Inf, which JSON cannot carry (it would read "
                                    "null); ask for it binary (parameters.binary_data)", 500)
        tensors.append(entry)
    doc = {"model_name": response.model_name, "model_version": response.model_version, "outputs": tensors}
    if response.id:
        doc["id"] = response.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return head, None
    return b"".join([head, *raws]), len(head)
