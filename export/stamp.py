"""`toolkit export theirs.onnx --labels ... --mean ... --std ... --out stamped.onnx`: a copy that carries the contract.

The contract is the one predict would build from the same options (toolkit.flags + toolkit.graph:
layout, channels, size, batch, whether the output is already a probability), so a stamped file behaves
exactly as the flag-described original, with no flags. Before anything is written the original must pass
onnx.checker, load in ONNX Runtime, have one output per label and give finite outputs on a random batch
and, when the labels are the digits 0-9, on real MNIST test digits (their accuracy is reported). The copy
is checked again after writing (contract read back, outputs identical) before it takes its final name;
the input file is only read.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.atomic import atomic_path, check_writable, file_sha256, same_path
from toolkit.contract import KEY_PREFIX, has_contract
from toolkit.errors import ModelError, OutputError, ValidationFailed
from toolkit.flags import PreprocessFlags
from toolkit.inspect import identify
from toolkit.preprocess import describe_image, to_model_pixels

from .onnx_export import check_onnx, graph_opset

DIGITS = [str(d) for d in range(10)]
RANDOM_IMAGES = 64
USER_IMAGES = 256  # --images DIR: at most this many of its files are run (sorted order)
LOW_ACCURACY = 0.5  # worth a word: a digit classifier below this on MNIST is likely fed the wrong way
PROTOBUF_LIMIT = 2**31 - 1  # bytes: the most one serialised ONNX file (a protobuf message) may hold
CHECK_BATCH = 64  # images per checking run: a bounded amount of work for --run-timeout
DIGIT_IMAGES = 1000  # the first MNIST test digits: enough to tell a working preprocessing from a wrong one


def is_onnx(path: str | os.PathLike) -> bool:
    """An existing ONNX file by content (a .pth, a missing or unreadable file: no; their loader says why)."""
    from toolkit.errors import ToolkitError

    try:
        return identify(path) == "onnx"
    except ToolkitError:
        return False


@dataclass
class StampReport:
    source: str
    out: str
    classes: list[str]
    preprocess: dict
    layout: str
    batch: int | str
    output_kind: str
    random_images: int
    digit_images: int  # 0 when the labels are not the digits 0-9
    digit_accuracy: float | None  # fraction of those predicted as their MNIST label
    user_images: int = 0  # --images DIR: files run through the model's own pipeline
    user_skipped: int = 0  # of DIR's files: could not be decoded
    user_top: dict | None = None  # class -> how many of the user images it was predicted for


@dataclass(frozen=True)
class StampChecks:
    """What the model is run on before it is stamped, besides random images, and how long each run may take.

    ``data_dir``: where MNIST is, for a model labelled with the digits 0-9. ``images``: a folder (or file) of real
    images, run through the model's own pipeline as predict reads them (finite outputs required; the predicted
    classes are reported), for models whose labels are not digits. ``run_timeout``: seconds per check batch of at
    most CHECK_BATCH images (toolkit.run_guard.STAMP_RUN_TIMEOUT by default; 0: none); the probe runs at open take
    at most PROBE_TIMEOUT each."""

    data_dir: str | os.PathLike | None = None
    images: str | os.PathLike | None = None
    run_timeout: float | None = None


def stamp_onnx(source: str | os.PathLike, flags: PreprocessFlags | None, out: str | os.PathLike,
               checks: StampChecks = StampChecks(), *, force: bool = False) -> StampReport:
    """Validate ``source`` as described by ``flags`` (run as ``checks`` says) and write a copy with the contract
    embedded at ``out``."""
    import onnx

    from toolkit.runtime import OpenOptions, Predictor

    source, out = Path(source), Path(out)
    if identify(source, expected="an ONNX model") != "onnx":
        raise ModelError(source, "is not an ONNX model; only ONNX files are stamped")
    if out.exists() and same_path(source, out):
        raise OutputError(out, "is the input model: the original is never modified, choose another --out")
    check_writable(out, force=force)
    check_onnx(source)
    proto = onnx.load(str(source), load_external_data=False)
    if has_contract({p.key: p.value for p in proto.metadata_props}):  # the definition predict uses
        raise ModelError(source, "already carries a toolkit contract: it needs no stamp (and no options)")
    inline = _external_data(proto, source, out)
    from toolkit.run_guard import STAMP_RUN_TIMEOUT

    bounded = OpenOptions(run_timeout=STAMP_RUN_TIMEOUT if checks.run_timeout is None else checks.run_timeout)
    # loads in ORT, reads the graph, probes the batch sizes it takes and the output (each run bounded)
    predictor = Predictor.open(source, "cpu", flags=flags, options=bounded)
    if inline:  # only after ONNX Runtime accepted where the data files are
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(proto, str(source.parent))
    contract, spec = predictor.contract, predictor.contract.preprocess
    random_x = spec.normalize(np.random.default_rng(0).integers(0, 256, (RANDOM_IMAGES, *spec.pixel_shape),
                                                                  dtype=np.uint8))
    reference = _finite(source, predictor, random_x, "random images")
    accuracy, digits = None, 0
    if contract.classes == DIGITS and spec.mode == "digit":
        accuracy, digits = _digit_accuracy(source, predictor, checks.data_dir)
    user = _user_images(source, predictor, checks.images) if checks.images is not None else (0, 0, None)

    contract = dataclasses.replace(contract, exporter="stamped by toolkit export", source_sha256=file_sha256(source),
                                   onnx_version=onnx.__version__, opset=graph_opset(source))
    # Their own keys are kept; a stray toolkit.* key (not a contract, see has_contract) is kept unless the contract
    # writes that key, and is read back as the contract's "extra", as predict reads it.
    written = {p.key: p.value for p in proto.metadata_props}
    written.update(contract.to_metadata())
    contract = dataclasses.replace(contract, extra={**{k[len(KEY_PREFIX):]: v for k, v in written.items()
                                                       if k.startswith(KEY_PREFIX)
                                                       and k not in contract.to_metadata()}, **contract.extra})
    del proto.metadata_props[:]
    for key, value in written.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(out, replace=force) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        check_onnx(tmp)
        stamped = Predictor.open(tmp, "cpu", options=bounded)  # no flags: the file alone must say it all
        if stamped.contract.to_metadata() != contract.to_metadata():
            raise ValidationFailed(f"{out}: the contract read back from the copy differs from the one written")
        if not np.array_equal(_outputs(stamped, random_x), reference):
            raise ValidationFailed(f"{out}: the stamped copy computes different outputs from the original")
    return StampReport(source=str(source), out=str(out), classes=contract.classes, preprocess=spec.to_dict(),
                       layout=spec.layout, batch=contract.input_shape[0], output_kind=contract.output_kind,
                       random_images=RANDOM_IMAGES, digit_images=digits, digit_accuracy=accuracy,
                       user_images=user[0], user_skipped=user[1], user_top=user[2])


def _external_data(proto, source: Path, out: Path) -> bool:
    """Whether tensors stored outside ``source`` (ONNX external data) are to be read into the copy: yes when the
    whole model fits one protobuf (2 GB), so the copy stands alone; beyond that the copy refers to the same data
    files, which resolve only from the same folder (they are never copied or modified), else OutputError.
    Only sizes are looked at here; ONNX Runtime judges where the files are before anything is read."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    infos = [ExternalDataInfo(t) for t in proto.graph.initializer if uses_external_data(t)]
    if not infos:
        return False
    size = proto.ByteSize()
    for info in infos:
        try:
            size += int(info.length or 0) or (source.parent / info.location).stat().st_size
        except (OSError, ValueError):  # a missing or odd location: ONNX Runtime names it when it opens the model
            pass
    if size < PROTOBUF_LIMIT:
        return True
    if not same_path(source.parent, out.parent if str(out.parent) else "."):
        files = sorted({info.location for info in infos})
        raise OutputError(out, f"{source} keeps {size / 1e9:.1f} GB of tensors in external data ({', '.join(files)}), "
                               f"more than one ONNX file may hold (2 GB): stamp it beside them, e.g. --out "
                               f"{source.with_name(out.name)}, where the copy reads the same data files")
    return False


def _outputs(predictor, x: np.ndarray) -> np.ndarray:
    """The model's outputs for ``x``, CHECK_BATCH images per run: each run is bounded by --run-timeout."""
    parts = [predictor.logits(x[i:i + CHECK_BATCH]) for i in range(0, len(x), CHECK_BATCH)]
    return np.concatenate(parts) if parts else predictor.logits(x)


def _finite(path: Path, predictor, x: np.ndarray, what: str) -> np.ndarray:
    outputs = _outputs(predictor, x)
    bad = int((~np.isfinite(outputs).all(axis=1)).sum())
    if bad:
        raise ValidationFailed(f"{path}: the model's output is NaN or infinite for {bad} of {len(x)} {what}")
    return outputs


def _user_images(path: Path, predictor, images) -> tuple[int, int, dict]:
    """(images run, files skipped, class -> count of top-1 predictions) for the first USER_IMAGES files."""
    from toolkit.errors import ImageError
    from toolkit.predict import prepare
    from toolkit.predict.inputs import collect

    files = collect([images]).files[:USER_IMAGES]
    if not files:
        raise ValidationFailed(f"--images {images}: no image files there to check {path} with")
    spec, pixels, skipped = predictor.contract.preprocess, [], 0
    for file in files:
        try:
            pixels.append(prepare(file, spec))
        except ImageError:
            skipped += 1
    if not pixels:
        raise ValidationFailed(f"--images {images}: none of its {len(files)} image files could be decoded")
    outputs = _finite(path, predictor, spec.normalize(np.stack(pixels)), f"images from {images}")
    counts = np.bincount(outputs.argmax(axis=1), minlength=len(predictor.classes))
    return len(pixels), skipped, {c: int(n) for c, n in zip(predictor.classes, counts) if n}


def _digit_accuracy(path: Path, predictor, data_dir) -> tuple[float, int]:
    """Accuracy on the first MNIST test digits, brought to the model's size the way predict does."""
    from toolkit.train.data import load_mnist

    data = load_mnist(data_dir, quiet=True)
    images, labels = data.test_images[:DIGIT_IMAGES], data.test_labels[:DIGIT_IMAGES]
    spec = predictor.contract.preprocess
    pixels = np.stack([to_model_pixels(image, spec) for image in images])
    outputs = _finite(path, predictor, spec.normalize(pixels), "MNIST test digits")
    return float((outputs.argmax(axis=1) == labels).mean()), len(images)


def render(report: StampReport) -> str:
    spec = report.preprocess
    lines = [f"{report.source}: {len(report.classes)} classes ({', '.join(report.classes)}), input {report.layout} "
             f"{spec['channels']}x{spec['height']}x{spec['width']}, "
             + (f"fixed batch {report.batch}" if isinstance(report.batch, int) else "dynamic batch")
             + f", output {report.output_kind}",
             f"preprocessing: x / {spec['pixel_scale']:g}, mean {spec['mean']}, std {spec['std']}, "
             + (spec["polarity"] if spec.get("mode", "digit") == "digit" else describe_image(spec)),
             f"finite outputs on {report.random_images} random images"]
    if report.digit_accuracy is not None:
        low = report.digit_accuracy < LOW_ACCURACY
        lines.append(f"MNIST test digits: {report.digit_accuracy:.2%} correct of the first {report.digit_images}"
                     + (" (low: are --mean/--std/--scale/--polarity what the model was trained with?)" if low else ""))
    if report.user_images:
        top = ", ".join(f"{c} {n}" for c, n in sorted(report.user_top.items(), key=lambda kv: -kv[1])[:5])
        lines.append(f"finite outputs on {report.user_images} of your images"
                     + (f" ({report.user_skipped} could not be decoded)" if report.user_skipped else "")
                     + f"; predicted: {top}")
    return "\n".join(lines)
