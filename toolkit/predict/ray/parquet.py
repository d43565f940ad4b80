"""-o NAME.parquet with --engine ray: a directory of Parquet files whose rows are made and written on the cluster.

The model's outputs are materialised once (Ray's object store, spilled to disk when large): Ray Data's
write_parquet writes the rows from them into the hidden sibling directory of ``atomic.atomic_folder``, and the
driver then records counts, accuracy and the skipped files from the same blocks. The directory takes its name
when the run ends; an interrupted run keeps none (its rows are in no set order: no prefix can be kept).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ...atomic import check_parent_writable
from ...errors import OutputError
from ..output import row_columns
from ..results import score


def check_parquet_output(path, *, force: bool) -> Path:
    """-o NAME.parquet: a directory that must not exist yet (or --force), in a writable folder."""
    path = Path(path)
    if os.path.lexists(path) and not force:
        raise OutputError(path, "already exists; pass --force to replace it")
    check_parent_writable(path)
    return path


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
        shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self) -> None:
        pass
