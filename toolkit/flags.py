"""A model's contract from command-line preprocessing options, for models the toolkit did not export.

The options (--labels, --mean, --std, --scale, --polarity; with --preprocess image also --fit, --resize,
--crop-pct, --interpolation, --channel-order, --pad-value) say what the graph cannot: the class names and
how an image becomes floats; a config file that travels with the model can say it instead
(``toolkit.model_config``: the options given beside it win). The graph says the rest (``InputFacts``: channels, size, layout),
read by ``toolkit.graph`` from an ONNX file or given by ``toolkit export --module --input-shape``.
Parsing raises ValueError (the CLI makes it a usage error); fitting options to a model raises
FlagsMismatch (exit 2), and a model that has neither contract nor options MissingContract (exit 1).
"""

from __future__ import annotations

import math
import math
import os
import stat
from collections import Counter
from dataclasses import dataclass, fields

import numpy as np

from .contract import ModelContract
from .errors import FlagsMismatch, MissingContract
from .preprocess import CHANNEL_ORDERS, FITS, INTERPOLATIONS, MODES, POLARITIES, PreprocessSpec, resolve_resize, value_problem

OPTION_NAMES = {"labels": "--labels", "mean": "--mean", "std": "--std", "scale": "--scale",
                "polarity": "--polarity", "preprocess": "--preprocess", "fit": "--fit", "resize": "--resize",
                "crop_pct": "--crop-pct", "interpolation": "--interpolation", "channel_order": "--channel-order",
                "pad_value": "--pad-value"}
# Options that only mean something with --preprocess image.
IMAGE_OPTIONS = ("fit", "resize", "crop_pct", "interpolation", "channel_order", "pad_value")
DESCRIBED = "described by options"  # a contract's exporter when it was built here, not read from the file
REQUIRED = ("labels", "mean", "std")  # --scale defaults to 255, --polarity to light-on-dark
DEFAULT_SCALE = 255.0
DEFAULT_POLARITY = "light-on-dark"
STAMP_HINT = ("or stamp them into a copy once: toolkit export MODEL.onnx --labels ... --mean ... --std ... "
              "--out stamped.onnx")


MAX_LABELS_BYTES = 16 * 1024 * 1024  # a labels file larger than this is not a class list (100,000 labels: ~1 MB)
FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def parse_labels(value: str) -> tuple[str, ...]:
    """A regular file (one label per line, blank lines ignored, at most 16 MiB) or a comma list ``a,b,c``.

    Only a regular file is read: a name that exists as anything else (a directory, a device, a FIFO) is
    refused saying what it is; a value that names nothing (or cannot be a path at all, such as a comma list
    longer than a file name may be) is a comma list if it has a comma.
    """
    try:
        mode = os.stat(value).st_mode
    except (OSError, ValueError):  # no such file, a name too long to be a path, a NUL byte: not a file
        mode = None
    if mode is not None and stat.S_ISREG(mode):
        labels = _read_labels_file(value).splitlines()
        labels = [line.strip() for line in labels if line.strip()]
        where = f"labels file {value!r}"
    elif mode is not None:
        what = next((kind for test, kind in FILE_KINDS if test(mode)), "not a regular file")
        raise ValueError(f"{value!r} is {what}, not a labels file (a text file with one label per line)")
    elif "," in value:
        labels = [v.strip() for v in value.split(",")]
        where = f"label list {value!r}" if len(value) <= 80 else f"label list {value[:60]!r}... ({len(value)} chars)"
    else:
        raise ValueError(f"{value!r} is neither a labels file (no such file) nor a comma list such as 0,1,2")
    if len(labels) < 2:
        raise ValueError(f"{where} names {len(labels)} label(s); a classifier has at least 2")
    if "" in labels:
        raise ValueError(f"{where} has an empty label")
    twice = [label for label, n in Counter(labels).items() if n > 1]  # one pass: 100,000 labels in milliseconds
    if twice:
        more = f" (+{len(twice) - 5} more)" if len(twice) > 5 else ""
        raise ValueError(f"{where} names {', '.join(sorted(twice)[:5])}{more} more than once")
    return tuple(labels)


def _read_labels_file(value: str) -> str:
    """The text of a regular file of at most MAX_LABELS_BYTES; opened without blocking and checked again once
    open, so a file swapped for a FIFO or a device after the check is never waited on or read without end."""
    try:
        fd = os.open(value, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ValueError(f"{value!r} is not a regular file, not a labels file")
            data = f.read(MAX_LABELS_BYTES + 1)
        if len(data) > MAX_LABELS_BYTES:
            raise ValueError(f"labels file {value!r} is larger than {MAX_LABELS_BYTES // (1024 * 1024)} MiB: "
                             "not a list of class names")
        return data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read labels file {value!r} ({type(e).__name__}: {e})") from None


def parse_numbers(value: str, name: str) -> tuple[float, ...]:
    """``M`` or ``M1,M2,M3``: finite numbers (std also non-zero)."""
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"expected a number or three comma-separated numbers, got {value!r}") from None
    if len(numbers) not in (1, 3):
        raise ValueError(f"give one value or three (one per channel), got {len(numbers)}")
    if not all(math.isfinite(n) for n in numbers):
        raise ValueError(f"{value!r} holds a value that is not a finite number")
    if name == "std" and 0 in numbers:
        raise ValueError("a standard deviation of 0 divides by zero")
    if name == "std" and any(n < 0 for n in numbers):
        raise ValueError(f"{value!r}: a standard deviation is positive (a model fed negated values is the other "
                         "--polarity, with --mean 255/scale - mean and a positive --std)")
    for n in numbers:
        if not in_float32(n):
            raise ValueError(f"{n:g} is {'beyond' if abs(n) > 1 else 'below'} float32's range (the preprocessing "
                             "computes in float32)")
    return numbers


def in_float32(n: float) -> bool:
    """Whether ``n`` stays a finite number, and a non-zero one if it is, in float32 (the preprocessing's precision)."""
    with np.errstate(over="ignore"):
        single = np.float32(n)
    return bool(np.isfinite(single)) and (n == 0) == (single == 0)


def check_pixel_values(flags: "PreprocessFlags") -> None:
    """ValueError naming the options when --scale, --mean and --std do not map pixels 0..255 to usable model
    inputs (toolkit.preprocess.value_problem: finite, within +-65504, distinct in float16)."""
    if flags.mean is None or flags.std is None:
        return  # judged once the model's contract supplies the rest (PreprocessSpec.check)
    scale = DEFAULT_SCALE if flags.scale is None else flags.scale
    problem = value_problem(scale, flags.mean, flags.std)
    if problem:
        raise ValueError(f"--scale {scale:g} --mean {','.join(f'{m:g}' for m in flags.mean)} --std "
                         f"{','.join(f'{s:g}' for s in flags.std)}: {problem}")


def parse_pad_value(value: str) -> tuple[int, int, int]:
    """``V`` (gray) or ``R,G,B``: integers 0-255."""
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"expected an integer 0-255 or three (R,G,B), got {value!r}") from None
    if len(numbers) not in (1, 3) or not all(0 <= n <= 255 for n in numbers):
        raise ValueError(f"expected an integer 0-255 or three (R,G,B), got {value!r}")
    return numbers * 3 if len(numbers) == 1 else numbers


def _choice(value, choices, name):
    if value is not None and value not in choices:
        raise ValueError(f"{OPTION_NAMES[name]}: choose {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class PreprocessFlags:
    """The options as given; None where an option was not given."""

    labels: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    polarity: str | None = None
    preprocess: str | None = None  # "digit" or "image"
    fit: str | None = None
    resize: int | tuple[int, int] | None = None  # a (h, w) box only from a config file (stretch, letterbox)
    crop_pct: float | None = None
    interpolation: str | None = None
    channel_order: str | None = None
    pad_value: tuple[int, int, int] | None = None
    crop_offset: str | None = None  # only from a config file: Hugging Face crops at floor offsets
    input_size: tuple[int, int, int] | None = None  # only from a config file: (C, H, W) it was made for
    source: str | None = None  # the config file these came from, named in mismatch messages

    @classmethod
    def parse(cls, labels: str | None = None, mean: str | None = None, std: str | None = None,
              scale: float | None = None, polarity: str | None = None, preprocess: str | None = None,
              **image) -> "PreprocessFlags":
        """From option strings; ValueError names the option and what is wrong. ``image``: fit, resize,
        crop_pct, interpolation, channel_order, pad_value (strings or numbers as click gives them)."""
        def each(name, value, parse):
            try:
                return None if value is None else parse(value)
            except ValueError as e:
                raise ValueError(f"{OPTION_NAMES[name]}: {e}") from None

        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"--scale: must be a finite number above 0, got {scale}")
        if polarity is not None and polarity not in POLARITIES:
            raise ValueError(f"--polarity: choose {' or '.join(POLARITIES)}, got {polarity!r}")
        if scale is not None and not in_float32(scale):
            raise ValueError(f"--scale: {scale:g} is {'beyond' if scale > 1 else 'below'} float32's range (the "
                             "preprocessing computes in float32)")
        if unknown := set(image) - set(IMAGE_OPTIONS):
            raise TypeError(f"unknown preprocessing options {sorted(unknown)}")
        _choice(preprocess, MODES, "preprocess")
        _choice(image.get("fit"), FITS, "fit")
        _choice(image.get("interpolation"), tuple(INTERPOLATIONS), "interpolation")
        _choice(image.get("channel_order"), CHANNEL_ORDERS, "channel_order")
        resize, crop_pct = image.get("resize"), image.get("crop_pct")
        if resize is not None and not (isinstance(resize, int) and resize >= 1):
            raise ValueError(f"--resize: a length in pixels of at least 1, got {resize!r}")
        if crop_pct is not None and not (math.isfinite(crop_pct) and 0 < crop_pct <= 1):
            raise ValueError(f"--crop-pct: a fraction above 0 and at most 1, got {crop_pct}")
        flags = cls(labels=each("labels", labels, parse_labels), mean=each("mean", mean, lambda v: parse_numbers(v, "mean")),
                    std=each("std", std, lambda v: parse_numbers(v, "std")), scale=scale, polarity=polarity,
                    preprocess=preprocess, fit=image.get("fit"), resize=resize, crop_pct=crop_pct,
                    interpolation=image.get("interpolation"), channel_order=image.get("channel_order"),
                    pad_value=each("pad_value", image.get("pad_value"), parse_pad_value))
        check_pixel_values(flags)
        return flags

    @property
    def given(self) -> bool:
        return any(getattr(self, name) is not None for name in OPTION_NAMES)

    @property
    def mode(self) -> str:
        return self.preprocess or "digit"

    def usage_problem(self) -> str | None:
        """The first combination of options that cannot be meant (a usage error), or None."""
        image_given = [OPTION_NAMES[n] for n in IMAGE_OPTIONS if getattr(self, n) is not None]
        if image_given and self.mode != "image":
            return f"{image_given[0]} is an image-pipeline option: it needs --preprocess image"
        if self.mode == "image" and self.polarity is not None:
            return "--polarity is a digit-pipeline option (--preprocess digit)"
        if self.resize is not None and self.crop_pct is not None:
            return "--resize and --crop-pct both say how far to resize: give one"
        if isinstance(self.resize, int) and self.fit not in (None, "crop"):
            return f"--resize sets the shorter side for --fit crop; with --fit {self.fit} use --crop-pct"
        return None

    def over(self, config: "PreprocessFlags") -> "PreprocessFlags":
        """These options, with what ``config`` (read from a config file) says where an option was not given.

        A geometry is taken whole: --fit, --resize or --crop-pct given here replace the config's geometry.
        --labels beside a config's labels must name as many (they then win). ValueError says why not.
        """
        if self.preprocess == "digit":
            raise ValueError(f"--preprocess digit contradicts {config.source}, which describes an image pipeline")
        if self.labels is not None and config.labels is not None and len(self.labels) != len(config.labels):
            raise ValueError(f"--labels names {len(self.labels)} labels but {config.source} names "
                             f"{len(config.labels)}: give one label per output")
        merged = {name: getattr(self, name) if getattr(self, name) is not None else getattr(config, name)
                  for name in (f.name for f in fields(self))}
        if any(getattr(self, n) is not None for n in ("fit", "resize", "crop_pct")):
            for name in ("fit", "resize", "crop_pct", "crop_offset"):
                merged[name] = getattr(self, name)
        return PreprocessFlags(**merged)

    @property
    def missing(self) -> list[str]:
        return [OPTION_NAMES[name] for name in REQUIRED if getattr(self, name) is None]


@dataclass(frozen=True)
class InputFacts:
    """What the model's input is, read from its graph (``toolkit.graph``) or given (``--input-shape``)."""

    channels: int
    height: int
    width: int
    layout: str = "NCHW"  # or "NHWC"
    batch: int | None = None  # a fixed batch size, or None when dynamic
    name: str = "input"
    output_name: str = "output"
    output_width: int | None = None  # None when the graph leaves it unknown until run time


def require_flags(path, flags: PreprocessFlags | None) -> PreprocessFlags:
    """``flags`` when complete; else MissingContract saying which options are missing and how to stamp."""
    missing = flags.missing if flags is not None else list(OPTION_NAMES.values())[:3]
    if not missing:
        return flags
    given = " (got " + ", ".join(o for n, o in OPTION_NAMES.items() if getattr(flags, n) is not None) + ")" \
        if flags is not None and flags.given else ""
    raise MissingContract(path, "has no toolkit metadata (classes, preprocessing); describe it with "
                                f"{' '.join(m + ' ...' for m in missing)}{given} [--scale 255] "
                                f"[--polarity light-on-dark], {STAMP_HINT}")


def _per_channel(path, values: tuple[float, ...], name: str, channels: int) -> float | tuple[float, ...]:
    if len(values) == 1:
        return values[0]
    if len(values) != channels:
        raise FlagsMismatch(path, f"{OPTION_NAMES[name]} gives {len(values)} values but the model's input has "
                                  f"{channels} channel(s): give one value, or one per channel")
    return values


def preprocess_from_flags(path, flags: PreprocessFlags | None, facts: InputFacts) -> tuple[list[str], PreprocessSpec]:
    """(classes, PreprocessSpec) for a model whose input is ``facts``; typed errors name ``path``."""
    flags = require_flags(path, flags)
    common = dict(height=facts.height, width=facts.width, pixel_scale=DEFAULT_SCALE if flags.scale is None else flags.scale,
                  mean=_per_channel(path, flags.mean, "mean", facts.channels),
                  std=_per_channel(path, flags.std, "std", facts.channels), layout=facts.layout, channels=facts.channels)
    if flags.input_size is not None and any(want not in (None, got) for want, got in
                                            zip(flags.input_size, (facts.channels, facts.height, facts.width))):
        described = "x".join("C" if v is None else str(v) for v in flags.input_size)
        raise FlagsMismatch(path, f"{flags.source} describes {described} (C x H x W) input but the graph takes "
                                  f"{facts.channels}x{facts.height}x{facts.width}")
    try:
        spec = PreprocessSpec(polarity=flags.polarity or DEFAULT_POLARITY, **common) if flags.mode == "digit" else \
            PreprocessSpec(mode="image", fit=flags.fit or "crop", resize=flags.resize, crop_pct=flags.crop_pct,
                           interpolation=flags.interpolation or "bilinear", channel_order=flags.channel_order or "rgb",
                           pad_value=flags.pad_value or (0, 0, 0), crop_offset=flags.crop_offset or "round", **common)
        spec.check()
    except ValueError as e:
        raise FlagsMismatch(path, str(e)) from None
    classes = list(flags.labels)
    if facts.output_width is not None and facts.output_width != len(classes):
        named = "--labels names" if flags.source is None or len(flags.labels) != len(classes) else \
            f"{flags.source} names"
        raise FlagsMismatch(path, f"the model has {facts.output_width} outputs but {named} {len(classes)} "
                                  "labels: give one label per output, in output order")
    return classes, spec


def contract_from_flags(path, flags: PreprocessFlags | None, facts: InputFacts,
                        output_kind: str = "logits") -> ModelContract:
    """The contract a toolkit export would have written, from the options and the input facts."""
    classes, spec = preprocess_from_flags(path, flags, facts)
    return ModelContract(input_name=facts.name, input_shape=[facts.batch or "batch", *spec.input_shape],
                         input_dtype="float32", output_name=facts.output_name, classes=classes, preprocess=spec,
                         exporter=DESCRIBED, output_kind=output_kind)


def check_agreement(path, contract: ModelContract, flags: PreprocessFlags) -> None:
    """Options given for a model that carries a contract must say what it says (compared as float32,
    the precision the preprocessing computes in); FlagsMismatch lists every difference."""
    spec = contract.preprocess
    differ = []
    if flags.labels is not None and list(flags.labels) != contract.classes:
        differ.append(f"--labels {','.join(flags.labels)} vs {','.join(contract.classes)}")
    for name, theirs in (("mean", spec.means), ("std", spec.stds)):
        ours = getattr(flags, name)
        if ours is not None and not _same(ours, theirs, spec.channels):
            differ.append(f"{OPTION_NAMES[name]} {','.join(map(str, ours))} vs {','.join(map(str, theirs))}")
    if flags.scale is not None and np.float32(flags.scale) != np.float32(spec.pixel_scale):
        differ.append(f"--scale {flags.scale:g} vs {spec.pixel_scale:g}")
    if flags.polarity is not None and flags.polarity != spec.polarity:
        differ.append(f"--polarity {flags.polarity} vs {spec.polarity}")
    if flags.preprocess is not None and flags.preprocess != spec.mode:
        differ.append(f"--preprocess {flags.preprocess} vs {spec.mode}")
    for name in ("fit", "interpolation", "channel_order", "pad_value"):
        ours = getattr(flags, name)
        if ours is not None and spec.mode == "image" and tuple(np.atleast_1d(ours)) != tuple(np.atleast_1d(getattr(spec, name))):
            differ.append(f"{OPTION_NAMES[name]} {_show(ours)} vs {_show(getattr(spec, name))}")
    if spec.mode == "image" and (flags.resize is not None or flags.crop_pct is not None):
        ours = resolve_resize(flags.fit or spec.fit, spec.height, spec.width, flags.resize, flags.crop_pct)
        if ours != spec.resize:
            given = f"--resize {flags.resize}" if flags.resize is not None else f"--crop-pct {flags.crop_pct:g}"
            differ.append(f"{given} (resize to {_show(ours)}) vs resize to {_show(spec.resize)}")
    if differ:
        raise FlagsMismatch(path, "carries a toolkit contract that the options contradict ("
                                  + "; ".join(differ) + "): leave the options out, the file says it all")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _same(ours: tuple[float, ...], theirs: tuple[float, ...], channels: int) -> bool:
    a = np.broadcast_to(np.asarray(ours, np.float32), (channels,)) if len(ours) in (1, channels) else None
    b = np.broadcast_to(np.asarray(theirs, np.float32), (channels,)) if len(theirs) in (1, channels) else None
    return a is not None and b is not None and bool((a == b).all())
