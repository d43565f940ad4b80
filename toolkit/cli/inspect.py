import json

import click


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def command(file, as_json) -> None:
    """Describe a checkpoint (.pth), TorchScript (.pt) or ONNX (.onnx) file.

    For checkpoints the JSON holds the test accuracy at metrics.test_accuracy (a fraction).
    """
    from toolkit.inspect import describe, render_text

    info = describe(file)
    click.echo(json.dumps(info, indent=2) if as_json else render_text(info))
