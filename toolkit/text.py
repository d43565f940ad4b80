"""Text from outside (file names, class names, error messages) made safe to print on a terminal.

A file name may hold ESC sequences that recolour or rewrite the terminal, a carriage return
that overwrites the line, newlines that forge extra lines, bidi overrides that reorder what is
shown, or bytes that are not UTF-8 (kept by Python as lone surrogates, which would not even
encode). Each such character is shown as a visible escape instead (``\\x1b``, ``\\r``, ``\\u202e``,
``\\xff`` for a raw byte); everything else passes unchanged.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, bidi embeddings/overrides/isolates, line/paragraph separators, surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    c = match.group()
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text) -> str:
    """``text`` (anything str() accepts) with every control/bidi/undecodable character escaped."""
    return _UNSAFE.sub(_escape, str(text))


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first line, at most ``limit`` characters (its type's name when it has no text): enough to
    name the problem in one line, without a C++ backtrace or a library's multi-line dump."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


# ONNX Runtime's message decorations: "[ONNXRuntimeError] : 1 : FAIL : ", "Load model from X failed:",
# a C++ source location ("/onnxruntime_src/.../model.cc:256 " or "tensorprotoutils.cc:434 ") and the C++
# signature or function name that follows it.
_ORT_CODE = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_LOAD_FAILED = re.compile(r"^Load model from .*? failed:\s*")
_SOURCE_LOCATION = re.compile(r"(?:^|(?<=\s))\S+\.(?:cc|cpp|h|hpp):\d+\s+")
MESSAGE_LIMIT = 1000  # a sentence, however long; never pages of a dump


_CPP_NAME = re.compile(r"[\w:<>,&*~ ]*::[\w:<>,&*~ ]*|[A-Za-z_]\w*")  # what precedes a signature's "("
_FUNCTION_NAME = re.compile(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+ ")  # a bare CamelCase name: ValidateFromDir


def _skip_signature(text: str) -> str:
    """``text`` without the C++ signature (``void ns::f(const std::map<a, b>&, int) rest`` -> ``rest``) or bare
    function name (``ValidateExternalDataPathFromDir rest`` -> ``rest``) that follows a source location."""
    if m := _FUNCTION_NAME.match(text):
        return text[m.end():]
    start = text.find("(")
    if start < 0 or not _CPP_NAME.fullmatch(text[:start]):
        return text
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[i + 1:].lstrip().removeprefix("const ").lstrip()
    return text


def runtime_reason(e: BaseException) -> str:
    """The first meaningful line of a runtime's (ONNX Runtime's, onnx's) error message, whole: without its
    error-code prefix, C++ source locations and signatures, which say where the runtime failed, not why."""
    for line in str(e).strip().splitlines():
        text = _LOAD_FAILED.sub("", _ORT_CODE.sub("", line.strip()))
        while (m := _SOURCE_LOCATION.search(text)) is not None:
            text = text[:m.start()] + _skip_signature(text[m.end():])
        text = text.strip()
        if text:
            return text[:MESSAGE_LIMIT]
    return type(e).__name__
