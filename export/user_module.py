"""A user's own PyTorch network for `toolkit export --module package.module:factory --weights W --input-shape C,H,W`.

The factory is the user's code and is run as it is: naming it on the command line is the user's
choice to run it (as with any Python import). The weights are read with ``torch.load(weights_only=True)``
only, so the weights file itself cannot run code. What comes out is the pair the export pipeline
takes for a toolkit checkpoint (a LoadedCheckpoint and the model in eval mode), so the same
exporters, parity gate and contract apply; the contract's classes and preprocessing come from the
command line's preprocessing options (toolkit.flags), its input shape from --input-shape.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from toolkit.atomic import file_sha256
from toolkit.errors import CheckpointError, UserModuleError
from toolkit.flags import InputFacts, PreprocessFlags, preprocess_from_flags
from toolkit.text import first_line
from toolkit.train.checkpoint import LoadedCheckpoint, check_finite, read_weights_only, state_dict_problems


MIN_SIDE, MAX_SIDE = 8, 1024  # below 8 px no digit survives the 20-of-28 box; above 1024 a batch of 10,000 won't fit


@dataclass(frozen=True)
class ModuleConfig:
    """Stands where a toolkit architecture's config stands in a LoadedCheckpoint (describe, FLOPs)."""

    arch: ClassVar[str] = "module"
    spec: str
    input_shape: tuple[int, int, int]
    parameters: int
    num_classes: int
    flops: int | None

    def describe(self) -> str:
        c, h, w = self.input_shape
        return (f"user module {self.spec} ({self.parameters:,} parameters, input {c}x{h}x{w}, "
                f"{self.num_classes} outputs)")

    def flops_per_image(self) -> int | None:
        return self.flops


def parse_module_spec(text: str) -> tuple[str, str]:
    """``package.module:factory`` -> (module, attribute path); ValueError says what the form is."""
    module, sep, attr = text.partition(":")
    names = [*module.split("."), *attr.split(".")]
    if not sep or not all(n.isidentifier() for n in names):
        raise ValueError(f"{text!r} is not of the form package.module:factory (Python names, one colon)")
    return module, attr


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``C,H,W`` -> three integers; ValueError names what is wrong. Channels are checked with the other options."""
    parts = [p.strip() for p in text.split(",")]
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r}: expected three integers C,H,W such as 1,28,28") from None
    if c < 1 or not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ValueError(f"{text!r}: channels must be at least 1, height and width {MIN_SIDE} to {MAX_SIDE}")
    return c, h, w


def import_factory(text: str, search_path: str | os.PathLike | None = None):
    """The callable ``text`` names. ``search_path`` (the current directory, for the CLI) is appended to sys.path,
    after every installed package, so a user's file can never shadow one."""
    module_name, attr = parse_module_spec(text)
    if search_path is not None and os.fspath(search_path) not in sys.path:
        sys.path.append(os.fspath(search_path))
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UserModuleError(text, f"module {module_name!r} is not importable: no module named {e.name!r} in the "
                                        "current directory or on PYTHONPATH") from None
        raise UserModuleError(text, f"importing {module_name!r} failed: {first_line(e)}") from None
    except (Exception, SystemExit) as e:  # their module's own code raised while importing
        raise UserModuleError(text, f"importing {module_name!r} raised {type(e).__name__}: {first_line(e)}") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UserModuleError(text, f"module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UserModuleError(text, f"{attr!r} is a {type(factory).__name__}, not a callable that builds the model")
    return factory


def build_user_model(text: str, factory):
    from torch import nn

    attr = parse_module_spec(text)[1]
    try:
        model = factory()
    except (Exception, SystemExit) as e:
        raise UserModuleError(text, f"calling {attr}() raised {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise UserModuleError(text, f"{attr}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_user_weights(model, weights: Path) -> dict:
    """Load ``weights`` strictly into ``model``; CheckpointError names missing/unexpected keys and shape mismatches."""
    import torch

    obj = read_weights_only(weights)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # toolkit's own or a trainer's wrapper
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CheckpointError(weights, f"holds a {type(obj).__name__}, not a state_dict (a dict of tensors, as "
                                       "torch.save(model.state_dict(), path) writes)")
    problems = state_dict_problems(model.state_dict(), obj)
    if problems:
        raise CheckpointError(weights, f"does not fit the module's model: {'; '.join(problems)}")
    check_finite(weights, obj)
    model.load_state_dict(obj, strict=True)
    return obj


DRY_BATCHES = (2, 1, 7)  # the parity gate runs random batches of 1, 2, 7 and 64; an export takes any batch size
NUMPY_FLOATS = ("float16", "float32", "float64")  # output dtypes ONNX Runtime can hand back as numpy arrays


def _dry_run(text: str, model, shape: tuple[int, int, int]):
    """Batches of zeros through the model: it must take the shape at every batch size tried and return one
    (batch, classes) float tensor of a dtype numpy has (not bfloat16)."""
    import torch

    ran: list[int] = []
    for batch in DRY_BATCHES:
        try:
            with torch.inference_mode():
                out = model(torch.zeros(batch, *shape))
        except Exception as e:  # whatever their forward raises for this shape
            what = f"{type(e).__name__}: {first_line(e)}"
            if ran:
                raise UserModuleError(text, f"the model runs at batch {', '.join(map(str, ran))} but not at batch "
                                            f"{batch} ({what}); an exported model takes any batch size, so its "
                                            "forward() must not depend on it") from None
            raise UserModuleError(text, f"the model does not run on input of shape (batch, "
                                        f"{', '.join(map(str, shape))}) (--input-shape): {what}") from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch \
                or not out.is_floating_point():
            what = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else \
                f"a {type(out).__name__}"
            raise UserModuleError(text, f"the model returns {what} for a batch of {batch}; expected one float "
                                        "tensor of shape (batch, classes)")
        dtype = str(out.dtype).removeprefix("torch.")
        if dtype not in NUMPY_FLOATS:
            raise UserModuleError(text, f"the model returns {dtype}, which numpy and ONNX Runtime's Python API cannot "
                                        "hand back: end forward() with .float()")
        ran.append(batch)
    return out


def _output_kind(text: str, model, spec) -> str:
    """"probabilities" when the model already ends in a softmax (predict must not apply another)."""
    import numpy as np
    import torch

    from toolkit.graph import outputs_are_probabilities, probe_pixels

    pixels = probe_pixels(spec.pixel_shape)
    try:
        with torch.inference_mode():
            out = model(torch.from_numpy(spec.normalize(pixels))).numpy()
    except Exception as e:  # their forward, at the probe's batch size
        raise UserModuleError(text, f"the model does not run on a batch of {len(pixels)} probe images "
                                    f"({type(e).__name__}: {first_line(e)})") from None
    return "probabilities" if outputs_are_probabilities(np.asarray(out)) else "logits"


def load_module(text: str, weights: str | os.PathLike, input_shape: tuple[int, int, int],
                flags: PreprocessFlags | None, search_path: str | os.PathLike | None = None):
    """(LoadedCheckpoint, model in eval mode) for the export pipeline, from the user's factory and weights."""
    from toolkit.train.flops import count_flops

    weights = Path(weights)
    if not weights.is_file():  # before running any of their code
        raise CheckpointError(weights, "no such file" if not weights.exists() else "not a file")
    model = build_user_model(text, import_factory(text, search_path))
    state_dict = load_user_weights(model, weights)
    model.eval()
    out = _dry_run(text, model, input_shape)
    c, h, w = input_shape
    classes, spec = preprocess_from_flags(text, flags, InputFacts(channels=c, height=h, width=w,
                                                                  output_width=int(out.shape[1])))
    try:
        flops = count_flops(model, input_shape)
    except Exception:  # the counter cannot follow every custom op; the contract then says FLOPs are unknown
        flops = None
    config = ModuleConfig(spec=text, input_shape=input_shape, num_classes=int(out.shape[1]), flops=flops,
                          parameters=sum(p.numel() for p in model.parameters()))
    loaded = LoadedCheckpoint(path=weights, sha256=file_sha256(weights), kind="module", state_dict=state_dict,
                              config=config, preprocess=spec, classes=classes,
                              output_kind=_output_kind(text, model, spec))
    return loaded, model
