"""Render a bench document as aligned terminal text."""

from __future__ import annotations

from .document import BenchReport

COLUMNS = ("engine", "provider", "precision", "batch", "mode", "first ms", "p50 ms", "p90 ms", "p99 ms",
           "mean ms", "min ms", "max ms", "images/s", "runs")
_RIGHT = {"batch", "first ms", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "max ms", "images/s", "runs"}


def _ms(v: float) -> str:
    return f"{v:.4f}" if v < 1 else f"{v:.3f}" if v < 100 else f"{v:.1f}"


def table(rows: list[list[str]], header: tuple[str, ...]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if h in _RIGHT else c.ljust(w)
                         for c, w, h in zip(cells, widths, header)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _environment(doc: BenchReport) -> list[str]:
    env, s, m = doc.environment, doc.settings, doc.model
    cpu = env["cpu"]
    lines = [f"cpu       {cpu['model']}: {cpu['physical_cores']} physical cores, {cpu['usable_cpus']} usable of "
             f"{cpu['logical_cpus']} logical; {env['threads']} threads",
             f"software  onnxruntime {env['onnxruntime']} ({env['onnxruntime_package']}), numpy {env['numpy']}, "
             f"torch {env['torch'] or 'not imported'}, python {env['python']}"]
    load = env.get("load_average_1m") or {}
    if load.get("start") is not None:
        busy = max(load["start"], load["end"] or 0) > 0.5 * cpu["usable_cpus"]
        busy = " (a busy machine: expect long tails)" if busy else ""
        lines.append(f"load      1-minute load average {load['start']} at start, {load['end']} at end{busy}")
    if env.get("gpu"):
        g = env["gpu"]
        lines.append(f"gpu       {g.get('name') or 'unknown'}, driver {g.get('driver')}")
    flops = f"{m.flops_per_image / 1e6:.3f} MFLOP/image" if m.flops_per_image else "FLOPs unknown"
    lines.append(f"model     {m.path} ({flops})")
    timing = f"{s.runs} runs" if s.runs else f"{s.duration_s} s (>= {s.min_runs} runs)"
    lines.append(f"timing    {s.warmup} warm-up runs, then {timing} per case")
    return lines


def render(doc: BenchReport) -> str:
    out = _environment(doc)
    out.append("")
    for e in doc.engines:
        imported = f" (library import {e.import_s:.2f} s before that)" if e.import_s >= 0.01 else ""
        out.append(f"{e.engine} on {e.provider}: created in {e.create_s:.3f} s{imported}, "
                   f"running on {', '.join(e.providers_used)}")
        out.extend(f"  note: {n}" for n in e.notes)
    out.append("")
    rows = []
    for r in doc.results:
        lat = r.latency_ms
        rows.append([r.engine, r.provider, r.precision, str(r.batch), r.mode, _ms(r.first_run_ms),
                     *(_ms(v) for v in (lat.p50, lat.p90, lat.p99, lat.mean, lat.min, lat.max)),
                     f"{r.throughput_ips:,.0f}", str(r.runs)])
    out.append(table(rows, COLUMNS))
    out.append("")
    for provider, peak in doc.peak.items():
        if peak.error:
            out.append(f"matmul peak on {provider}: not measured ({peak.error})")
        else:
            where = f"threads {peak.threads}" if peak.threads else peak.gpu
            out.append(f"matmul peak on {provider}: {peak.gflops_median:.1f} GFLOP/s median, "
                       f"{peak.gflops_best:.1f} best ({peak.library}, {'x'.join(map(str, peak.shape))}, {where})")
    if doc.results and not doc.model.flops_per_image:
        out.append("roofline  FLOPs unknown: the model's contract has no FLOP count (re-export it to add one)")
    for r in doc.roofline:
        if r.gflops_p50 is None:
            continue
        frac = f" = {r.fraction_of_peak * 100:.0f}% of peak" if r.fraction_of_peak is not None else ""
        if r.precision != "float32":
            frac += f" ({r.precision}: float-equivalent operations against a float32 peak)"
        out.append(f"roofline  {r.engine} on {r.provider} at batch {r.batch}: {r.gflops_p50:.1f} GFLOP/s at p50{frac}")
    for s in doc.skipped:
        sizes = f" at batch {', '.join(map(str, s.batch_sizes))}" if s.batch_sizes else ""
        out.append(f"skipped   {s.engine}{f' on {s.provider}' if s.provider else ''}{sizes}: {s.reason}")
    out.extend(f"note      {n}" for n in doc.notes)
    return "\n".join(out)
