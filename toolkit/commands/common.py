"""Options shared by several commands, so their spelling and help stay identical."""

import click

force_option = click.option("--force", is_flag=True,
                            help="Replace existing output files. Without it, existing outputs are never overwritten.")

data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), envvar="TOOLKIT_DATA_DIR", show_envvar=True,
    help="MNIST cache (torchvision layout: <dir>/MNIST/raw). Default: ~/.cache/toolkit/data.")
