"""Options shared by several commands, so their spelling and help stay identical."""

import math
import os

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


class CommaList(click.ParamType):
    """Every comma-separated option's type (--formats, --engines, --batch-sizes): items stripped, empty ones and
    repeats dropped (the first kept, order kept), each made by ``item`` (its ValueError's text is the message)
    and, with ``choices``, one of them; at least one. The value is a tuple."""

    name = "list"

    def __init__(self, item=str, what: str = "names", choices=None):
        self.item, self.what, self.choices = item, what, choices

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(dict.fromkeys(self.item(v.strip()) for v in value.split(",") if v.strip()))
        except ValueError as e:
            self.fail(str(e) or f"expected comma-separated {self.what}, got {value!r}", param, ctx)
        unknown = [i for i in items if self.choices is not None and i not in self.choices]
        if unknown or not items:
            named = f"unknown {self.what} {', '.join(unknown)}" if unknown else f"name at least one of the {self.what}"
            self.fail(named + (f"; choose from {', '.join(self.choices)} (comma-separated)" if self.choices else ""),
                      param, ctx)
        return items


def run_timeout_option(default: float, what: str = "batch"):
    """--run-timeout: every ONNX Runtime run of the model bounded (toolkit.run_guard), identical wording everywhere."""
    return click.option(
        "--run-timeout", type=FiniteFloat(min=0), default=default, show_default=True, metavar="SECONDS",
        help=f"Stop the model if one run (one {what}) takes longer than this, with one line and exit 1: a model is "
             "untrusted input (a graph can loop for ever). 0: no limit. The probe runs when the model opens take "
             "at most 10 s each (or this, if smaller). Ctrl-C or SIGTERM also stops a run in progress.")


def format_name(text: str) -> str:
    """One item of a --formats/--engines list: lower-cased, an earlier name of a format (toolkit.formats) turned into
    its one name with a one-line warning on stderr; any other name is left for the choices to judge."""
    from ..formats import canonical

    return canonical(text.lower(), warn=lambda message: click.echo(f"toolkit: warning: {message}", err=True))


force_option = click.option("--force", is_flag=True,
                            help="Replace existing output files. Without it, existing outputs are never overwritten.")

data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), envvar="TOOLKIT_DATA_DIR", show_envvar=True,
    help="MNIST cache (torchvision layout: <dir>/MNIST/raw). Default: ~/.cache/toolkit/data.")

model_option = click.option("--model", "model", type=click.Path(), default="model.onnx", show_default=True,
                            help="Exported ONNX model (made by `toolkit export model.pth`), or a folder laid out as "
                                 "an Optimum export: model.onnx, preprocessor_config.json, config.json (id2label).")


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


PREPROCESS_HELP = "Describe a model that carries no toolkit contract (or stamp it once: `toolkit export MODEL.onnx " \
                  "--labels ... --out stamped.onnx`); on a model that has one they must agree with it."


def preprocess_options(command):
    """--labels, --mean, --std, --scale, --polarity, --preprocess and the image pipeline's options,
    --preprocess-config: the command receives them as one ``flags`` argument, a toolkit.flags.PreprocessFlags
    (fields None where not given; ``flags.given`` is False when none was), a config file's values filled in.
    A ``model`` (or inspect's ``file``) that is a folder is read as an Optimum-style export (toolkit.model_config)."""
    import functools

    def parsed(ctx, param, value):
        from toolkit.flags import PreprocessFlags

        try:  # each option alone: the error names it
            PreprocessFlags.parse(**{param.name: value})
        except ValueError as e:
            raise click.BadParameter(str(e).split(": ", 1)[-1], ctx=ctx, param=param) from None
        return value

    @functools.wraps(command)
    def wrapper(*args, labels, mean, std, scale, polarity, preprocess, fit, resize, crop_pct, interpolation,
                channel_order, pad_value, preprocess_config, **kwargs):
        from toolkit.flags import PreprocessFlags
        from toolkit.model_config import read_model_dir, read_preprocess_config

        try:  # each option passed alone; what is left is how --scale, --mean and --std combine
            flags = PreprocessFlags.parse(labels=labels, mean=mean, std=std, scale=scale, polarity=polarity,
                                          preprocess=preprocess, fit=fit, resize=resize, crop_pct=crop_pct,
                                          interpolation=interpolation, channel_order=channel_order,
                                          pad_value=pad_value)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        config = None
        where = "model" if "model" in kwargs else "file" if "file" in kwargs else None
        if where is not None and kwargs[where] is not None and os.path.isdir(kwargs[where]):
            kwargs[where], config = read_model_dir(kwargs[where])
        if preprocess_config is not None:
            if config is not None:
                raise click.UsageError(f"--preprocess-config beside the folder {kwargs[where]!r}, which has its own "
                                       "config files: give one of them")
            config = read_preprocess_config(preprocess_config)
        problem = flags.usage_problem() if config is None else None
        if problem:
            raise click.UsageError(problem)
        if config is not None:
            try:
                flags = flags.over(config)
            except ValueError as e:
                raise click.UsageError(str(e)) from None
            if problem := flags.usage_problem():
                raise click.UsageError(problem)
        return command(*args, flags=flags, **kwargs)

    def choice(*names):
        return click.Choice(list(names))

    options = [
        click.option("--labels", metavar="FILE|a,b,c", callback=parsed,
                     help="Class names in output order: a file with one per line, or a comma list. " + PREPROCESS_HELP),
        click.option("--mean", metavar="M|M1,M2,M3", callback=parsed,
                     help="Subtracted after --scale: one value, or one per channel (in the model's channel order)."),
        click.option("--std", metavar="S|S1,S2,S3", callback=parsed,
                     help="Divides after --mean: one value, or one per channel."),
        click.option("--scale", type=FiniteFloat(min=0, min_open=True), metavar="X", callback=parsed,
                     help="Pixels (0-255) are divided by this first.  [default: 255]"),
        click.option("--polarity", type=choice("light-on-dark", "dark-on-light"), callback=parsed,
                     help="Digit pipeline: what the model was trained on, light digits on a dark background (MNIST) "
                          "or the reverse.  [default: light-on-dark]"),
        click.option("--preprocess", type=choice("digit", "image"), callback=parsed,
                     help="digit: any image made to look like an MNIST digit (gray, ink box centred). image: a photo "
                          "classifier's pipeline (RGB, resize, crop, normalise), see docs/your-model.md.  "
                          "[default: digit]"),
        click.option("--fit", type=choice("crop", "letterbox", "stretch"), callback=parsed,
                     help="Image pipeline: crop: shorter side to --resize, centre crop (torchvision Resize + "
                          "CenterCrop); letterbox: longer side to the model's size, borders of --pad-value; "
                          "stretch: to the model's size, aspect ignored.  [default: crop]"),
        click.option("--resize", type=click.IntRange(min=1), metavar="N", callback=parsed,
                     help="Image pipeline, --fit crop: the shorter side's length before the centre crop.  "
                          "[default: floor(size / --crop-pct)]"),
        click.option("--crop-pct", type=FiniteFloat(min=0, max=1, min_open=True), metavar="F", callback=parsed,
                     help="Image pipeline: timm's crop_pct, resize to floor(size / F) before the centre crop "
                          "(letterbox, stretch: each side).  [default: 0.875 for crop, 1 otherwise]"),
        click.option("--interpolation", type=choice("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"),
                     callback=parsed, help="Image pipeline: Pillow's resampling filter (antialiased when shrinking). "
                                           " [default: bilinear]"),
        click.option("--channel-order", type=choice("rgb", "bgr"), callback=parsed,
                     help="Image pipeline: the model's colour order (bgr: OpenCV/Caffe models).  [default: rgb]"),
        click.option("--pad-value", metavar="V|R,G,B", callback=parsed,
                     help="Image pipeline: the border colour (0-255) of letterbox and of crops larger than the image. "
                          " [default: 0]"),
        click.option("--preprocess-config", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Read the preprocessing (and labels) from a Hugging Face preprocessor_config.json or a "
                          "timm config.json; options given beside it win (--labels only with as many labels)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
