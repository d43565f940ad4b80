import click

from .options import model_option, preprocess_options, provider_option


@click.command("draw")
@model_option
@provider_option()
@preprocess_options
def command(model, provider, flags) -> None:
    """Draw a digit with the mouse and watch the exported model classify it live.

    \b
    The seed notebook's pad on ONNX Runtime (no torch): a 280x280 canvas whose
    drawing is scaled and centred the MNIST way (ink box to 20x20, centre of
    mass at the centre of 28x28), exactly as `toolkit predict` treats an image.
    The prediction and a bar per class update while you draw.

    \b
    Mouse: left button draws.  Keys: c clears, q quits.
    Needs a graphical display; without one it exits with code 5.
    """
    from toolkit.draw import run

    run(model, provider, on_notice=lambda msg: click.echo(f"toolkit: {msg}", err=True), flags=flags)
