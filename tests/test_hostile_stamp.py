"""Stamping, `export --module` and bench on the cases the plain paths handle (issue 19, items 7 and 15).

export identifies its input by content before choosing between stamping and exporting, and says what a file is
(missing, empty, text, an image, a checkpoint named .onnx); export-only options given with a stamp are refused,
not ignored; "carries a toolkit contract" has one definition (toolkit.contract.has_contract) for the stamp and
predict; a model with external data is stamped whole (inlined below protobuf's 2 GB, beside its data above);
a user's network that outputs bfloat16 or runs at one batch size only is one line; a .pte that is no ExecuTorch
program is one line, never a crashed process.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from test_foreign_models import DIGITS, tiny_graph
from toolkit.cli import cli
from toolkit.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE

OPTIONS = ["--labels", ",".join(DIGITS), "--mean", "0.5", "--std", "0.5"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def last_line(result, code: int) -> str:
    assert result.exit_code == code, result.output + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ item 7: say what the file is

def _checkpoint_bytes() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, "PNG")
    return buf.getvalue()


NOT_ONNX = {  # what X.onnx holds -> (exit code, words of the one line)
    "text": (lambda: b"just some notes\n", EXIT_ERROR, "a text file, not an ONNX model to stamp"),
    "png": (_png, EXIT_ERROR, "a PNG image, not an ONNX model to stamp"),
    "empty": (lambda: b"", EXIT_ERROR, "empty file (0 bytes)"),
    "random bytes": (lambda: np.random.default_rng(1).bytes(2000), EXIT_ERROR, "unrecognised binary content"),
    "checkpoint named .onnx": (_checkpoint_bytes, EXIT_USAGE, "is a PyTorch checkpoint, not an ONNX model"),
    "missing": (None, EXIT_ERROR, "no such file"),
    "directory": ("dir", EXIT_USAGE, "is a directory"),  # click's own check of the argument
}


@pytest.mark.parametrize("kind", list(NOT_ONNX))
@pytest.mark.parametrize("options", [["--out", "Y.onnx"], OPTIONS[:2], [*OPTIONS, "--out", "Y.onnx"]],
                         ids=["--out", "--labels", "both"])
def test_export_says_what_its_input_is_before_stamping(tmp_path, kind, options):
    make, code, words = NOT_ONNX[kind]
    source = tmp_path / "X.onnx"
    if make == "dir":
        source.mkdir()
    elif make is not None:
        source.write_bytes(make())
    options = [str(tmp_path / o) if o == "Y.onnx" else o for o in options]
    line = last_line(invoke("export", source, *options), code)
    assert words in line, line
    assert "carries its own classes" not in line or kind == "checkpoint named .onnx", line
    if code == EXIT_ERROR:
        assert line.startswith(f"toolkit: error: {source}: "), line
    if kind == "checkpoint named .onnx":  # the advice fits what it is
        assert ("--out-dir" in line) if "--out" in options else ("carries its own classes" in line)
    assert not (tmp_path / "Y.onnx").exists()


@pytest.fixture
def theirs(tmp_path) -> Path:
    path = tmp_path / "theirs.onnx"
    tiny_graph(path)
    return path


@pytest.mark.parametrize("extra, named", [
    (["--int8"], "--int8"),
    (["--formats", "fp16"], "--formats"),
    (["--int8", "--formats", "onnx,fp16"], "--formats, --int8"),
    (["--out-dir", "elsewhere"], "--out-dir"),
    (["--opset", "13"], "--opset"),
    (["--atol", "0.1"], "--atol"),
])
def test_export_only_options_with_a_stamp_are_refused_not_ignored(theirs, tmp_path, extra, named):
    out = tmp_path / "stamped.onnx"
    line = last_line(invoke("export", theirs, *OPTIONS, "--out", out, *extra), EXIT_USAGE)
    assert all(n in line for n in named.split(", ")) and "stamping" in line, line
    assert not out.exists() and not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------ one definition of "carries a contract"

def _with_metadata(path: Path, props: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def test_a_stray_toolkit_key_is_no_contract_for_stamp_and_predict_alike(theirs, tmp_path, mnist):
    _with_metadata(theirs, {"toolkit.note": "made by hand", "author": "someone"})
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")
    line = last_line(invoke("predict", tmp_path / "digit.png", "--model", theirs, "--provider", "cpu"), EXIT_ERROR)
    assert "has no toolkit metadata" in line
    out = tmp_path / "stamped.onnx"
    assert invoke("export", theirs, *OPTIONS, "--out", out).exit_code == EXIT_OK
    info = invoke("inspect", out)
    assert info.exit_code == EXIT_OK, info.stderr
    assert "note: made by hand" in info.output and "author: someone" in info.output  # both kept
    assert invoke("predict", tmp_path / "digit.png", "--model", out, "--provider", "cpu").exit_code == EXIT_OK
    line = last_line(invoke("export", out, *OPTIONS, "--out", tmp_path / "again.onnx"), EXIT_ERROR)
    assert "already carries a toolkit contract" in line


# ------------------------------------------------------------------ external data

def external_model(folder: Path, big_floats: int, name: str = "model") -> Path:
    """A 10-class linear model plus a tensor of ``big_floats`` zeros kept in an external data file (sparse on disk),
    which the graph reads one element of (so it is really loaded)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(exist_ok=True)
    w = (np.random.default_rng(0).standard_normal((784, 10)) * 0.05).astype(np.float32)
    big = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[big_floats],
                      data_location=TensorProto.EXTERNAL)
    for key, value in (("location", f"{name}.data"), ("offset", "0"), ("length", str(4 * big_floats))):
        entry = big.external_data.add()
        entry.key, entry.value = key, value
    with open(folder / f"{name}.data", "wb") as f:
        f.truncate(4 * big_floats)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["z"]),
             helper.make_node("Gather", ["big", "i"], ["g"], axis=0), helper.make_node("Add", ["z", "g"], ["y"])]
    graph = helper.make_graph(nodes, "external", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["n", 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(w, "w"), big,
                               numpy_helper.from_array(np.array(0, np.int64), "i")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = folder / f"{name}.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_a_model_with_small_external_data_is_stamped_into_one_file(tmp_path, mnist):
    source = external_model(tmp_path / "src", 1000)
    out = tmp_path / "elsewhere" / "stamped.onnx"
    out.parent.mkdir()
    result = invoke("export", source, *OPTIONS, "--out", out)
    assert result.exit_code == EXIT_OK, result.output + result.stderr
    assert list(out.parent.iterdir()) == [out]  # the data is inside the copy
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")
    assert invoke("predict", tmp_path / "digit.png", "--model", out, "--provider", "cpu").exit_code == EXIT_OK


BEYOND_PROTOBUF = 540_000_000  # floats: 2.16 GB, beyond the 2 GB one protobuf message may hold


def test_a_model_beyond_2gb_stamped_elsewhere_is_refused_at_once(tmp_path):
    import time

    source = external_model(tmp_path / "src", BEYOND_PROTOBUF)
    out = tmp_path / "stamped.onnx"
    started = time.perf_counter()
    line = last_line(invoke("export", source, *OPTIONS, "--out", out), EXIT_ERROR)
    assert time.perf_counter() - started < 10  # decided from sizes, before 2 GB are read
    assert line.startswith(f"toolkit: error: {out}: ") and "2.2 GB" in line and "model.data" in line, line
    assert f"--out {source.with_name(out.name)}" in line
    assert not out.exists() and sorted(p.name for p in source.parent.iterdir()) == ["model.data", "model.onnx"]


@pytest.mark.slow
def test_a_model_beyond_2gb_is_stamped_beside_its_data(tmp_path, mnist):
    """~10 s and ~4.5 GB of memory (ONNX Runtime holds the 2.16 GB tensor once per session: source and copy)."""
    source = external_model(tmp_path, BEYOND_PROTOBUF)
    data = (tmp_path / "model.data").stat()
    out = tmp_path / "stamped.onnx"
    proc = subprocess.run([sys.executable, "-m", "toolkit", "export", str(source), *OPTIONS, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert out.stat().st_size < 1_000_000  # the tensors stay in model.data, which is not modified
    assert (tmp_path / "model.data").stat().st_mtime_ns == data.st_mtime_ns
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")
    proc = subprocess.run([sys.executable, "-m", "toolkit", "predict", str(tmp_path / "digit.png"), "--model",
                           str(out), "--provider", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_OK, proc.stderr


# ------------------------------------------------------------------ export --module: outputs and batch sizes

USER_NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, finish=None, batch=None, refuse=None):
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.finish, self.batch, self.refuse = finish, batch, refuse

    def forward(self, x):
        if self.refuse is not None and x.shape[0] == self.refuse:
            raise ValueError(f"no batch of {self.refuse}")
        flat = x.reshape(self.batch, -1) if self.batch else x.flatten(1)
        out = self.fc(flat)
        return self.finish(out) if self.finish else out


def bf16():
    return Net(finish=lambda y: y.to(torch.bfloat16))


def float8():
    return Net(finish=lambda y: y.to(torch.float8_e4m3fn))


def batch2():
    return Net(batch=2)


def not_at_8():
    return Net(refuse=8)


def not_at_7():
    return Net(refuse=7)
'''


@pytest.fixture
def user_nets(tmp_path, monkeypatch) -> Path:
    import torch
    from torch import nn

    (tmp_path / "hardened_nets.py").write_text(USER_NETS)
    torch.save({f"fc.{k}": v for k, v in nn.Linear(784, 10).state_dict().items()}, tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("hardened_nets", None)


@pytest.mark.parametrize("factory, words", [
    ("bf16", "the model returns bfloat16, which numpy and ONNX Runtime's Python API cannot hand back: end forward() "
             "with .float()"),
    ("float8", "the model returns float8_e4m3fn"),
    ("batch2", "the model runs at batch 2 but not at batch 1 (RuntimeError"),
    ("not_at_7", "the model runs at batch 2, 1 but not at batch 7 (ValueError: no batch of 7)"),
    ("not_at_8", "does not run on a batch of 8 probe images (ValueError: no batch of 8)"),
])
def test_a_user_network_with_unusable_outputs_or_batch_sizes_is_one_line(user_nets, factory, words):
    result = invoke("export", "--module", f"hardened_nets:{factory}", "--weights", "w.pth", "--input-shape",
                    "1,28,28", *OPTIONS, "--formats", "onnx")
    line = last_line(result, EXIT_ERROR)
    assert line.startswith(f"toolkit: error: hardened_nets:{factory}: ") and words in line, line
    assert not list(user_nets.glob("*.onnx")) and not list(user_nets.glob("*.pt"))


# ------------------------------------------------------------------ bench with a .pte that is no program

needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                      reason="executorch is not installed (the dev extra has it)")


PTE_BYTES = {"random bytes": lambda: np.random.default_rng(0).bytes(3000), "empty": lambda: b"",
             "an ONNX file": lambda: b"\x08\x08\x12\x07pytorch" + bytes(100),
             "cut header": lambda: b"<\x00\x00\x00ET"}


@pytest.mark.parametrize("kind", list(PTE_BYTES))
def test_a_pte_that_is_no_program_is_refused_before_executorch_sees_it(tmp_path, kind):
    """Random bytes used to abort the process inside ExecuTorch's loader (SIGABRT): the header is checked first
    (no executorch import needed to refuse)."""
    from toolkit.errors import ModelError
    from toolkit.export.executorch_export import load_executorch

    pte = tmp_path / "model.pte"
    pte.write_bytes(PTE_BYTES[kind]())
    with pytest.raises(ModelError, match="not an ExecuTorch program"):
        load_executorch(pte)


@needs_executorch
@pytest.mark.slow
def test_bench_with_a_pte_whose_body_is_corrupt_is_one_line(theirs, tmp_path):
    """A valid ET12 header and a random body crashed the process (SIGSEGV) under the loader's minimal
    verification: a real process (~30 s here: torch and executorch imports), so a crash would show as one."""
    model = tmp_path / "model.onnx"
    assert invoke("export", theirs, *OPTIONS, "--out", model).exit_code == EXIT_OK
    pte = tmp_path / "model.pte"
    pte.write_bytes(b"<\x00\x00\x00ET12" + np.random.default_rng(0).bytes(3000))
    proc = subprocess.run([sys.executable, "-m", "toolkit", "bench", "--model", str(model), "--engines", "executorch",
                           "--runs", "1", "--no-peak", "--no-progress"], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == EXIT_ERROR, (proc.returncode, proc.stderr[-2000:])
    assert lines[-1].startswith(f"toolkit: error: {pte}: executorch.runtime cannot load it"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
