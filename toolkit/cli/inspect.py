import json

import click

from .options import preprocess_options

@click.command("inspect")
@click.argument("file", type=click.Path())  # a folder too: the library says what it is, exit 1
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@preprocess_options
def command(file, as_json, flags) -> None:
    """Describe a checkpoint (.pth), TorchScript (.pt) or ONNX (.onnx) file.

    What the file is comes from its content, not its suffix; any other file
    (an image, a text file, a zip of something else...) is named as what it is, exit 1.
    For checkpoints the JSON holds the test accuracy at metrics.test_accuracy (a fraction).
    With the preprocessing options, an ONNX file is also described as predict would run it ("contract").
    """
    from toolkit.inspect import describe_onnx, identify, render_text

    if identify(file) == "onnx":  # by content: a suffix may lie
        info = describe_onnx(file, flags)
    elif flags.given:
        raise click.UsageError("--labels/--mean/--std/--scale/--polarity describe ONNX models only")
    else:  # checkpoints and TorchScript need torch: the torch side describes them
        from toolkit.export.describe import describe

        info = describe(file)
    click.echo(json.dumps(info, indent=2) if as_json else render_text(info))
