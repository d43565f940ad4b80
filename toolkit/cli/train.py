import click

from .options import FiniteFloat, data_dir_option, force_option


# The names are listed here rather than imported: the CLI must not import torch-side modules at start-up.
ARCHS = ("mlp", "cnn")
RECIPES = ("seed", "onecycle", "cnn")


@click.command("train")
@click.option("--arch", type=click.Choice(ARCHS), default="mlp", show_default=True,
              help="mlp: the seed's MLP (784-512-256-128-10). cnn: a small LeNet-style CNN (two 5x5 conv blocks, "
                   "12 and 24 channels), more accurate and more robust to real-world digits, ~3x the FLOPs per image.")
@click.option("--recipe", type=click.Choice(RECIPES),
              help="Default: seed for --arch mlp, cnn for --arch cnn. seed: the notebook's Adam/0.01/batch 64/"
                   "15 epochs. onecycle: AdamW + one-cycle LR + label smoothing + ±2 px shifts, 30 epochs (more "
                   "accurate). cnn: the onecycle ingredients at batch 256 for 7 epochs.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the recipe's epoch count.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override the recipe's batch size.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), help="Override the recipe's (peak) learning rate.")
# torch's seed range: beyond it torch.manual_seed raised a traceback once the data was loaded
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True, help="Random seed; same seed on CPU gives the same weights.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@data_dir_option
@click.option("--out", "out", type=click.Path(dir_okay=False), default="model.pth", show_default=True,
              help="Checkpoint path. Metrics JSON and PNG figures are written beside it (<stem>.metrics.json, "
                   "<stem>.samples.png, <stem>.confusion.png).")
@click.option("--train-subset", type=click.IntRange(min=100), help="Train on the first N training images only (quick runs, tests).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm bars and per-epoch lines.")
@force_option
def command(arch, recipe, epochs, batch_size, lr, seed, device, data_dir, out, train_subset, progress,
            force) -> None:
    """Train the seed's MLP (or, with --arch cnn, a small CNN) on MNIST; write a self-describing checkpoint.

    Nothing is written until training finishes; every output is written
    atomically, so Ctrl-C leaves no half-written file. A training whose loss
    or weights become NaN/Inf (a learning rate far too high) stops at once
    with exit code 1 and writes nothing.
    """
    from toolkit.text import printable
    from toolkit.train.run import TrainJob, train_to_files

    job = TrainJob(arch=arch, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                   data_dir=data_dir, train_subset=train_subset, progress=progress)
    summary = train_to_files(job, out=out, force=force)
    click.echo(f"{summary.arch}: test accuracy {summary.test_accuracy * 100:.2f}% after {summary.epochs} epochs "
               f"in {summary.train_seconds:.1f} s on {summary.device}")
    for path in summary.files:
        click.echo(printable(f"wrote {path}"))
