"""The export report: every gate's numbers as dataclasses, written to <stem>.export.json; the short table printed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .parity import Comparison

REPORT_SCHEMA_VERSION = "2"


@dataclass
class FormatResult(Comparison):
    """One written file and how far its logits are from the eager model's."""

    file: str = ""
    size_bytes: int | None = None
    sha256: str | None = None
    exporter: str | None = None
    opset: int | None = None
    passed: bool = False


@dataclass
class VariantResult(FormatResult):
    """A variant (INT8, FP16: a row of toolkit.formats with made_from), judged on test accuracy against the float32
    file it is made from."""

    method: str = ""
    judged_on: str = "test accuracy vs float32 ONNX; logit tolerances do not apply"
    accuracy_change_points: float | None = None
    size_vs_float32: float | None = None
    latency_batch1: dict | None = None  # per model, as export.quantize.batch1_latency_us measures it
    faster_than_float32: bool | None = None
    latency_verdict: str | None = None
    skipped: str | None = None  # why it was not made

    def __post_init__(self):
        self.outside_tolerance = None  # its logits are meant to differ: no count against atol/rtol


Int8Result = VariantResult  # its earlier name: it holds FP16 too


@dataclass
class Tolerances:
    atol: float
    rtol: float
    int8_max_accuracy_drop_points: float | None = None
    rule: str = "|out - ref| <= atol + rtol * |ref| for every logit"


@dataclass
class Inputs:
    test_images: int
    random_batches: list[int]


@dataclass
class ExportReport:
    checkpoint: str
    checkpoint_sha256: str
    checkpoint_kind: str
    architecture: str
    tolerances: Tolerances
    inputs: Inputs
    eager: dict[str, float]  # {"test_accuracy": ...}: the reference
    formats: dict[str, FormatResult]
    passed: bool
    problems: list[str]
    timings: dict[str, float]
    versions: dict[str, str]
    machine: dict
    notes: list[str] = field(default_factory=list)
    report_file: str | None = None
    # 2: formats and timings keyed by the formats' one names (int8, not onnx-int8; docs/export.md)
    schema_version: str = REPORT_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)


def _pct(v) -> str:
    return f"{v * 100:.2f}%"


def _num(v) -> str:
    return "0" if v == 0 else f"{v:.2e}"


def render_table(report: ExportReport) -> str:
    tol = report.tolerances
    rows = [("format", "file", "size", "max|diff|", "max rel", "top-1 agree", "test acc", "result"),
            ("eager", report.checkpoint, "-", "-", "-", "-", _pct(report.eager["test_accuracy"]), "reference")]
    for fmt, r in report.formats.items():
        if isinstance(r, VariantResult) and r.skipped:
            rows.append((fmt, r.file, "-", "-", "-", "-", "-", "SKIPPED: " + r.skipped))
            continue
        if r.error:
            result = "FAIL: " + r.error
        elif isinstance(r, VariantResult):
            result = f"{'ok' if r.passed else 'FAIL'} ({r.accuracy_change_points:+.2f} points)"
        else:
            result = "ok" if r.passed else f"FAIL ({r.outside_tolerance:,} logits outside tolerance)"
        rows.append((fmt, r.file, f"{r.size_bytes / 1e6:.2f} MB", _num(r.max_abs_diff), _num(r.max_rel_diff),
                     _pct(r.top1_agreement), _pct(r.test_accuracy), result))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append(f"float gate: every logit within atol {tol.atol:g} + rtol {tol.rtol:g}*|ref| of the eager "
                 f"model on {report.inputs.test_images:,} test images and random batches of "
                 f"{', '.join(map(str, report.inputs.random_batches))}")
    int8 = report.formats.get("int8")
    if isinstance(int8, VariantResult) and int8.latency_batch1:
        lat = int8.latency_batch1
        lines.append(f"int8 gate: at most {tol.int8_max_accuracy_drop_points:g} accuracy points lost; "
                     f"size {int8.size_vs_float32 * 100:.0f}% of float32")
        lines.append(f"batch-1 latency, ORT CPU, {lat['int8']['threads']} thread, median of {lat['int8']['runs']}: "
                     f"int8 {lat['int8']['median_us']:.1f} us, float32 {lat['float32']['median_us']:.1f} us. "
                     f"{int8.latency_verdict}.")
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)
