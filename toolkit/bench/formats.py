"""`toolkit bench --formats`: one table comparing every exported file of a checkpoint.

Per engine: its file and size, accuracy on the MNIST test set computed through that engine's own runtime,
the largest |logit difference| from eager torch on the same images, batch-1 p50 latency and batch-1024
throughput from the bench run, and both as ratios to eager. Timing comes from ``run_bench`` (the same
cases as any bench run); accuracy from a separate pass that opens each engine again, so no timed run
ever includes the accuracy work. The test images come from the caller (the CLI loads MNIST): this
module stays in the edge core and imports neither torch nor the torch side.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from .document import BenchReport
from .engine import Engine

ACCURACY_CHUNK = 1024  # images per call in the accuracy pass (ExecuTorch's planned buffers hold 1024)
REFERENCE = "eager"
BASELINE = "onnx"  # the float32 ONNX file in ONNX Runtime: what the other formats are measured against


@dataclass
class FormatRow:
    engine: str
    file: str
    size_bytes: int | None
    precision: str
    accuracy: float | None = None
    max_abs_logit_diff: float | None = None  # against eager torch, over the test set
    batch1_p50_ms: float | None = None
    batch_large_ips: float | None = None
    batch1_p50_vs_eager: float | None = None  # < 1: lower latency than eager
    throughput_vs_eager: float | None = None  # > 1: more images/s than eager
    throughput_vs_onnx: float | None = None  # > 1: more images/s than the float32 onnx file in ONNX Runtime
    note: str = ""


@dataclass
class FormatsTable:
    command: str
    created: str
    machine: str
    threads: int
    load_average_1m: dict
    large_batch: int
    test_images: int
    rows: list[FormatRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_pass(engines: Mapping[str, type[Engine]], names, model, x: np.ndarray, threads: int) -> dict:
    """Outputs of each named engine on ``x`` (preprocessed test images), opened on the CPU: name -> logits."""
    outputs = {}
    for name in names:
        engine = engines[name](model)
        engine.prepare()
        instance = engine.open("cpu", threads, {})
        try:
            outputs[name] = np.concatenate([np.asarray(instance.predict(x[i:i + ACCURACY_CHUNK]), dtype=np.float32)
                                            for i in range(0, len(x), ACCURACY_CHUNK)])
        finally:
            instance.close()
    return outputs


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def build_table(report: BenchReport, outputs: dict, labels: np.ndarray) -> FormatsTable:
    """Rows in the report's engine order; ratios only where eager and onnx were measured in the same run."""
    cpu = [r for r in report.results if r.provider == "cpu" and r.mode == "e2e"]
    large = max((r.batch for r in cpu), default=0)

    def stat(engine, batch, attr):
        row = next((r for r in cpu if r.engine == engine and r.batch == batch), None)
        if row is None:
            return None
        return row.latency_ms.p50 if attr == "p50" else row.throughput_ips

    env = report.environment
    table = FormatsTable(command=report.command, created=report.created,
                         machine=f"{env['cpu']['model']}, {env['cpu']['usable_cpus']} usable CPUs",
                         threads=env["threads"], load_average_1m=env.get("load_average_1m") or {}, large_batch=large,
                         test_images=int(len(labels)))
    ref = outputs.get(REFERENCE)
    eager_p50, eager_ips = stat(REFERENCE, 1, "p50"), stat(REFERENCE, large, "ips")
    onnx_ips = stat(BASELINE, large, "ips")
    for run in report.engines:
        if run.provider != "cpu":
            continue
        row = FormatRow(engine=run.engine, file=run.file, size_bytes=_size(run.file), precision=run.precision,
                        batch1_p50_ms=stat(run.engine, 1, "p50"), batch_large_ips=stat(run.engine, large, "ips"))
        out = outputs.get(run.engine)
        if out is not None:
            row.accuracy = float((out.argmax(1) == labels).mean())
            if ref is not None:
                row.max_abs_logit_diff = float(np.abs(out.astype(np.float64) - ref).max())
        if eager_p50 and row.batch1_p50_ms:
            row.batch1_p50_vs_eager = row.batch1_p50_ms / eager_p50
        if eager_ips and row.batch_large_ips:
            row.throughput_vs_eager = row.batch_large_ips / eager_ips
        if onnx_ips and row.batch_large_ips:
            row.throughput_vs_onnx = row.batch_large_ips / onnx_ips
        if run.engine == "openvino":
            row.note = f"OpenVINO inference precision: {run.config.get('inference_precision')}"
        table.rows.append(row)
    table.skipped = [f"{s.engine}: {s.reason}" + (f" (batch {', '.join(map(str, s.batch_sizes))})"
                                                   if s.batch_sizes else "") for s in report.skipped]
    return table


COLUMNS = ("engine", "file", "size", "precision", "accuracy", "max |Δlogit| vs eager", "batch-1 p50",
           "batch-{large} images/s", "batch-1 p50 / eager", "throughput / eager", "throughput / onnx")


def _cells(row: FormatRow) -> list[str]:
    def ratio(v):
        return "-" if v is None else f"{v:.2f}x"

    return [row.engine, Path(row.file).name, "-" if row.size_bytes is None else f"{row.size_bytes / 1e6:.2f} MB",
            row.precision, "-" if row.accuracy is None else f"{row.accuracy * 100:.2f}%",
            "-" if row.max_abs_logit_diff is None else ("0" if row.max_abs_logit_diff == 0
                                                        else f"{row.max_abs_logit_diff:.2e}"),
            "-" if row.batch1_p50_ms is None else f"{row.batch1_p50_ms * 1e3:.1f} µs",
            "-" if row.batch_large_ips is None else f"{row.batch_large_ips:,.0f}",
            ratio(row.batch1_p50_vs_eager), ratio(row.throughput_vs_eager), ratio(row.throughput_vs_onnx)]


def _header(table: FormatsTable) -> list[str]:
    return [c.format(large=table.large_batch) for c in COLUMNS]


def render_text(table: FormatsTable) -> str:
    from .report import table as aligned

    lines = [aligned([_cells(r) for r in table.rows], tuple(_header(table)))]
    lines += [f"note      {r.engine}: {r.note}" for r in table.rows if r.note]
    lines += [f"skipped   {s}" for s in table.skipped]
    return "\n".join(lines)


def render_markdown(table: FormatsTable) -> str:
    header = _header(table)
    load = table.load_average_1m
    out = ["# Export formats compared", "",
           "Written by `toolkit bench` itself (do not edit by hand); regenerate with the command below.", "",
           f"- command: `{table.command}`",
           f"- machine: {table.machine}, {table.threads} threads; 1-minute load average {load.get('start')} at "
           f"start, {load.get('end')} at end",
           f"- measured: {table.created}",
           f"- accuracy and max |Δlogit| over the {table.test_images:,} MNIST test images, each through its "
           "format's own runtime; latency and throughput on random images through the model's preprocessing, "
           "one process, CPU", "",
           "| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < 2 or i == 3 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in table.rows]
    notes = [f"{r.engine}: {r.note}" for r in table.rows if r.note] + [f"skipped {s}" for s in table.skipped]
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    out += ["", "![formats](formats.png)", ""]
    return "\n".join(out)


def write_plot(table: FormatsTable, path, *, replace: bool = False) -> None:
    from ..atomic import atomic_path
    from .plot import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table.rows if r.batch1_p50_ms is not None or r.batch_large_ips is not None]
    names = [r.engine for r in rows]
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(12, 4.8))
    ax_lat.barh(names, [(r.batch1_p50_ms or 0) * 1e3 for r in rows], color="tab:blue")
    ax_lat.set_xlabel("batch-1 p50 latency (µs, lower is better)")
    ax_tp.barh(names, [r.batch_large_ips or 0 for r in rows], color="tab:green")
    ax_tp.set_xlabel(f"batch-{table.large_batch} throughput (images/s, higher is better)")
    for ax in (ax_lat, ax_tp):  # linear axes from zero: bar lengths compare as the numbers do
        ax.invert_yaxis()
        ax.grid(True, axis="x", which="both", alpha=0.3)
    for y, r in enumerate(rows):
        if r.accuracy is not None:
            ax_tp.annotate(f"{r.accuracy * 100:.2f}%", (r.batch_large_ips or 1, y), xytext=(3, 0),
                           textcoords="offset points", va="center", fontsize="small")
    fig.suptitle(f"toolkit bench --formats: {table.machine} ({table.threads} threads), accuracy on "
                 f"{table.test_images:,} test images at the bar ends", fontsize="medium")
    fig.tight_layout()
    with atomic_path(path, replace=replace) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
