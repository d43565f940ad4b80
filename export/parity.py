"""The parity gate: does a file, reloaded from disk, compute what the eager model computes?

The eager model's logits are the reference. Each written file is loaded back the
way a user would load it (``torch.jit.load``, ``torch.export.load``; an ONNX Runtime CPU session that
also checks the file's own contract) and run on the same inputs: the 10,000 MNIST
test images and random images at batch sizes 1, 2, 7 and 64, so a batch axis that
was frozen at export time shows up as a failure.

A float export passes when every logit satisfies numpy's allclose rule,
``|out - ref| <= atol + rtol * |ref|``. The variants (INT8, FP16: rows of toolkit.formats with
``made_from``) are judged on accuracy instead, because their logits are meant to differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Callable

import numpy as np

from toolkit import formats as registry
from toolkit.errors import ModelError
from toolkit.preprocess import PreprocessSpec

from toolkit.text import first_line

from .torchscript_export import load_torchscript

RANDOM_BATCHES = (1, 2, 7, 64)
RANDOM_SEED = 0
CHUNK = 1024  # images per call when running the test set

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Reference:
    """Inputs and the eager model's logits for them."""

    test_x: np.ndarray
    test_y: np.ndarray
    test_logits: np.ndarray
    random_x: dict[int, np.ndarray] = field(default_factory=dict)
    random_logits: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float((self.test_logits.argmax(1) == self.test_y).mean())


def make_reference(model, test_images: np.ndarray, test_labels: np.ndarray, spec: PreprocessSpec) -> Reference:
    test_x = spec.normalize(test_images)
    rng = np.random.default_rng(RANDOM_SEED)
    # Random pixels rather than Gaussian noise: inputs stay in the range real images produce.
    random_x = {b: spec.normalize(rng.integers(0, 256, (b, spec.height, spec.width), dtype=np.uint8))
                for b in RANDOM_BATCHES}
    run = torch_runner(model.eval())
    return Reference(test_x=test_x, test_y=np.asarray(test_labels), test_logits=in_chunks(run, test_x),
                     random_x=random_x, random_logits={b: run(x) for b, x in random_x.items()})


def in_chunks(run: Runner, x: np.ndarray, size: int = CHUNK) -> np.ndarray:
    """The test set in slices: a user's large network on 10,000 images at once could exhaust memory."""
    return np.concatenate([np.asarray(run(x[i:i + size])) for i in range(0, len(x), size)])


# ---------------------------------------------------------------- loading written files

def torch_runner(module) -> Runner:
    """An eager or TorchScript module as numpy in, numpy out."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy().copy()

    return run


def torchscript_runner(path: str | os.PathLike) -> Runner:
    return torch_runner(load_torchscript(path)[0])


def pt2_runner(path: str | os.PathLike) -> Runner:
    """What a user of the file runs: the ExportedProgram's module, loaded with torch.export.load."""
    from .pt2_export import load_pt2

    return torch_runner(load_pt2(path)[0].module())


def onnx_runner(path: str | os.PathLike) -> Runner:
    """An ONNX Runtime CPU session whose input/output names come from the file's own contract."""
    from toolkit.runtime import create_session, read_contract

    session, _, _ = create_session(path, provider="cpu")
    contract = read_contract(session, path)

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([contract.output_name], {contract.input_name: x})[0]

    return run


class _Runners(Mapping):
    """Format name -> the runner its row names (toolkit.formats), imported when a file is validated."""

    def __getitem__(self, fmt: str) -> Callable[[str | os.PathLike], Runner]:
        return registry.load(registry.get(fmt).validator)

    def __iter__(self):
        return iter(registry.NAMES)

    def __len__(self) -> int:
        return len(registry.NAMES)


RUNNERS = _Runners()


# ---------------------------------------------------------------- comparing

@dataclass
class Comparison:
    """How far one format's logits are from the eager model's."""

    format: str
    max_abs_diff: float = 0.0  # over the test set and the random batches
    test_max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    outside_tolerance: int = 0
    compared: int = 0
    top1_agreement: float = 0.0
    test_accuracy: float = 0.0
    random_max_abs_diff: dict[int, float] = field(default_factory=dict)
    error: str | None = None  # the file did not load or run, or returned the wrong shape


def _diff(out: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> tuple[float, float, int]:
    out = out.astype(np.float64)
    ref = ref.astype(np.float64)
    # A NaN or Inf output is as far off as it gets, never "within tolerance" by accident.
    d = np.where(np.isfinite(out), np.abs(out - ref), np.inf)
    outside = int((~(d <= atol + rtol * np.abs(ref))).sum())  # fails closed: NaN is never within
    nz = ref != 0
    # numpy's definition of relative difference; it is large wherever a logit is near zero,
    # which is why the gate itself uses atol + rtol * |ref|.
    rel = float((d[nz] / np.abs(ref[nz])).max()) if nz.any() else 0.0
    return float(d.max()) if d.size else 0.0, rel, outside


def compare(fmt: str, run: Runner, ref: Reference, atol: float, rtol: float) -> Comparison:
    """Run ``run`` on every reference input and measure the differences."""
    c = Comparison(format=fmt)
    cases = [("test set", ref.test_x, ref.test_logits)]
    cases += [(f"batch {b}", ref.random_x[b], ref.random_logits[b]) for b in ref.random_x]
    for name, x, expected in cases:
        try:
            out = in_chunks(run, x)
        except Exception as e:  # a file that loads but cannot run this batch is a failed export
            c.error = f"running it on {name} (shape {list(x.shape)}) failed: {first_line(e)}"
            return c
        if out.shape != expected.shape:
            c.error = f"on {name} it returned shape {list(out.shape)}, expected {list(expected.shape)}"
            return c
        max_abs, max_rel, outside = _diff(out, expected, atol, rtol)
        c.max_abs_diff = max(c.max_abs_diff, max_abs)
        c.max_rel_diff = max(c.max_rel_diff, max_rel)
        c.outside_tolerance += outside
        c.compared += expected.size
        if name == "test set":
            c.test_max_abs_diff = max_abs
            pred = out.argmax(1)
            c.top1_agreement = float((pred == expected.argmax(1)).mean())
            c.test_accuracy = float((pred == ref.test_y).mean())
        else:
            c.random_max_abs_diff[x.shape[0]] = max_abs
    return c


def validate_file(fmt: str, path: str | os.PathLike, ref: Reference, atol: float, rtol: float) -> Comparison:
    """Load ``path`` from disk as ``fmt`` and compare it; a file that will not load is a failure too."""
    fmt = registry.get(fmt).name  # an earlier name of the format warns, and the comparison carries the one name
    try:
        run = RUNNERS[fmt](path)
    except ModelError as e:
        return Comparison(format=fmt, error=f"the written file does not load: {e.reason}")
    return compare(fmt, run, ref, atol, rtol)


# ---------------------------------------------------------------- judging

def parity_problem(c: Comparison, atol: float, rtol: float) -> str | None:
    """Why ``c`` fails the float parity gate, in one sentence; None if it passes."""
    if c.error:
        return f"{c.format} export is broken: {c.error}"
    if c.outside_tolerance:
        return (f"{c.format} logits differ from the eager model by up to {c.max_abs_diff:.3g} "
                f"(max relative {c.max_rel_diff:.3g}); {c.outside_tolerance:,} of {c.compared:,} logits exceed "
                f"atol {atol:g} + rtol {rtol:g}*|ref|; top-1 agreement {c.top1_agreement * 100:.2f}%")
    return None


def variant_problem(c: Comparison, float_accuracy: float, max_drop_points: float) -> str | None:
    """Why a variant (a row with made_from: INT8, FP16) fails its accuracy gate; None if it passes."""
    if c.error:
        return f"{c.format} export is broken: {c.error}"
    drop = (float_accuracy - c.test_accuracy) * 100
    if not drop <= max_drop_points + 1e-9:  # fails closed on NaN
        return (f"{c.format} test accuracy {c.test_accuracy * 100:.2f}% vs {float_accuracy * 100:.2f}% for float32: "
                f"{drop:.2f} points lost, the gate allows {max_drop_points:g}; "
                f"top-1 agreement {c.top1_agreement * 100:.2f}%")
    return None


int8_problem = variant_problem  # its earlier name: it judges every variant, FP16 too
