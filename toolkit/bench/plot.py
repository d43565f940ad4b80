"""Latency and throughput against batch size, one line per engine/provider/mode."""

from __future__ import annotations

import importlib.util

from ..atomic import atomic_path
from .document import BenchReport
from ..errors import EngineUnavailable

PLOTTED_MODES = ("e2e", "device", "cuda-graph")  # copies alone are not model speed


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise EngineUnavailable("--plot needs matplotlib, which is not installed (pip install matplotlib)")


def write_plot(doc: BenchReport, path, *, replace: bool = False) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[tuple, list] = {}
    for r in doc.results:
        if r.mode in PLOTTED_MODES:
            series.setdefault((r.engine, r.provider, r.mode), []).append(r)
    for (engine, provider, mode), rows in series.items():
        rows.sort(key=lambda r: r.batch)
        label = f"{engine} / {provider}" + ("" if mode == "e2e" else f" / {mode}")
        batches = [r.batch for r in rows]
        ax_lat.plot(batches, [r.latency_ms.p50 for r in rows], marker="o", label=label)
        ax_tp.plot(batches, [r.throughput_ips for r in rows], marker="o", label=label)
    all_batches = sorted({r.batch for r in doc.results})
    for ax, title, unit in ((ax_lat, "p50 latency", "ms per batch"), (ax_tp, "throughput", "images / s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_batches, [str(b) for b in all_batches])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_tp.legend(fontsize="small")
    env = doc.environment
    gpu = f", {env['gpu']['name']}" if env.get("gpu") and env["gpu"].get("name") else ""
    fig.suptitle(f"toolkit bench: {env['cpu']['model']} ({env['threads']} threads){gpu}", fontsize="medium")
    fig.tight_layout()
    with atomic_path(path, replace=replace) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
