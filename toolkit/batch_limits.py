"""The batch sizes a model can really be run at: what its input needs in memory, and what its graph accepts.

A graph is untrusted input. It may declare a 100,000 x 100,000 input (40 GB per image in float32), or take
4096 x 4096 images that, 256 to a batch, need 17 GB before ONNX Runtime even starts: the rows one run may take
are computed from the bytes one image needs against the memory that is free (toolkit.machine.available_memory:
MemAvailable, capped by a cgroup's memory.max), before anything is allocated. A batch is shrunk to fit; a
model whose single image does not fit is refused in one line.

A graph may also run only at some batch sizes although its batch dimension is dynamic (a Reshape to [8, -1]
behind it): a probe run at open, on zeros, finds a size that works (1 and 2 working means any size does;
otherwise the powers of two up to PROBE_SIZES[-1]), and the model is then run in chunks of that size, the
last padded, as a graph exported with a fixed batch is.
"""

from __future__ import annotations

import numpy as np

from .errors import ModelError, RunFailed, RunInterrupted, RunTimeout
from .machine import available_memory

MEMORY_SHARE = 0.5  # of the free memory, for one batch's arrays (the rest: ORT's activations, decoding, others)
INPUT_COPIES = 3  # the float32 input, ONNX Runtime's copy of it, activations of the same order
PROBE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def gigabytes(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def row_bytes(input_shape, pixel_shape) -> int:
    """Bytes one image costs in a batch: its uint8 pixels and INPUT_COPIES float32 inputs of the model's shape."""
    values = int(np.prod([int(d) for d in input_shape[1:]], dtype=np.float64))
    return int(np.prod([int(d) for d in pixel_shape], dtype=np.float64)) + INPUT_COPIES * 4 * values


def rows_that_fit(path, input_shape, pixel_shape, available: int | None = None) -> int | None:
    """The most images one batch may hold in the free memory (None: unknown here, no limit), or ModelError when
    not even one fits."""
    available = available_memory() if available is None else available
    if available is None:
        return None
    per_row = row_bytes(input_shape, pixel_shape)
    rows = int(available * MEMORY_SHARE // max(1, per_row))
    if rows < 1:
        shape = "x".join(str(d) for d in input_shape[1:])
        values = int(np.prod([int(d) for d in input_shape[1:]], dtype=np.float64))
        raise ModelError(path, f"its input is {shape} float32 per image ({gigabytes(4 * values)}); one image needs "
                               f"about {gigabytes(per_row)} of memory with ONNX Runtime's copies, but "
                               f"{gigabytes(available)} is available")
    return rows


def accepted_batch(guard, names: tuple[str, str], row_shape, fixed: int | None, max_rows: int | None,
                   limit: float | None) -> int | None:
    """The batch size the graph must be run at (None: any size works).

    ``names``: (input, output); ``row_shape``: one image's input shape; ``fixed``: the graph's declared batch
    (then nothing is probed). Probe runs are on zeros, each bounded by ``limit`` seconds.
    """
    if fixed is not None:
        return fixed
    sizes = [n for n in PROBE_SIZES if max_rows is None or n <= max_rows]
    reasons = {}
    for n in sizes:
        ok = _probe(guard, names, row_shape, n, limit, reasons)
        if ok and n == 1:
            if len(sizes) < 2 or _probe(guard, names, row_shape, 2, limit, reasons):
                return None
            return 1
        if ok:
            return n
    raise ModelError(guard.model, f"the model fails on the probe run at batch 1 ({reasons[1]}), and at every "
                                  f"other batch size tried ({', '.join(str(n) for n in sizes[1:])})")


def _probe(guard, names, row_shape, n: int, limit, reasons: dict) -> bool:
    x = np.zeros((n, *row_shape), dtype=np.float32)
    try:
        out = guard.run([names[1]], {names[0]: x}, limit=limit, what="the probe run")[0]
    except (RunTimeout, RunInterrupted):
        raise
    except RunFailed as e:
        reasons[n] = getattr(e, "detail", None) or e.reason
        return False
    if getattr(out, "ndim", 0) < 1 or len(out) != n:
        reasons[n] = f"it returned {len(out) if getattr(out, 'ndim', 0) else 'no'} rows for {n} images"
        return False
    return True
