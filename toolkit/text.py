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
