import shlex

import click

from .options import FiniteFloat, force_option, model_option, preprocess_options, provider_option


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not items or min(items) < 1:
        raise click.BadParameter("batch sizes must be integers >= 1")
    return tuple(dict.fromkeys(items))


NOT_RECORDED = {"json_path", "plot_path", "progress", "force"}  # where output goes, not what was measured


def _as_command(ctx: click.Context) -> str:
    """The run as one explicit command line (every measuring option spelled out), for a results page."""
    args = ["toolkit", "bench"]
    for param in ctx.command.params:
        value = ctx.params[param.name]
        if param.name in NOT_RECORDED or value is None or value is False:
            continue
        args += [param.opts[0]] if value is True else [param.opts[0], ",".join(map(str, value))
                                                        if isinstance(value, tuple) else str(value)]
    return shlex.join(args)


def _name_list(ctx, param, value):
    if value is None:
        return None
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise click.BadParameter("name at least one engine")
    return names


def _refuse_shared_paths(model, json_path, plot_path) -> None:
    """One file for two outputs keeps only the last one written; an output over the model destroys it."""
    from toolkit.atomic import same_path
    from toolkit.text import printable

    if json_path and plot_path and same_path(json_path, plot_path):
        raise click.UsageError(f"--json and --plot name the same file {printable(json_path)}")
    for option, path in (("--json", json_path), ("--plot", plot_path)):
        if path and same_path(path, model):
            raise click.UsageError(f"{option} {printable(path)} is the model (--model); choose another output name")


@click.command("bench")
@model_option
@provider_option(choices=("auto", "cpu", "cuda", "all"), default="auto")
@click.option("--engines", callback=_name_list, metavar="NAMES",
              help="Comma-separated engines: ort, ort-int8, torchscript, pt2, eager. "
                   "Default: every one whose file (<stem>.onnx/.int8.onnx/.pt/.pt2/.pth beside --model) and "
                   "library are present; the others are listed as skipped.")
@click.option("--batch-sizes", default="1,8,64,256,1024", show_default=True, callback=_int_list,
              help="Comma-separated batch sizes.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed runs per case after the first run.")
@click.option("--runs", type=click.IntRange(min=1), help="Exactly this many timed runs per case.")
@click.option("--duration", type=FiniteFloat(min=0, min_open=True),
              help="Seconds of timed runs per case (at least 10 runs). Default 0.5 unless --runs is given.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads for ONNX Runtime and torch, and "
              "BLAS threads for the matmul peak. Default: the physical cores available.")
@click.option("--cuda-graph", is_flag=True, help="On CUDA, also time ONNX Runtime replaying a captured CUDA graph.")
@click.option("--no-peak", is_flag=True, help="Skip the matrix-multiply peak measurement "
              "(roofline rows then carry no fraction of peak).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full results as JSON "
              "(schema: docs/bench-schema.md).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a PNG of latency and throughput against batch size (needs matplotlib).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@force_option
@preprocess_options
def command(model, provider, engines, batch_sizes, warmup, runs, duration, threads, cuda_graph, no_peak,
            json_path, plot_path, progress, force, flags) -> None:
    """Measure latency and throughput of the exported model.

    Per engine, provider and batch size: session creation and first run apart, then
    p50/p90/p99/mean/min/max latency and images/s after warm-up; a roofline against the
    machine's measured float32 matmul rate; the environment it ran on.

    \b
    --provider all: CPU, plus CUDA when it really works (else skipped, with why).
    --provider cuda: exits 5 with the reason when CUDA cannot be used; never a
    CPU number under a CUDA label. On CUDA, inputs and outputs are resident on
    the device (mode "device") and the host<->device copies are timed apart
    ("h2d", "d2h"; "e2e" includes them).
    """
    import json

    from toolkit.atomic import check_writable, write_text
    from toolkit.bench import ORT_ENGINES, BenchSettings, run_bench
    from toolkit.bench.peak import cpu_peak
    from toolkit.bench.plot import require_matplotlib, write_plot
    from toolkit.bench.report import render
    from toolkit.text import printable
    # The torch side's engines import torch only when opened; without torch they are skipped with why.
    from toolkit.export.bench_engines import TORCH_ENGINES, cuda_peak

    if runs is not None and duration is not None:
        raise click.UsageError("give --runs or --duration, not both")
    known = {**ORT_ENGINES, **TORCH_ENGINES}
    unknown = [n for n in engines or () if n not in known]
    if unknown:
        raise click.BadParameter(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(known)}",
                                 param_hint="--engines")
    # Fail before measuring, not after a minute of it.
    _refuse_shared_paths(model, json_path, plot_path)
    for path in (json_path, plot_path):
        if path:
            check_writable(path, force=force)
    if plot_path:
        require_matplotlib()

    settings = BenchSettings(model=model, provider=provider, batch_sizes=batch_sizes, warmup=warmup, runs=runs,
                             duration=duration, threads=threads, engines=engines, cuda_graph=cuda_graph,
                             peak=not no_peak, command=_as_command(click.get_current_context()), flags=flags)
    report = run_bench(settings, known, {"cpu": cpu_peak, "cuda": cuda_peak}, progress=progress)
    click.echo(render(report))
    if json_path:
        write_text(json_path, json.dumps(report.to_dict(), indent=2) + "\n", replace=force)
        click.echo(printable(f"wrote {json_path}"))
    if plot_path:
        write_plot(report, plot_path, replace=force)
        click.echo(printable(f"wrote {plot_path}"))
