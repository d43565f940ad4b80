"""Options shared by several commands, so their spelling and help stay identical."""

import math

import click

from ..errors import EXIT_CODES


class FiniteFloat(click.FloatRange):
    """Every float option's type: a range that also refuses NaN and infinities ('nan', 'inf', '1e999').

    Each comparison with NaN is false, so a NaN tolerance would switch a gate off and a NaN
    learning rate would train garbage; checked before the range, whose message would mislead.
    """

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


force_option = click.option("--force", is_flag=True,
                            help="Replace existing output files. Without it, existing outputs are never overwritten.")

data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), envvar="TOOLKIT_DATA_DIR", show_envvar=True,
    help="MNIST cache (torchvision layout: <dir>/MNIST/raw). Default: ~/.cache/toolkit/data.")

model_option = click.option("--model", "model", type=click.Path(dir_okay=False), default="model.onnx",
                            show_default=True, help="Exported ONNX model (made by `toolkit export model.pth`).")


def provider_option(choices=("auto", "cpu", "cuda"), default="auto"):
    return click.option(
        "--provider", type=click.Choice(list(choices)), default=default, show_default=True,
        help="ONNX Runtime execution provider. auto: CUDA when it really works (and says so), else CPU; "
             "cuda: fail with the reason if CUDA cannot be used, never a silent CPU fallback.")


def exit_codes_help(wording: dict[int, str] | None = None, omit: tuple[int, ...] = ()) -> str:
    """The "Exit codes:" epilog from EXIT_CODES; a command may reword a code or omit codes it never returns."""
    wording = wording or {}
    if unknown := (set(wording) | set(omit)) - dict(EXIT_CODES).keys():
        raise ValueError(f"exit codes not in toolkit.errors.EXIT_CODES: {sorted(unknown)}")
    rows = [f"  {code:<5}{wording.get(code, meaning)}" for code, meaning in EXIT_CODES if code not in omit]
    return "\b\nExit codes:\n" + "\n".join(rows) + "\n"
