import shlex
from dataclasses import dataclass

import click

from toolkit import formats as registry

from ..run_guard import DEFAULT_RUN_TIMEOUT
from .options import (CommaList, FiniteFloat, data_dir_option, force_option, format_name, model_option,
                      preprocess_options, provider_option, run_timeout_option)

# Besides one engine per format (named after it): the eager reference and OpenVINO on the onnx file.
OTHER_ENGINES = {"eager": "<stem>.pth, eager PyTorch", "openvino": "the onnx file, OpenVINO's CPU plugin"}
ENGINES_HELP = ("Comma-separated engines: one per export format, named after it and running its file beside --model ("
                + ", ".join(f"{f.name}: <stem>{f.suffix}" for f in registry.FORMATS) + "), and "
                + ", ".join(f"{name} ({what})" for name, what in OTHER_ENGINES.items())
                + ". Default: every one whose file and library are present (openvino only when named); "
                  "the others are listed as skipped.")


def known_engines() -> dict:
    """Name -> engine class: each row's engine (toolkit.formats) bound to it, then the eager reference and OpenVINO.
    The torch side's engines import torch only when opened; without torch they are skipped with why."""
    from toolkit.bench.openvino_engine import OPENVINO_ENGINES
    from toolkit.export.bench_engines import EagerEngine

    known = {f.name: registry.load(f.engine).for_format(f) for f in registry.FORMATS}
    return {**known, EagerEngine.name: EagerEngine, **OPENVINO_ENGINES}


def _batch_size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if size < 1:
        raise ValueError("batch sizes must be integers >= 1")
    return size


# Where output goes, not what was measured.
NOT_RECORDED = {"json_path", "plot_path", "markdown_path", "progress", "force", "data_dir", "run_timeout"}


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


@dataclass(frozen=True)
class Outputs:
    """The files --json, --plot and --markdown name (None: not asked for); ``force``: they may replace files."""

    json_path: str | None
    plot_path: str | None
    markdown_path: str | None
    force: bool


def _refuse_shared_paths(model, json_path, plot_path, markdown_path=None) -> None:
    """One file for two outputs keeps only the last one written; an output over the model destroys it."""
    from toolkit.atomic import same_path
    from toolkit.text import printable

    outputs = [(o, p) for o, p in (("--json", json_path), ("--plot", plot_path), ("--markdown", markdown_path)) if p]
    for i, (first, a) in enumerate(outputs):
        for second, b in outputs[i + 1:]:
            if same_path(a, b):
                raise click.UsageError(f"{first} and {second} name the same file {printable(a)}")
    for option, path in outputs:
        if path and same_path(path, model):
            raise click.UsageError(f"{option} {printable(path)} is the model (--model); choose another output name")


@click.command("bench")
@model_option
@provider_option(choices=("auto", "cpu", "cuda", "all"), default="auto")
@click.option("--engines", type=CommaList(format_name, what="engine(s)"), metavar="NAMES", help=ENGINES_HELP)
@click.option("--formats", "formats", type=CommaList(format_name, what="engine(s)"), metavar="all|NAMES",
              help="One table comparing the exported formats: per engine (all: every one available, or the "
                   "names as for --engines) its file, size, accuracy on the 10,000 MNIST test images through its "
                   "own runtime, max |logit difference| from eager, batch-1 p50 and batch-1024 images/s, and "
                   "ratios to eager. Needs <stem>.pth beside --model; batch sizes default to 1,1024.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False),
              help="With --formats: write the table as a markdown page (with --plot: its bar chart beside it).")
@click.option("--batch-sizes", default="1,8,64,256,1024", show_default=True, type=CommaList(_batch_size),
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
@run_timeout_option(DEFAULT_RUN_TIMEOUT, "timed run of one batch (ONNX Runtime engines)")
@force_option
@data_dir_option
@preprocess_options
def command(model, provider, engines, formats, markdown_path, batch_sizes, warmup, runs, duration, threads,
            cuda_graph, no_peak, json_path, plot_path, progress, run_timeout, force, data_dir, flags) -> None:
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
    from toolkit.atomic import check_writable, write_json
    from toolkit.bench import BenchSettings, run_bench
    from toolkit.bench.peak import cpu_peak
    from toolkit.bench.plot import require_matplotlib, write_plot
    from toolkit.bench.report import render
    from toolkit.text import printable
    from toolkit.export.bench_engines import cuda_peak

    if runs is not None and duration is not None:
        raise click.UsageError("give --runs or --duration, not both")
    known = known_engines()
    ctx = click.get_current_context()
    if formats is not None:
        if engines is not None:
            raise click.UsageError("give --formats or --engines, not both")
        if provider not in ("auto", "cpu"):
            raise click.UsageError("--formats compares formats on the CPU: use --provider cpu")
        provider = ctx.params["provider"] = "cpu"
        engines = None if formats == ("all",) else formats
        if ctx.get_parameter_source("batch_sizes") == click.core.ParameterSource.DEFAULT:
            batch_sizes = ctx.params["batch_sizes"] = (1, 1024)  # so the recorded command is the one that ran
    elif markdown_path:
        raise click.UsageError("--markdown writes the --formats table: add --formats all (or engine names)")
    unknown = [n for n in engines or () if n not in known]
    if unknown:
        raise click.BadParameter(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(known)}",
                                 param_hint="--formats" if formats else "--engines")
    # Fail before measuring, not after a minute of it.
    _refuse_shared_paths(model, json_path, plot_path, markdown_path)
    for path in (json_path, plot_path, markdown_path):
        if path:
            check_writable(path, force=force)
    if plot_path:
        require_matplotlib()

    settings = BenchSettings(model=model, provider=provider, batch_sizes=batch_sizes, warmup=warmup, runs=runs,
                             duration=duration, threads=threads, engines=engines, cuda_graph=cuda_graph,
                             peak=not no_peak, command=_as_command(ctx), flags=flags, run_timeout=run_timeout)
    if formats is not None:
        _formats_table(settings, known, data_dir, progress, Outputs(json_path, plot_path, markdown_path, force))
        return
    # OpenVINO is another vendor's runtime: timed when named or in the --formats table, not in a plain run.
    default = known if engines else {k: v for k, v in known.items() if k != "openvino"}
    report = run_bench(settings, default, {"cpu": cpu_peak, "cuda": cuda_peak}, progress=progress)
    click.echo(render(report))
    if json_path:
        write_json(json_path, report.to_dict(), replace=force)
        click.echo(printable(f"wrote {json_path}"))
    if plot_path:
        write_plot(report, plot_path, replace=force)
        click.echo(printable(f"wrote {plot_path}"))


def _formats_table(settings, known, data_dir, progress, outputs: Outputs) -> None:
    """`--formats`: time every engine, then run each on the MNIST test set for accuracy, one table."""
    from toolkit.atomic import write_json, write_text
    from toolkit.bench import run_bench
    from toolkit.bench.formats import REFERENCE, accuracy_pass, build_table, render_markdown, render_text, write_plot
    from toolkit.bench.peak import cpu_peak
    from toolkit.errors import ModelError
    from toolkit.runtime import create_session, model_contract
    from toolkit.text import printable
    from toolkit.train.data import load_mnist

    eager = known[REFERENCE](settings.model)
    if not eager.artifact().is_file():
        raise ModelError(eager.artifact(), "no such file: --formats compares every format with the eager "
                                           "checkpoint, <stem>.pth beside --model")
    report = run_bench(settings, known, {"cpu": cpu_peak}, progress=progress)
    data = load_mnist(data_dir, quiet=True)
    session = create_session(settings.model, "cpu")[0]
    x = model_contract(session, settings.model, settings.flags).preprocess.normalize(data.test_images)
    names = [e.engine for e in report.engines if e.provider == "cpu"]
    table = build_table(report, accuracy_pass(known, names, settings.model, x, report.settings.threads),
                        data.test_labels)
    click.echo(render_text(table))
    if outputs.json_path:
        write_json(outputs.json_path, {"formats": table.to_dict(), "bench": report.to_dict()}, replace=outputs.force)
        click.echo(printable(f"wrote {outputs.json_path}"))
    if outputs.markdown_path:
        write_text(outputs.markdown_path, render_markdown(table), replace=outputs.force)
        click.echo(printable(f"wrote {outputs.markdown_path}"))
    if outputs.plot_path:
        write_plot(table, outputs.plot_path, replace=outputs.force)
        click.echo(printable(f"wrote {outputs.plot_path}"))
