import json

import click

from toolkit.formats import FORMATS

from .options import preprocess_options

# The containers toolkit.inspect.identify recognises (it keeps this list as MODEL_KINDS; not imported at start-up).
_KINDS = {"onnx": "ONNX", "torchscript": "TorchScript", "pt2": "torch.export"}
HELP = f"""Describe a checkpoint (.pth) or an exported file: {'; '.join(
    f"{words} ({', '.join(f'{f.name} {f.suffix}' for f in FORMATS if f.container == kind)})"
    for kind, words in _KINDS.items())}.

    What the file is comes from its content, not its suffix; any other file
    (an image, a text file, a zip of something else...) is named as what it is, exit 1.
    The format (toolkit's name for it, as export --formats and bench name it) comes from its name
    when that fits its content. For checkpoints the JSON holds the test accuracy at metrics.test_accuracy
    (a fraction). With the preprocessing options, an ONNX file is also described as predict would run it
    ("contract").
    """


@click.command("inspect", help=HELP)
@click.argument("file", type=click.Path())  # a folder too: the library says what it is, exit 1
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@preprocess_options
def command(file, as_json, flags) -> None:
    from toolkit.inspect import describe_onnx, identify, render_text

    if identify(file) == "onnx":  # by content: a suffix may lie
        info = describe_onnx(file, flags)
    elif flags.given:
        raise click.UsageError("--labels/--mean/--std/--scale/--polarity describe ONNX models only")
    else:  # checkpoints and TorchScript need torch: the torch side describes them
        from toolkit.export.describe import describe

        info = describe(file)
    click.echo(json.dumps(info, indent=2) if as_json else render_text(info))
