import click

from toolkit import formats as registry
from toolkit.export.defaults import (DEFAULT_ATOL, DEFAULT_INT8_MAX_DROP, DEFAULT_ONNX_EXPORTER, DEFAULT_OPSET,
                                     DEFAULT_RTOL, ONNX_EXPORTERS)

from ..run_guard import STAMP_RUN_TIMEOUT
from .options import CommaList, FiniteFloat, data_dir_option, force_option, format_name, preprocess_options, \
    run_timeout_option

NAMES = (*registry.NAMES, "all")
FORMATS_HELP = ("Comma-separated, any of: " + "; ".join(
    f"{f.name} (<stem>{f.suffix}: {f.what}" + (f"; needs the {f.extra} extra" if f.extra != "train" else "") + ")"
    for f in registry.FORMATS) + "; all: every format this installation can write. A named format whose package is "
    "missing exits 2 with the install command. " + ", ".join(f.name for f in registry.FORMATS if f.made_from)
    + " are made from the onnx file and judged on test accuracy against it.")
_FILES = {f.name: f"<stem>{f.suffix}" for f in registry.FORMATS}
HELP = f"""Export a checkpoint (toolkit's own or a seed-style state_dict) to {', '.join(registry.NAMES)}.

    \b
    Writes {' and '.join(_FILES[n] for n in registry.DEFAULTS)} and the parity report <stem>.export.json
    (the other formats with --formats NAMES or all; <stem>{registry.BY_NAME['int8'].suffix} also with --int8).
    Every file is loaded back from disk and compared with the eager model on
    the 10,000 MNIST test images and random batches of 1, 2, 7 and 64 images.
    Files appear only if every check passes; on failure nothing is written
    or replaced and the exit code is 4.
    Existing outputs are refused (exit 1) unless --force is given.

    \b
    Stamp once: toolkit export theirs.onnx --labels 0,1,...,9 --mean 0.5
    --std 0.5 --out stamped.onnx validates their model (onnx.checker, ONNX
    Runtime, one output per label, finite outputs on random and, for digit
    labels, real MNIST digits) and writes a copy that needs no options.

    \b
    Your own module: toolkit export --module mypkg.nets:make_net
    --weights net.pth --input-shape 1,28,28 --labels 0,1,...,9 --mean 0.5
    --std 0.5 builds the network with your factory (your code runs),
    loads the weights and goes through the same exporters and parity gate.
    """
# What only an export does; given with a stamp (an ONNX file with --out) they are refused, not ignored.
EXPORT_ONLY = ("out_dir", "formats", "onnx_exporter", "opset", "atol", "rtol", "int8", "int8_max_drop")


def _module_spec(ctx, param, value):
    if value is None:
        return None
    from toolkit.export.user_module import parse_module_spec

    try:
        parse_module_spec(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _input_shape(ctx, param, value):
    if value is None:
        return None
    from toolkit.export.user_module import parse_input_shape

    try:
        return parse_input_shape(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _choose(names: tuple[str, ...], onnx_exporter: str) -> tuple[list[str], list[str]]:
    """(formats to write, notes on formats left out); a named format that cannot be written is refused (exit 2,
    one line with the install command)."""
    missing = {f.name: registry.missing(f, onnx_exporter) for f in registry.FORMATS}
    if "all" in names:
        return ([f for f, why in missing.items() if not why],
                [f"{f} not written: it {why}" for f, why in missing.items() if why])
    refused = [f"{f} {missing[f]}" for f in names if missing.get(f)]
    if refused:
        raise click.UsageError("; ".join(refused))
    return list(names), []


@click.command("export", help=HELP)
@click.argument("checkpoint", type=click.Path(dir_okay=False), required=False)
@click.option("--out-dir", type=click.Path(file_okay=False),
              help="Where to write the files (created if missing). Default: beside the checkpoint.")
@click.option("--formats", default=",".join(registry.DEFAULTS), show_default=True,
              type=CommaList(format_name, what="format(s)", choices=NAMES), help=FORMATS_HELP)
@click.option("--onnx-exporter", type=click.Choice(ONNX_EXPORTERS), default=DEFAULT_ONNX_EXPORTER, show_default=True,
              help="dynamo: torch.onnx.export(dynamo=True), built on torch.export; legacy: torch's deprecated "
                   "TorchScript-based exporter (about 40x faster to export this model), while torch still has it.")
@click.option("--opset", type=click.IntRange(11, 23), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset. The dynamo exporter writes 18 or later and converts down to a lower one when it can; "
                   "the report records the opset the file declares.")
@click.option("--atol", type=FiniteFloat(min=0), default=DEFAULT_ATOL, show_default=True,
              help="Parity gate: absolute logit tolerance against the eager model.")
@click.option("--rtol", type=FiniteFloat(min=0), default=DEFAULT_RTOL, show_default=True,
              help="Parity gate: relative tolerance; a logit passes if |out - ref| <= atol + rtol*|ref|.")
@click.option("--int8", is_flag=True,
              help=f"Also write <stem>{registry.BY_NAME['int8'].suffix} (the same as --formats ...,int8: ONNX Runtime "
                   "dynamic quantization), judged on test accuracy, with its size and batch-1 latency against float32.")
@click.option("--int8-max-drop", type=FiniteFloat(min=0), default=DEFAULT_INT8_MAX_DROP, show_default=True,
              help="Accuracy gate of " + ", ".join(f.name for f in registry.FORMATS if f.made_from)
                   + ": most test-accuracy points each may lose against the float32 file it is made from.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Stamping an ONNX file (CHECKPOINT is a .onnx made elsewhere): where the copy with the "
                   "contract from --labels/--mean/--std/--scale/--polarity goes. The input file is never modified.")
@click.option("--images", type=click.Path(exists=True), metavar="DIR",
              help="Stamping: also run the model on the image files in DIR (the first 256, through its own "
                   "preprocessing, as predict reads them): finite outputs required, the predicted classes shown. "
                   "Random images are always checked; MNIST digits only for a digit model labelled 0-9.")
@click.option("--module", "module", metavar="PACKAGE.MODULE:FACTORY", callback=_module_spec,
              help="Export your own PyTorch network instead of a checkpoint: IMPORTS AND RUNS YOUR CODE (the module, "
                   "found in the current directory or on PYTHONPATH, and FACTORY() with no arguments, which must "
                   "return an nn.Module). Needs --weights, --input-shape, --labels, --mean and --std.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="With --module: the state_dict file (torch.save(model.state_dict(), ...)); read with "
                   "torch.load(weights_only=True), so the file itself cannot run code. Outputs are named after it.")
@click.option("--input-shape", callback=_input_shape, metavar="C,H,W",
              help="With --module: one image's input, channels (1 or 3), height and width, e.g. 1,28,28.")
@run_timeout_option(STAMP_RUN_TIMEOUT, "stamping check: a batch of at most 64 images")
@data_dir_option
@force_option
@preprocess_options
def command(checkpoint, out_dir, formats, onnx_exporter, opset, atol, rtol, int8, int8_max_drop, out, images, module,
            weights, input_shape, run_timeout, data_dir, force, flags) -> None:
    _check_sources(checkpoint, module, weights, input_shape, out, flags)
    if module is None and (out is not None or flags.given):
        from toolkit.export.stamp import StampChecks

        _stamp_or_refuse(checkpoint, out, flags, force, StampChecks(data_dir, images, run_timeout))
        return
    if images is not None:
        raise click.UsageError("--images checks a model being stamped (an ONNX file with --out)")
    from toolkit.export.pipeline import ExportOptions, export_checkpoint
    from toolkit.export.report import render_table
    from toolkit.errors import ValidationFailed

    formats, notes = _choose(formats + (("int8",) if int8 and "int8" not in formats else ()), onnx_exporter)
    if not formats:
        raise click.UsageError("no format left to write: " + "; ".join(notes))
    needs = sorted({f.made_from for f in map(registry.get, formats) if f.made_from} - set(formats))
    if needs:
        made = ["--int8" if f.name == "int8" and int8 else f.name for f in map(registry.get, formats) if f.made_from]
        raise click.UsageError(f"{', '.join(made)} {'is' if len(made) == 1 else 'are'} made from the "
                               f"{' and '.join(needs)} export: include {' and '.join(needs)} in --formats")
    for note in notes:
        click.echo(note, err=True)
    source = None
    if module is not None:  # the user asked for their code to run by naming it
        import os

        from toolkit.export.user_module import load_module

        source = load_module(module, weights, input_shape, flags, search_path=os.getcwd())
        checkpoint = weights
    try:
        options = ExportOptions(formats=formats, opset=opset, onnx_exporter=onnx_exporter, atol=atol, rtol=rtol,
                                int8_max_drop=int8_max_drop)
        report = export_checkpoint(checkpoint, options, out_dir=out_dir, force=force, data_dir=data_dir, source=source)
    except ValidationFailed as e:
        if e.report is not None:
            click.echo(render_table(e.report), err=True)
        raise
    click.echo(render_table(report))
    for r in report.formats.values():
        click.echo(f"wrote {r.file}")
    click.echo(f"wrote {report.report_file}")


def _stamp_or_refuse(checkpoint, out, flags, force, checks) -> None:
    """--out or preprocessing options with CHECKPOINT: stamp it if it is an ONNX model; else say what it is
    (identified by its content, toolkit.inspect.identify: missing, empty, text, an image, a checkpoint...)."""
    from toolkit.flags import OPTION_NAMES
    from toolkit.inspect import MODEL_KINDS, identify

    kind = identify(checkpoint, expected="an ONNX model to stamp")  # ModelError (exit 1) naming what it is
    if kind == "onnx":
        from toolkit.export.stamp import render, stamp_onnx

        if out is None or flags.missing:
            raise click.UsageError("stamping an ONNX file needs " + ", ".join(
                [o for o in flags.missing] + (["--out FILE"] if out is None else [])))
        ctx = click.get_current_context()
        ignored = [p.opts[0] for p in ctx.command.params if p.name in EXPORT_ONLY
                   and ctx.get_parameter_source(p.name) is not click.core.ParameterSource.DEFAULT]
        if ignored:  # never silently ignored: the stamp writes one file, the one --out names
            raise click.UsageError(f"{', '.join(ignored)} apply to exporting a checkpoint or a --module network; "
                                   f"stamping {checkpoint} writes only the copy --out names")
        click.echo(render(stamp_onnx(checkpoint, flags, out, checks, force=force)))
        click.echo(f"wrote {out}")
        return
    what = f"{checkpoint} is {MODEL_KINDS[kind]}, not an ONNX model"
    if kind != "checkpoint":
        raise click.UsageError(f"{what}: only ONNX files are stamped, and export takes a .pth checkpoint")
    if out is not None:
        raise click.UsageError(f"{what}: --out is for stamping an ONNX file; a checkpoint's files go to --out-dir")
    # A checkpoint carries its classes and preprocessing; options that would be ignored are refused instead.
    named = ", ".join(o for n, o in OPTION_NAMES.items() if getattr(flags, n) is not None)
    raise click.UsageError(f"{what}: {named} describe an ONNX file to stamp (with --out) or a --module network; "
                           "a checkpoint carries its own classes and preprocessing")


def _check_sources(checkpoint, module, weights, input_shape, out, flags) -> None:
    """CHECKPOINT or --module (with its --weights, --input-shape and preprocessing options), never both."""
    if module is None:
        if weights is not None or input_shape is not None:
            raise click.UsageError("--weights and --input-shape go with --module PACKAGE.MODULE:FACTORY")
        if checkpoint is None:
            raise click.UsageError("missing CHECKPOINT (a .pth file, an ONNX file to stamp) or --module")
        return
    if checkpoint is not None:
        raise click.UsageError(f"give CHECKPOINT ({checkpoint}) or --module, not both")
    if out is not None:
        raise click.UsageError("--out is for stamping an ONNX file; --module's files go to --out-dir")
    needed = (["--weights FILE"] if weights is None else []) + (["--input-shape C,H,W"] if input_shape is None else [])
    needed += flags.missing
    if needed:
        raise click.UsageError(f"--module needs {', '.join(needed)}")
