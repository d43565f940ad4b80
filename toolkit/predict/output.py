"""Result files of `toolkit predict`: CSV/JSONL rows and the confusion-matrix PNG.

Rows are written while the run goes on, into the hidden temporary file of
``toolkit.atomic.atomic_file`` beside the destination (``.NAME.XXXX.part``), flushed
after every batch. The file takes its final name when the run ends, and also when it
is interrupted (Ctrl-C/SIGTERM): it is then cut back to the last complete batch, so it
always holds a header plus whole rows, never half a line. A fatal error removes it and
leaves any older file alone.

CSV follows RFC 4180 (lines end in CRLF, so a CR or LF inside a file name is always quoted) and
every name round-trips through Python's csv reader, bytes that are not UTF-8 included. ``path`` is
always the exact name; ``path_display`` is the same name with a leading ``'`` when it starts with
= + - @ tab or CR, which a spreadsheet would otherwise run as a formula (OWASP's CSV injection
advice): open that column in a spreadsheet, feed ``path`` to programs.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, check_writable
from ..errors import OutputError

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
# A directory of Parquet files written on the cluster by Ray Data (--engine ray only; docs/scale.md).
PARQUET = ".parquet"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(path, "unknown output format; the name must end in .csv or .jsonl"
                                + (" (.parquet is written by --engine ray only)" if suffix == PARQUET else ""))
    return FORMATS[suffix]


def default_confusion_path(output: str | os.PathLike) -> Path:
    """results.csv -> results.confusion.png, beside it."""
    output = Path(output)
    return output.with_name(output.stem + ".confusion.png")


def check_output(path, *, force: bool) -> Path:
    output_format(path)
    return check_writable(path, force=force)


def csv_header(top_k: int) -> list[str]:
    cols = ["path", "label", "confidence", "expected", "blank"]
    for i in range(1, top_k + 1):
        cols += [f"top{i}_label", f"top{i}_prob"]
    return cols + ["path_display"]


def row_columns(paths: list[str], expected: list[str | None], probs: np.ndarray, top: np.ndarray,
                blank: np.ndarray, classes: list[str]) -> dict[str, list]:
    """The CSV's columns with typed values, as JSONL has them (for Parquet): probabilities rounded to 6 places;
    a blank image's label, confidence and top-k are null; no folder label is a null ``expected``.

    Parquet strings are UTF-8: a name that is not (surrogate-escaped bytes) has those bytes replaced by U+FFFD.
    """
    paths = [p.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for p in paths]
    top_rows, prob_rows, blank_rows = top.tolist(), probs.tolist(), blank.tolist()
    cols: dict[str, list] = {"path": paths, "label": [], "confidence": [], "expected": list(expected),
                             "blank": [bool(b) for b in blank_rows]}
    tops = [([], []) for _ in range(top.shape[1])]
    for best, p, empty in zip(top_rows, prob_rows, blank_rows):
        cols["label"].append(None if empty else classes[best[0]])
        cols["confidence"].append(None if empty else round(p[best[0]], 6))
        for (labels, values), j in zip(tops, best):
            labels.append(None if empty else classes[j])
            values.append(None if empty else round(p[j], 6))
    for i, (labels, values) in enumerate(tops, 1):
        cols[f"top{i}_label"], cols[f"top{i}_prob"] = labels, values
    cols["path_display"] = [spreadsheet_safe(p) for p in paths]
    return cols


def spreadsheet_safe(text: str) -> str:
    """OWASP: a cell a spreadsheet would evaluate as a formula gets a leading ' (shown, never run)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class ResultWriter:
    """Rows into an open binary file (``toolkit.atomic.atomic_file``), flushed after every batch."""

    keeps_partial = True  # an interrupted run keeps its whole rows (a prefix in input order)

    def __init__(self, file, fmt: str, classes: list[str], top_k: int):
        self.file, self.format, self.classes, self.top_k = file, fmt, list(classes), top_k
        self.rows = 0
        self._good = 0  # bytes that hold complete rows
        if fmt == "csv":
            self._emit(_csv_text([csv_header(top_k)]))

    def write(self, paths: list[str], expected: list[str | None], probs: np.ndarray, top: np.ndarray,
              blank: np.ndarray) -> None:
        """``blank[i]``: no ink in image i, so its row has no label, confidence or top-k (and blank true)."""
        classes = self.classes
        # Python lists: indexing numpy arrays element by element costs more than the formatting.
        top_rows, prob_rows, blank_rows = top.tolist(), probs.tolist(), blank.tolist()
        if self.format == "csv":
            rows = []
            for path, exp, best, p, empty in zip(paths, expected, top_rows, prob_rows, blank_rows):
                if empty:
                    rows.append([path, "", "", exp or "", "true"] + [""] * (2 * len(best))
                                + [spreadsheet_safe(path)])
                    continue
                row = [path, classes[best[0]], f"{p[best[0]]:.6f}", exp or "", "false"]
                for j in best:
                    row += (classes[j], f"{p[j]:.6f}")
                rows.append(row + [spreadsheet_safe(path)])
            text = _csv_text(rows)
        else:
            lines = []
            for path, exp, best, p, empty in zip(paths, expected, top_rows, prob_rows, blank_rows):
                lines.append(json.dumps({
                    "path": path, "label": None, "confidence": None, "expected": exp, "blank": True, "top_k": [],
                } if empty else {
                    "path": path, "label": classes[best[0]], "confidence": round(p[best[0]], 6), "expected": exp,
                    "blank": False, "top_k": [{"label": classes[j], "probability": round(p[j], 6)} for j in best],
                }))
            text = "\n".join(lines) + "\n" if lines else ""
        self._emit(text)
        self.rows += len(paths)

    def _emit(self, text: str) -> None:
        # surrogateescape: a file name that is not valid UTF-8 is written back as its original bytes.
        self.file.write(text.encode("utf-8", "surrogateescape"))
        self.file.flush()
        self._good = self.file.tell()

    def finish(self) -> None:
        """Keep only complete rows: an interrupt may have stopped a write half-way."""
        self.file.flush()
        self.file.truncate(self._good)


def _csv_text(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)  # RFC 4180: a lone CR or LF in a cell is quoted
    return buf.getvalue()


# ---------------------------------------------------------------- confusion matrix PNG

def write_confusion_png(path: str | os.PathLike, cm: np.ndarray, classes: list[str], title: str, *,
                        replace: bool = False) -> None:
    image = render_confusion(cm, classes, title)
    with atomic_path(path, replace=replace) as tmp:
        image.save(tmp, format="PNG")


def render_confusion(cm: np.ndarray, classes: list[str], title: str):
    """Rows are true labels, columns predictions; shade = share of the row, numbers = counts."""
    from PIL import Image, ImageDraw

    n = len(classes)
    cell = 44
    left, top, right, bottom = 86, 78, 20, 20
    width, height = left + n * cell + right, top + n * cell + bottom
    font, small = _font(15), _font(12)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    _centred(draw, (width // 2, 18), title, font, "black")
    _centred(draw, (left + n * cell // 2, 44), "predicted", small, "black")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    for i in range(n):
        _centred(draw, (left + i * cell + cell // 2, top - 12), classes[i], small, "black")
        _centred(draw, (left - 12, top + i * cell + cell // 2), classes[i], small, "black")
        for j in range(n):
            x, y = left + j * cell, top + i * cell
            s = float(share[i, j])
            # white -> deep blue with the row share; errors tinted red so they stand out
            colour = (int(255 - 205 * s), int(255 - 165 * s), 255) if i == j else (255, int(255 - 200 * s), int(255 - 200 * s))
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(210, 210, 210))
            if cm[i, j]:
                ink = "white" if s > 0.55 else "black"
                _centred(draw, (x + cell // 2, y + cell // 2), str(int(cm[i, j])), small, ink)
    label = Image.new("RGB", (n * cell, 20), "white")
    _centred(ImageDraw.Draw(label), (n * cell // 2, 10), "true label", small, "black")
    image.paste(label.rotate(90, expand=True), (8, top))
    return image


def _centred(draw, xy, text: str, font, fill) -> None:
    # Measured rather than anchored: Pillow's bitmap fallback font does not support anchors.
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0] - (x0 + x1) / 2, xy[1] - (y0 + y1) / 2), text, fill=fill, font=font)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
