import click

from toolkit.export.defaults import DEFAULT_ATOL, DEFAULT_INT8_MAX_DROP, DEFAULT_OPSET, DEFAULT_RTOL, FORMATS

from .options import FiniteFloat, data_dir_option, force_option


def _formats(ctx, param, value: str) -> tuple[str, ...]:
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(unknown) or 'nothing'}: choose from {', '.join(FORMATS)} "
                                 f"(comma-separated)")
    return tuple(dict.fromkeys(names))


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out-dir", type=click.Path(file_okay=False),
              help="Where to write the files (created if missing). Default: beside the checkpoint.")
@click.option("--formats", default=",".join(FORMATS), show_default=True, callback=_formats,
              help="Comma-separated: torchscript (<stem>.pt), onnx (<stem>.onnx).")
@click.option("--opset", type=click.IntRange(11, 23), default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option("--atol", type=FiniteFloat(min=0), default=DEFAULT_ATOL, show_default=True,
              help="Parity gate: absolute logit tolerance against the eager model.")
@click.option("--rtol", type=FiniteFloat(min=0), default=DEFAULT_RTOL, show_default=True,
              help="Parity gate: relative tolerance; a logit passes if |out - ref| <= atol + rtol*|ref|.")
@click.option("--int8", is_flag=True,
              help="Also write <stem>.int8.onnx (ONNX Runtime dynamic quantization), judged on test accuracy, "
                   "with its size and batch-1 latency against float32.")
@click.option("--int8-max-drop", type=FiniteFloat(min=0), default=DEFAULT_INT8_MAX_DROP, show_default=True,
              help="INT8 gate: most test-accuracy points it may lose against float32.")
@data_dir_option
@force_option
def command(checkpoint, out_dir, formats, opset, atol, rtol, int8, int8_max_drop, data_dir, force) -> None:
    """Export a checkpoint (toolkit's own or a seed-style state_dict) to TorchScript and ONNX.

    \b
    Writes <stem>.pt, <stem>.onnx and the parity report <stem>.export.json
    (plus <stem>.int8.onnx with --int8). Every file is loaded back from disk and
    compared with the eager model on the 10,000 MNIST test images and random
    batches of 1, 2, 7 and 64 images. Files appear only if every check passes;
    on failure nothing is written or replaced and the exit code is 4.
    Existing outputs are refused (exit 1) unless --force is given.
    """
    from toolkit.export.pipeline import export_checkpoint
    from toolkit.export.report import render_table
    from toolkit.errors import ValidationFailed

    if int8 and "onnx" not in formats:
        raise click.UsageError("--int8 quantizes the ONNX export: include onnx in --formats")
    try:
        report = export_checkpoint(checkpoint, out_dir=out_dir, formats=formats, opset=opset, atol=atol, rtol=rtol,
                                   int8=int8, int8_max_drop=int8_max_drop, force=force, data_dir=data_dir)
    except ValidationFailed as e:
        if e.report is not None:
            click.echo(render_table(e.report), err=True)
        raise
    click.echo(render_table(report))
    for r in report.formats.values():
        click.echo(f"wrote {r.file}")
    click.echo(f"wrote {report.report_file}")
