import json
from pathlib import Path

import click


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def command(file, as_json) -> None:
    """Describe a checkpoint (.pth), TorchScript (.pt) or ONNX (.onnx) file.

    For checkpoints the JSON holds the test accuracy at metrics.test_accuracy (a fraction).
    """
    from toolkit.inspect import describe_onnx, render_text

    if Path(file).suffix.lower() == ".onnx":
        info = describe_onnx(file)
    else:  # checkpoints and TorchScript need torch: the torch side describes them
        from toolkit.export.describe import describe

        info = describe(file)
    click.echo(json.dumps(info, indent=2) if as_json else render_text(info))
