"""The acceptance goals of issues 5 and 9, judged from a `toolkit bench --json` file.

They are goals of this project's work, not product behaviour, so they live here and not in
`toolkit bench`. Each is a ratio of two numbers measured in the same run:
  ORT batch-1 p50 <= 0.25 x eager PyTorch batch-1 p50
  ORT at batch 1024 >= 85% of the measured matmul median rate (GFLOP/s at p50)

    python benchmarks/bench_goals.py bench.json     # exit 0 when every evaluated goal is met
"""

from __future__ import annotations

import argparse
import json
import sys

BATCH1_RATIO = 0.25
PEAK_FRACTION = 0.85
PEAK_BATCH = 1024


def _p50(doc: dict, engine: str, provider: str, batch: int) -> float | None:
    mode = "device" if provider == "cuda" else "e2e"  # the compute path, as in the roofline rows
    return next((r["latency_ms"]["p50"] for r in doc["results"] if (r["engine"], r["provider"], r["batch"],
                 r["mode"]) == (engine, provider, batch, mode)), None)


def onnx_engine(doc: dict) -> str:
    """The float32 ONNX Runtime engine's name: "onnx" since schema 3 (engines are named after the formats), "ort"
    in the files of schemas 1 and 2."""
    return "ort" if str(doc.get("schema_version", "1")) in ("1", "2") else "onnx"


def goals(doc: dict) -> list[tuple[str, bool | None]]:
    """(sentence, met) per goal and provider; met is None when this run lacks a needed number."""
    out = []
    name = onnx_engine(doc)
    flops = doc["model"].get("flops_per_image")
    for provider in dict.fromkeys(r["provider"] for r in doc["results"]):
        ort, eager = _p50(doc, name, provider, 1), _p50(doc, "eager", provider, 1)
        if ort and eager:
            out.append((f"{provider}: ORT batch-1 p50 / eager = {ort:.4f} / {eager:.4f} ms = {ort / eager:.3f} "
                        f"(goal <= {BATCH1_RATIO})", ort / eager <= BATCH1_RATIO))
        else:
            out.append((f"{provider}: batch-1 goal not evaluated (needs ort and eager at batch 1)", None))
        ort = _p50(doc, name, provider, PEAK_BATCH)
        peak = (doc.get("peak", {}).get(provider) or {}).get("gflops_median")
        if ort and peak and flops:
            rate = flops * PEAK_BATCH / 1e9 / (ort / 1e3)
            out.append((f"{provider}: ORT batch-{PEAK_BATCH} {rate:.1f} GFLOP/s at p50 / matmul {peak:.1f} GFLOP/s "
                        f"median = {rate / peak:.3f} (goal >= {PEAK_FRACTION})", rate / peak >= PEAK_FRACTION))
        else:
            out.append((f"{provider}: peak goal not evaluated (needs ort at batch {PEAK_BATCH}, a FLOP count "
                        "and a matmul measurement)", None))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json")
    with open(ap.parse_args(argv).bench_json, encoding="utf-8") as f:
        results = goals(json.load(f))
    for sentence, met in results:
        print(f"{'not evaluated' if met is None else 'met' if met else 'NOT met':>13}  {sentence}")
    return 0 if all(met is not False for _, met in results) else 1


if __name__ == "__main__":
    sys.exit(main())
