"""The short table `toolkit export` prints; the full numbers are in <stem>.export.json."""

from __future__ import annotations


def _size(n) -> str:
    return f"{n / 1e6:.2f} MB" if isinstance(n, int) else "-"


def _num(v) -> str:
    if isinstance(v, str):  # non-finite, stored as text
        return v
    if v is None:
        return "-"
    return "0" if v == 0 else f"{v:.2e}"


def _pct(v) -> str:
    return f"{v * 100:.2f}%" if isinstance(v, float) else "-"


def render_table(report: dict) -> str:
    tol = report["tolerances"]
    rows = [("format", "file", "size", "max|diff|", "max rel", "top-1 agree", "test acc", "result"),
            ("eager", report["checkpoint"], "-", "-", "-", "-", _pct(report["eager"]["test_accuracy"]),
             "reference")]
    for fmt, r in report["formats"].items():
        if r.get("skipped"):
            result = "SKIPPED: " + r["skipped"]
        elif r.get("error"):
            result = "FAIL: " + r["error"]
        elif fmt == "onnx-int8":
            result = f"{'ok' if r['passed'] else 'FAIL'} ({r['accuracy_change_points']:+.2f} points)"
        else:
            result = "ok" if r["passed"] else f"FAIL ({r['outside_tolerance']:,} logits outside tolerance)"
        rows.append((fmt, r["file"], _size(r.get("size_bytes")), _num(r.get("max_abs_diff")),
                     _num(r.get("max_rel_diff")), _pct(r.get("top1_agreement")), _pct(r.get("test_accuracy")),
                     result))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append(f"float gate: every logit within atol {tol['atol']:g} + rtol {tol['rtol']:g}*|ref| of the eager "
                 f"model on {report['inputs']['test_images']:,} test images and random batches of "
                 f"{', '.join(map(str, report['inputs']['random_batches']))}")
    int8 = report["formats"].get("onnx-int8", {})
    if "latency_batch1" in int8:
        lat = int8["latency_batch1"]
        lines.append(f"int8 gate: at most {tol['int8_max_accuracy_drop_points']:g} accuracy points lost; "
                     f"size {int8['size_vs_float32'] * 100:.0f}% of float32")
        lines.append(f"batch-1 latency, ORT CPU, {lat['int8']['threads']} thread, median of {lat['int8']['runs']}: "
                     f"int8 {lat['int8']['median_us']:.1f} us, float32 {lat['float32']['median_us']:.1f} us. "
                     f"{int8['latency_verdict']}.")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
