"""What an ONNX graph says about its own input and output, read through an onnxruntime session.

``onnx`` is not an edge dependency, so only the session's signatures are used: input count, element
type, shape (rank, layout, channels, size, batch) and the output's width. Whether the output is
already a probability cannot be read from signatures; ``outputs_are_probabilities`` decides it by
running the model (see docs/your-model.md, "Softmax detection").
"""

from __future__ import annotations

import numpy as np

from .errors import ModelError
from .flags import InputFacts

FLOAT = "tensor(float)"
PROBE_IMAGES = 8
PROBE_TOLERANCE = 1e-3  # a float32 softmax row sums to 1 within ~1e-6 per class


def input_facts(session, path) -> InputFacts:
    """The model's one image input and its class-score output, or ModelError saying why it cannot be fed."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelError(path, f"the graph has {len(inputs)} inputs ({names}); the toolkit feeds one image tensor")
    inp = inputs[0]
    if inp.type != FLOAT:
        raise ModelError(path, f"input {inp.name!r} is {inp.type}; the toolkit feeds float32 ({FLOAT})")
    shape = list(inp.shape)
    if len(shape) != 4:
        raise ModelError(path, f"input {inp.name!r} has {len(shape)} dimensions {shape}; expected 4: "
                               "batch, channels, height, width (NCHW) or batch, height, width, channels (NHWC)")
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if dims[1] is None and dims[3] is None:
        raise ModelError(path, f"input {inp.name!r} has shape {shape}: neither dimension 1 nor 3 is fixed, so "
                               "the channel count is unknown")
    # Channels are the small fixed dimension: NCHW unless only the last one is small (e.g. 28, 28, 1).
    nhwc = dims[1] is None or (dims[3] is not None and dims[3] < dims[1])
    layout, channels, (height, width) = ("NHWC", dims[3], dims[1:3]) if nhwc else ("NCHW", dims[1], dims[2:4])
    if channels not in (1, 3):
        raise ModelError(path, f"input {inp.name!r} has shape {shape}: {channels} channels ({layout}); the "
                               "toolkit feeds 1 (gray) or 3 (RGB or BGR; a digit model: the gray digit in each)")
    if height is None or width is None:
        raise ModelError(path, f"input {inp.name!r} has shape {shape}: its height and width must be fixed in the "
                               "graph (the image is scaled to them)")
    outputs = session.get_outputs()
    out = outputs[0]
    if out.shape and len(out.shape) != 2:  # an unknown shape is checked on the first run instead
        raise ModelError(path, f"output {out.name!r} has shape {list(out.shape)}; expected 2 dimensions: "
                               "batch, one score per class")
    width_out = out.shape[1] if out.shape and isinstance(out.shape[1], int) and out.shape[1] > 0 else None
    return InputFacts(channels=channels, height=height, width=width, layout=layout, batch=dims[0], name=inp.name,
                      output_name=out.name, output_width=width_out)


def outputs_are_probabilities(outputs: np.ndarray) -> bool:
    """Whether every row is already a probability distribution: all finite, in [0, 1], summing to 1.

    Applied to the model's outputs on probe images (random pixels and an empty canvas through the
    model's own preprocessing): a graph ending in Softmax passes on every input; logits do not sum
    to 1 on eight different images, except by a coincidence that has no practical chance. A graph
    whose outputs are probabilities is then never given a second softmax (its ranking would not
    change, but its confidences would be flattened towards 1/K).
    """
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim != 2 or not len(out) or not np.isfinite(out).all():
        return False
    tol = PROBE_TOLERANCE
    return bool(out.min() >= -tol and out.max() <= 1 + tol and np.abs(out.sum(axis=1) - 1).max() <= tol)


def probe_pixels(shape: tuple[int, ...], n: int = PROBE_IMAGES) -> np.ndarray:
    """uint8 probe images of one image's model-pixel ``shape`` (``PreprocessSpec.pixel_shape``):
    ``n - 1`` of random pixels (a fixed seed) and one empty canvas."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    images[-1] = 0
    return images
