"""Preprocessing options whose values parse but cannot be used (issue 19, items 4-6).

--mean/--std/--scale: numbers that make float32 inputs infinite, NaN, huge or indistinguishable are usage errors
when the options are parsed (never "the model's output is NaN", never garbage labels with exit 0); a negative
std is refused with the positive spelling of the same preprocessing. --labels: a value is a labels file only if
it names a regular file (a device, FIFO or directory is named as what it is), a comma list too long to be a path
is still a comma list, duplicates are found in one pass and a labels file is bounded in size.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from test_foreign_models import DIGITS, tiny_graph
from toolkit.cli import cli
from toolkit.errors import EXIT_USAGE
from toolkit.flags import MAX_LABELS_BYTES, PreprocessFlags, parse_labels
from toolkit.preprocess import INPUT_LIMIT, PreprocessSpec, value_problem

LABELS = ["--labels", ",".join(DIGITS)]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def usage_line(result) -> str:
    """The usage error's own line (click puts the usage synopsis above it)."""
    assert result.exit_code == EXIT_USAGE, result.output + result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture
def model(tmp_path, mnist) -> Path:
    path = tmp_path / "model.onnx"
    tiny_graph(path)
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")
    return path


def commands(model: Path) -> dict[str, list]:
    """Every command that takes the preprocessing options, as run on a model without a contract."""
    return {"predict": ["predict", model.parent / "digit.png", "--model", model, "--provider", "cpu"],
            "bench": ["bench", "--model", model, "--runs", "1", "--no-peak", "--no-progress", "--engines", "onnx"],
            "inspect": ["inspect", model],
            "draw": ["draw", "--model", model, "--provider", "cpu"],
            "stamp": ["export", model, "--out", model.parent / "stamped.onnx"]}


# ------------------------------------------------------------------ item 4: numbers that are not usable inputs

UNUSABLE = {  # options -> what the one line must say
    "mean 1e308 (inf in float32)": (["--mean", "1e308", "--std", "0.5"], "--mean", "float32"),
    "std 1e-50 (0 in float32)": (["--mean", "0.5", "--std", "1e-50"], "--std", "float32"),
    "scale 1e-300 (0 in float32)": (["--mean", "0.5", "--std", "0.5", "--scale", "1e-300"], "--scale", "float32"),
    "std 1e308 (every input 0)": (["--mean", "0.5", "--std", "1e308"], "--std", "float32"),
    "scale 1e300 (every input -mean/std)": (["--mean", "0.5", "--std", "0.5", "--scale", "1e300"], "--scale",
                                            "float32"),
    # cases of our own: each finite in float32, unusable only in combination
    "scale 1e30 (pixels vanish)": (["--mean", "0.5", "--std", "0.5", "--scale", "1e30"], "--scale 1e+30",
                                   "too close together"),
    "std 1e6 (inputs ~1e-7 apart)": (["--mean", "0.5", "--std", "1e6"], "--std 1e+06", "too close together"),
    "mean 3000 (float16 steps of 2)": (["--mean", "3000", "--std", "1"], "--mean 3000", "too close together"),
    "mean 1e7 (huge)": (["--mean", "1e7", "--std", "0.5"], "--mean 1e+07", "beyond +-65504"),
    "std 1e-6 (huge)": (["--mean", "0.5", "--std", "1e-6"], "--std 1e-06", "beyond +-65504"),
    "one channel of three": (["--mean", "0.5", "--std", "0.5,0.5,1e9"], "channel 2", "too close together"),
    "negative std": (["--mean", "0.5", "--std", "-0.5"], "--std", "standard deviation is positive"),
    "one negative std of three": (["--mean", "0.5", "--std", "0.5,-0.5,0.5"], "--std", "positive"),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_numbers_are_a_usage_error_naming_the_option(model, case):
    options, option, words = UNUSABLE[case]
    for name, command in commands(model).items():
        line = usage_line(invoke(*command, *LABELS, *options))
        assert option in line and words in line, (name, line)
    assert not (model.parent / "stamped.onnx").exists()


@pytest.mark.parametrize("options", [
    ["--mean", "0.5", "--std", "0.5"],  # the seed's Normalize
    ["--mean", "0.1307", "--std", "0.3081"],  # MNIST's statistics
    ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"],  # ImageNet's
    ["--mean", "0", "--std", "1", "--scale", "1"],  # raw 0-255
    ["--mean", "127.5", "--std", "127.5", "--scale", "1"],
    ["--mean", "0", "--std", "0.004", "--scale", "1"],  # 0..63750: still inside float16's range
    ["--mean", "0", "--std", "1000"],  # tiny but distinct steps
])
def test_usable_numbers_still_pass(options):
    values = dict(zip(options[::2], options[1::2]))
    flags = PreprocessFlags.parse(labels="0,1", mean=values["--mean"], std=values["--std"],
                                  scale=float(values.get("--scale", 255)))
    assert value_problem(flags.scale, flags.mean, flags.std) is None


def test_what_is_accepted_is_finite_bounded_and_distinct_in_float32():
    """A sweep over many magnitudes: every combination the check accepts gives 256 finite, distinct float32
    inputs within +-65504 through the real preprocessing, and every combination it refuses fails one of those
    in float16, the precision the fp16 variant computes in (the check is neither too loose nor arbitrary)."""
    rng = np.random.default_rng(0)
    accepted = refused = 0
    for _ in range(400):
        scale, mean, std = 10.0 ** rng.uniform(-3, 8), rng.choice([-1, 1]) * 10.0 ** rng.uniform(-3, 6), \
            10.0 ** rng.uniform(-7, 7)
        problem = value_problem(scale, (mean,), (std,))
        spec = PreprocessSpec(pixel_scale=scale, mean=mean, std=std)
        with np.errstate(all="ignore"):
            table = spec._values(np.arange(256, dtype=np.uint8))
            half = table.astype(np.float16)
        if problem is None:
            accepted += 1
            assert np.isfinite(table).all() and np.abs(table).max() <= INPUT_LIMIT
            assert len(np.unique(table)) == 256 and len(np.unique(half)) == 256
            spec.check()
        else:
            refused += 1
            assert not np.isfinite(half).all() or len(np.unique(half)) < 256, (scale, mean, std, problem)
            with pytest.raises(ValueError):
                spec.check()
    assert accepted > 50 and refused > 50, (accepted, refused)


def test_a_contract_carrying_unusable_numbers_is_refused_when_read(tiny_onnx):
    """The same rule guards a contract read from a file: a hostile stamped file cannot bring mean 1e30."""
    import json

    import onnx

    proto = onnx.load(str(tiny_onnx))
    for prop in proto.metadata_props:
        if prop.key == "toolkit.preprocess":
            spec = json.loads(prop.value)
            spec["mean"] = 1e30
            prop.value = json.dumps(spec)
    onnx.save(proto, str(tiny_onnx))
    result = invoke("predict", tiny_onnx, "--model", tiny_onnx, "--provider", "cpu")
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"toolkit: error: {tiny_onnx}: toolkit metadata is malformed") and "65504" in line, line


# ------------------------------------------------------------------ items 5 and 6: labels


def test_duplicates_among_100000_labels_are_found_in_one_pass(tmp_path):
    labels = [f"class{i}" for i in range(100_000)] + ["class77"]
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(labels))
    started = time.perf_counter()
    with pytest.raises(ValueError, match="names class77 more than once"):
        parse_labels(str(path))
    assert time.perf_counter() - started < 5  # was 94 s (a count per label)


def test_many_duplicates_are_summarised(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(["a", "b", "c", "d", "e", "f", "g"] * 3))
    with pytest.raises(ValueError, match=r"names a, b, c, d, e \(\+2 more\) more than once"):
        parse_labels(str(path))


def test_a_labels_file_over_the_limit_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "labels.txt"
    with open(path, "wb") as f:  # 200 MB of duplicate lines, sparse except for the first block
        f.write(b"dup\n" * 4096)
        f.truncate(200 * 1024 * 1024)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="larger than 16 MiB"):
        parse_labels(str(path))
    assert time.perf_counter() - started < 5
    path.write_bytes(b"x\ny\n" + b"\n" * (MAX_LABELS_BYTES - 4))  # exactly at the limit: read
    assert parse_labels(str(path)) == ("x", "y")


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "labels.fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind, words", [
    ("char device", "is a character device, not a labels file"),
    ("fifo", "is a FIFO (named pipe), not a labels file"),
    ("directory", "is a directory, not a labels file"),
    ("link to a device", "is a character device, not a labels file"),
    ("socket", "is a socket, not a labels file"),
])
def test_a_labels_value_that_exists_but_is_no_regular_file_says_what_it_is(model, tmp_path, kind, words, fifo):
    import socket

    value = {"char device": "/dev/zero", "fifo": str(fifo), "directory": str(tmp_path),
             "link to a device": str(tmp_path / "labels.txt")}.get(kind)
    if kind == "link to a device":
        os.symlink("/dev/zero", value)
    sock = None
    if kind == "socket":
        value = str(tmp_path / "labels.sock")
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(value)
    try:
        started = time.perf_counter()
        for name, command in commands(model).items():
            line = usage_line(invoke(*command, "--labels", value, "--mean", "0.5", "--std", "0.5"))
            assert f"'{value}' {words}" in line and "--labels" in line, (name, line)
        assert time.perf_counter() - started < 30  # a FIFO is never opened (it would block), /dev/zero never read
    finally:
        if sock is not None:
            sock.close()


@pytest.mark.parametrize("count", [5000, 50000])
def test_a_comma_list_longer_than_a_path_may_be_is_a_comma_list(count):
    value = ",".join(f"c{i}" for i in range(count))  # far beyond NAME_MAX and PATH_MAX
    assert parse_labels(value) == tuple(f"c{i}" for i in range(count))
    with pytest.raises(ValueError, match=r"label list '.*'\.\.\. \(\d+ chars\) names c0 more than once"):
        parse_labels(value + ",c0")


def test_the_refusal_is_one_line_in_a_real_process(model):
    """No RuntimeWarning from numpy's float32 overflow reaches stderr beside the usage error."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "toolkit", *map(str, commands(model)["predict"]), *LABELS,
                           "--mean", "1e308", "--std", "1e308", "--scale", "1e300"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_USAGE
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "float32's range" in proc.stderr.strip().splitlines()[-1]


def test_a_long_comma_list_through_the_cli_reaches_the_model(model, tmp_path):
    result = invoke(*commands(model)["predict"], "--labels", ",".join(f"c{i}" for i in range(5000)),
                    "--mean", "0.5", "--std", "0.5")
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.stderr
    assert "the model has 10 outputs but --labels names 5000 labels" in result.stderr


def test_a_regular_file_named_like_a_comma_list_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a,b").write_text("one\ntwo\nthree\n")
    assert parse_labels("a,b") == ("one", "two", "three")
    assert parse_labels("c,d") == ("c", "d")


def test_a_name_with_a_nul_byte_or_not_utf8_is_one_error(tmp_path):
    with pytest.raises(ValueError, match="neither a labels file"):
        parse_labels("bad\0name")
    path = tmp_path / "labels.txt"
    path.write_bytes(b"\xff\xfe\x00a\n")
    with pytest.raises(ValueError, match="cannot read labels file .*UnicodeDecodeError"):
        parse_labels(str(path))
