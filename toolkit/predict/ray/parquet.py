"""-o NAME.parquet with --engine ray: a directory of Parquet files whose rows are made and written on the cluster.

The model's outputs are materialised once (Ray's object store, spilled to disk when large): Ray Data's
write_parquet writes the rows from them into the hidden sibling directory of ``atomic.atomic_folder``, and the
driver then records counts, accuracy and the skipped files from the same blocks. The directory takes its name
when the run ends; an interrupted run keeps none (its rows are in no set order: no prefix can be kept).

--force replaces only what an earlier run wrote: a real directory holding Ray's part files and the manifest
(MANIFEST) naming them, nothing else. Anything more (images, a subfolder, a file the manifest does not name) or
a symbolic link is refused before any work, and checked again just before the old directory is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ...atomic import check_parent_writable
from ...errors import OutputError
from ..output import row_columns
from ..results import score


# Written last into the directory; a leading "_" makes Parquet readers (pyarrow, Ray, Spark) pass it over.
MANIFEST = "_toolkit_predict.json"


def check_parquet_output(path, *, force: bool) -> Path:
    """-o NAME.parquet: a directory that must not exist yet (or, with --force, one an earlier run wrote), in a
    writable folder."""
    path = Path(path)
    if os.path.lexists(path):
        reason = not_an_earlier_output(path)
        if reason:
            raise OutputError(path, f"{reason}; --force replaces only a Parquet directory toolkit predict wrote, "
                                    "so nothing is removed: choose another output name")
        if not force:
            raise OutputError(path, "already exists; pass --force to replace it")
    check_parent_writable(path)
    return path


def not_an_earlier_output(path: Path) -> str | None:
    """None when ``path`` is a Parquet directory a predict run wrote (its part files and manifest, nothing else);
    otherwise what it is instead."""
    if path.is_symlink():
        return f"is a symbolic link (to {os.readlink(path)})"
    if not path.is_dir():
        return "exists and is not a directory"
    try:
        names = {p.name for p in path.iterdir()}
        written = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"is a directory without the {MANIFEST} a predict run writes (not its output)"
    if not isinstance(written, list):
        return f"is a directory whose {MANIFEST} is not a predict run's"
    foreign = sorted(names - {MANIFEST} - set(map(str, written)))
    if foreign:
        return f"holds {len(foreign)} entry(ies) no predict run wrote (e.g. {foreign[0]})"
    odd = [n for n in names - {MANIFEST} if not (path / n).is_file() or (path / n).is_symlink()]
    if odd:
        return f"holds {odd[0]}, which is not a part file"
    return None


def refuse_inputs_inside(path: Path, paths, files: list[str]) -> None:
    """--force may replace an earlier output, never a tree that holds this run's inputs (given paths or the
    folders of the files found)."""
    if not os.path.lexists(path):
        return
    root = Path(os.path.realpath(path))
    local = [os.fspath(p) for p in paths if "://" not in os.fspath(p)]
    folders = dict.fromkeys(local + [os.path.dirname(f) or "." for f in files if "://" not in f])
    for folder in folders:
        if Path(os.path.realpath(folder)).is_relative_to(root):
            raise OutputError(path, f"holds this run's inputs ({folder}); an output never replaces its inputs: "
                                    "choose another output name")


def parquet_rows(batch: dict, classes: list[str], top_k: int, output_kind: str):
    """Cluster side of a Parquet output: the rows the CSV would hold (output.row_columns), as an Arrow table.

    Files that were skipped (a decoding reason, or NaN/Inf from the model) have no row, as in the CSV.
    """
    import pyarrow as pa

    logits = batch["logits"]
    keep = np.array([not r for r in batch["reason"]], dtype=bool) & np.isfinite(logits).all(axis=1)
    probs, top = score(logits[keep], output_kind, top_k)
    paths = [os.fsdecode(bytes(p)) for p in batch["path"][keep]]
    expected = [e or None for e in batch["expected"][keep].tolist()]
    cols = row_columns(paths, expected, probs, top, batch["blank"][keep], classes)
    return pa.table({k: pa.array(v, type=_parquet_type(k)) for k, v in cols.items()})


def _parquet_type(column: str):
    import pyarrow as pa

    if column == "blank":
        return pa.bool_()
    return pa.float64() if column == "confidence" or column.endswith("_prob") else pa.string()


class ParquetSink:
    """The run's view of the Parquet output: the engine writes into ``folder``; rows are counted here."""

    keeps_partial = False
    discarded = "a partial Parquet directory is never kept (its rows are in no set order)"

    def __init__(self, folder: Path):
        self.folder, self.rows = folder, 0

    def write(self, paths, expected, probs, top, blank) -> None:
        self.rows += len(paths)

    def discard(self) -> None:
        self._discarded = True
        shutil.rmtree(self.folder, ignore_errors=True)

    def sweep(self) -> None:
        """After Ray stopped: a task still running when the run was interrupted may have written a part file
        into the discarded directory (remaking it); nothing of a discarded output is left."""
        if getattr(self, "_discarded", False):
            shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self) -> None:
        """The manifest that lets a later --force know this directory for a predict run's output."""
        if self.folder.is_dir():
            parts = sorted(p.name for p in self.folder.iterdir() if p.name != MANIFEST)
            (self.folder / MANIFEST).write_text(json.dumps({"written_by": "toolkit predict", "rows": self.rows,
                                                            "files": parts}, indent=2) + "\n", encoding="utf-8")
