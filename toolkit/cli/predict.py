import os
import signal

import click

from ..errors import EXIT_ERROR, EXIT_GATE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_UNAVAILABLE
from ..run_guard import DEFAULT_RUN_TIMEOUT
from . import INTERRUPTED_MESSAGE
from .options import exit_codes_help, force_option, model_option, preprocess_options, provider_option, \
    run_timeout_option

EPILOG = """\b
Preprocessing (from the model's metadata; same module as train/export):
  a 28x28 image with a dark border is used as it is (MNIST format);
  any other image is normalised the way MNIST was made: colour -> gray,
  transparency composited, EXIF rotation applied; dark ink on light paper
  is inverted; background and its noise removed, contrast stretched;
  the ink's bounding box scaled to fit 20x20 (aspect kept); centre of
  mass placed at (14, 14) in 28x28, as in MNIST.
  An image with no ink (blank, uniform, 1x1, transparent, faint noise) is
  reported as blank: no label, never a class (column blank in --output).
  Images over 4 megapixels are reduced while decoding; one whose decoded
  pixels would exceed 200 MiB is skipped with its size.

\b
Accepted: PNG, JPEG, BMP, GIF (first frame), WebP, TIFF. In folders only
files with those suffixes are read (others are counted as ignored);
a file named on the command line is always tried. Folders are walked in
sorted order; images in a folder named after a class (e.g. samples/3/)
are labelled: accuracy is reported, and a confusion-matrix PNG is written
to --confusion, or beside --output as NAME.confusion.png.

""" + exit_codes_help({
    EXIT_OK: "every image predicted",
    EXIT_ERROR: "unusable model or output path, or no image files at all",
    EXIT_PARTIAL: "finished, but some files were skipped (each is listed with its reason)",
    EXIT_UNAVAILABLE: "--provider cuda requested but CUDA cannot be used; --engine ray without the "
                      "cluster extra, or a Ray cluster that cannot be joined (e.g. its token is missing)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM, SIGHUP): --output keeps every row written so far",
}, omit=(EXIT_GATE,))


def ignore_stop_signals() -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def _check_output(ctx, param, value):
    if value is not None and not value.lower().endswith((".csv", ".jsonl", ".parquet")):
        raise click.BadParameter("the file name must end in .csv or .jsonl (or .parquet with --engine ray)",
                                 ctx=ctx, param=param)
    return value


def _check_png(ctx, param, value):
    if value is not None and not value.lower().endswith(".png"):
        raise click.BadParameter("the file name must end in .png", ctx=ctx, param=param)
    return value


def _refuse_shared_paths(paths, output, confusion) -> None:
    """One file for two roles (results over the confusion PNG, an output over an input) loses one of them."""
    from pathlib import Path

    from toolkit.atomic import same_path
    from toolkit.predict.decode import IMAGE_SUFFIXES
    from toolkit.predict.output import default_confusion_path
    from toolkit.text import printable

    outputs = [("--output", output), ("--confusion", confusion)]
    if output is not None and confusion is None:
        outputs[1] = ("--confusion (default beside --output)", str(default_confusion_path(output)))
    if output is not None and confusion is not None and same_path(output, confusion):
        raise click.UsageError(f"--output and --confusion name the same file {printable(output)}")
    for option, out in outputs:
        if out is None:
            continue
        # What is written is the file the name leads to (a symbolic link is followed): an image inside a given
        # folder is an input too (a CSV/JSONL there never is).
        real = Path(os.path.realpath(out))
        image = real.exists() and real.suffix.lower() in IMAGE_SUFFIXES
        for given in paths:
            inside = image and Path(given).is_dir() and real.is_relative_to(os.path.realpath(given))
            if same_path(out, given) or inside:
                raise click.UsageError(f"{option} {printable(out)} is also an input (argument {printable(given)}); "
                                       "choose another output name")


@click.command("predict", epilog=EPILOG)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@model_option
@provider_option()
@click.option("--batch-size", type=click.IntRange(1, 65536), default=256, show_default=True,
              help="Images per ONNX Runtime call.")
@click.option("--output", "-o", metavar="FILE", callback=_check_output,
              help="Write one row per image to FILE.csv or FILE.jsonl: path, label, confidence, expected "
                   "(folder label or empty), blank (true: no ink, no label), the top-k labels with probabilities, then "
                   "path_display: the path with a leading ' when it starts with = + - @ tab or CR, so a "
                   "spreadsheet shows it instead of running it as a formula (path itself is always exact). "
                   "A file that appears at FILE during the run is never replaced without --force: the rows "
                   "then go to FILE.1.csv (exit 1, saying so). With --engine ray, FILE.parquet is a directory of "
                   "Parquet files with the same columns, written on the cluster by Ray Data (rows in no set "
                   "order; see docs/scale.md).")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many of the most likely labels to report (capped at the number of classes).")
@click.option("--confusion", metavar="FILE.png", callback=_check_png,
              help="Write the confusion matrix of labelled images to this PNG "
                   "(default with --output: NAME.confusion.png beside it).")
@click.option("--workers", type=click.IntRange(min=0), metavar="N",
              help="Decoding processes. Default: one per CPU core when there are many images; 0 decodes in this "
                   "process; at most four per usable CPU (more is capped, with a notice).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine's processes. ray: decode in Ray tasks and predict in a pool of Ray actors "
                   "(same rows, same order); PATHs may then also be URIs such as s3://bucket/prefix. Needs the "
                   "cluster extra: pip install 'toolkit[cluster]'. See docs/scale.md.")
@click.option("--jpeg-draft", is_flag=True,
              help="Image pipeline, local engine: decode JPEGs at a reduced DCT scale (1/2, 1/4 or 1/8, never smaller "
                   "than the resize needs). Faster on photos, but it changes pixels, so labels can differ from the "
                   "model's own preprocessing: measured agreement in docs/predict.md. Off by default.")
@click.option("--address", metavar="ADDRESS",
              help="With --engine ray: join the Ray cluster at ADDRESS (HOST:PORT of `ray start --head`, or "
                   "ray://HOST:10001) using its authentication token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                   "~/.ray/auth_token). Default: start a local Ray instance sized to this machine.")
@run_timeout_option(DEFAULT_RUN_TIMEOUT)
@force_option
@preprocess_options
@click.pass_context
def command(ctx, paths, model, provider, batch_size, output, top_k, confusion, workers, engine, jpeg_draft, address,
            run_timeout, force, flags) -> None:
    """Predict the digit in each image file, or in every image under each folder.

    Runs on ONNX Runtime only (no torch). Decoding uses every CPU core,
    inference runs in batches, and --output rows are written as results come.
    """
    from toolkit.errors import interrupted_message
    from toolkit.predict import predict_paths
    from toolkit.predict.terminal import TerminalReporter
    from toolkit.text import printable

    _refuse_shared_paths(paths, output, confusion)
    if engine != "ray" and address is not None:
        raise click.UsageError("--address joins a Ray cluster: it needs --engine ray")
    if engine != "ray" and (uris := [p for p in paths if "://" in p]):
        raise click.UsageError(f"{printable(uris[0])}: a URI is read by --engine ray only")
    if engine != "ray" and output is not None and output.lower().endswith(".parquet"):
        raise click.UsageError(f"--output {printable(output)}: Parquet is written by --engine ray only; "
                               "use .csv or .jsonl with the local engine")
    if engine == "ray" and workers is not None:
        raise click.UsageError("--workers sizes the local engine; with --engine ray the cluster's CPUs decode")

    if jpeg_draft and (engine != "local" or flags.given and flags.mode != "image"):
        raise click.UsageError("--jpeg-draft speeds up the image pipeline's decoding on the local engine: it takes "
                               "an image model (--preprocess image, a config, or a stamped file) and --engine local")
    reporter = TerminalReporter()
    # Whatever a late signal interrupts (this command's own ending included), the last line says where the kept
    # rows are: it is made from what the run reported, not from the exception that happens to arrive.
    ctx.meta[INTERRUPTED_MESSAGE] = lambda: interrupted_message(reporter.summary)
    try:
        summary = predict_paths(paths, engine=engine, address=address, model=model, provider=provider,
                                batch_size=batch_size, top_k=top_k, output=output, confusion=confusion, force=force,
                                workers=workers, flags=flags, reporter=reporter, jpeg_draft=jpeg_draft,
                                run_timeout=run_timeout)
    except KeyboardInterrupt:  # PredictInterrupted, or one more signal that came while it was on its way
        # First, before any Python code can run a handler: the run is over and its rows are safe; more signals
        # have nothing left to stop, and one landing in the interpreter's shutdown would print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ignore_stop_signals()
        click.echo(f"toolkit: {printable(interrupted_message(reporter.summary))}", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if summary.exit_code:
        ctx.exit(summary.exit_code)
