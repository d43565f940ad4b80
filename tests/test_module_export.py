"""`toolkit export --module package.module:factory --weights W --input-shape C,H,W`: a user's own network file,
written here into tmp_path, trained briefly with plain torch, exported and gated through the CLI, then predicted
through the CLI; every class of bad module, factory, weights, shape and labels gets one line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from toolkit.cli import cli
from toolkit.errors import EXIT_ERROR, EXIT_USAGE

DIGITS = ["--labels", "0,1,2,3,4,5,6,7,8,9", "--mean", "0.5", "--std", "0.5"]

USER_CODE = '''
import torch
from torch import nn


class Net(nn.Module):
    """Not a toolkit class: its own layer names, a conv, an optional softmax at the end."""

    def __init__(self, channels=1, size=28, classes=10, softmax=False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Linear(8 * (size // 2) ** 2, classes)
        self.softmax = softmax

    def forward(self, x):
        y = self.head(self.body(x))
        return torch.softmax(y, dim=1) if self.softmax else y


def make():
    return Net()


def make_rgb32():
    return Net(channels=3, size=32)


def make_softmax():
    return Net(softmax=True)


NOT_CALLABLE = 3


def returns_int():
    return 3


def raises():
    raise RuntimeError("boom")


class Factories:
    small = staticmethod(make)
'''


def invoke(*args):
    result = CliRunner().invoke(cli, [*map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback the user would have seen
    return result


_count = iter(range(10**6))


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    """A fresh package <name>/nets.py under tmp_path/src, on sys.path; returns (folder, package name).

    Each test gets its own package name: an imported module stays in sys.modules for the session."""
    name = f"usernets_{next(_count)}"
    src = tmp_path / "src"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text("")
    (src / name / "nets.py").write_text(USER_CODE)
    (src / name / "broken.py").write_text("raise ImportError('needs a library that is not installed')\n")
    monkeypatch.syspath_prepend(str(src))
    return src, name


def _load_user_module(src: Path, name: str):
    import importlib

    return importlib.import_module(f"{name}.nets")


def _train_briefly(model, mnist, steps=150):
    """The user's own training, no toolkit code: plain tensors, Adam, ToTensor+Normalize(0.5, 0.5) arithmetic."""
    torch.manual_seed(0)
    x = torch.from_numpy(mnist.train_images[:6000].astype(np.float32) / 255).sub(0.5).div(0.5).unsqueeze(1)
    y = torch.from_numpy(mnist.train_labels[:6000]).long()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.nll_loss(torch.log(model(x[idx]) + 1e-9), y[idx]) if model.softmax else \
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _own_accuracy(model, mnist, n) -> float:
    x = torch.from_numpy(mnist.test_images[:n].astype(np.float32) / 255).sub(0.5).div(0.5).unsqueeze(1)
    with torch.inference_mode():
        return float((model(x).argmax(1).numpy() == mnist.test_labels[:n]).mean())


def _write_pngs(folder: Path, mnist, n: int) -> Path:
    for i in range(n):
        target = folder / str(int(mnist.test_labels[i])) / f"{i:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mnist.test_images[i]).save(target)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["make", "make_softmax"])
def test_trained_module_exports_through_the_gate_and_predicts_its_own_accuracy(user_pkg, mnist, tmp_path, factory):
    src, name = user_pkg
    nets = _load_user_module(src, name)
    model = _train_briefly(getattr(nets, factory)(), mnist)
    weights = tmp_path / "net.pth"
    torch.save(model.state_dict(), weights)

    out = tmp_path / "out"
    result = invoke("export", "--module", f"{name}.nets:{factory}", "--weights", weights, "--input-shape", "1,28,28",
                    *DIGITS, "--out-dir", out, "--formats", "onnx,torchscript", "--onnx-exporter", "legacy")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "net.export.json").read_text())
    assert report["passed"] and report["checkpoint_kind"] == "state_dict for a user module (--module)"
    assert report["architecture"].startswith(f"user module {name}.nets:{factory}")
    assert all(f["top1_agreement"] == 1.0 for f in report["formats"].values())

    import onnxruntime as ort

    from toolkit.contract import ModelContract

    session = ort.InferenceSession(str(out / "net.onnx"), providers=["CPUExecutionProvider"])
    contract = ModelContract.from_metadata(session.get_modelmeta().custom_metadata_map, out / "net.onnx")
    assert contract.output_kind == ("probabilities" if factory == "make_softmax" else "logits")
    assert contract.flops_per_image == 2 * (28 * 28 * 8 * 9 + 8 * 14 * 14 * 10)  # conv + linear, by hand
    assert contract.classes == [str(i) for i in range(10)]

    n = 400
    pngs = _write_pngs(tmp_path / "pngs", mnist, n)
    rows_csv = tmp_path / "pred.csv"
    result = invoke("predict", pngs, "--model", out / "net.onnx", "--provider", "cpu", "--workers", "0",
                    "-o", rows_csv)
    assert result.exit_code == 0, result.output
    with open(rows_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    ours = np.mean([r["label"] == r["expected"] for r in rows])
    assert len(rows) == n and abs(ours - _own_accuracy(model, mnist, n)) < 0.001
    assert ours > 0.5  # it did learn: the comparison above is not between two constant outputs
    if factory == "make_softmax":  # not softmaxed twice: confidences are the model's own probabilities
        with torch.inference_mode():
            p = model(torch.from_numpy(mnist.test_images[:1].astype(np.float32) / 255).sub(0.5).div(0.5)[None])
        first = next(r for r in rows if Path(r["path"]).name == "0000.png")
        assert float(first["confidence"]) == pytest.approx(float(p.max()), abs=1e-4)


@pytest.mark.slow
def test_three_channel_32px_module_with_per_channel_mean_std(user_pkg, tmp_path, mnist):
    src, name = user_pkg
    nets = _load_user_module(src, name)
    torch.manual_seed(1)
    weights = tmp_path / "rgb.pth"
    torch.save(nets.make_rgb32().state_dict(), weights)  # initialised only: the gate compares, it does not grade
    result = invoke("export", "--module", f"{name}.nets:make_rgb32", "--weights", weights, "--input-shape", "3,32,32",
                    "--labels", "0,1,2,3,4,5,6,7,8,9", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
                    "--formats", "onnx", "--onnx-exporter", "legacy")
    assert result.exit_code == 0, result.output
    onnx_path = tmp_path / "rgb.onnx"
    info = invoke("inspect", onnx_path)
    assert info.exit_code == 0 and "32" in info.output, info.output
    pngs = _write_pngs(tmp_path / "pngs", mnist, 20)
    result = invoke("predict", pngs, "--model", onnx_path, "--provider", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_module_in_the_current_directory_through_a_real_process(tmp_path):
    """A console script has no current directory on sys.path: the export command adds it, after site-packages."""
    (tmp_path / "cwd_nets.py").write_text(USER_CODE)
    weights = tmp_path / "w.pth"
    sys.path.insert(0, str(tmp_path))
    try:
        import cwd_nets  # noqa: F401  (the user's file, to save initial weights the way they would)

        torch.save(sys.modules["cwd_nets"].make().state_dict(), weights)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("cwd_nets", None)
    proc = subprocess.run([sys.executable, "-m", "toolkit", "export", "--module", "cwd_nets:make", "--weights",
                           "w.pth", "--input-shape", "1,28,28", *DIGITS, "--formats", "onnx", "--onnx-exporter",
                           "legacy"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "w.onnx").exists() and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- every class of bad input: one line

@pytest.fixture
def good_weights(user_pkg, tmp_path) -> Path:
    src, name = user_pkg
    path = tmp_path / "init.pth"
    torch.save(_load_user_module(src, name).make().state_dict(), path)
    return path


def _bad(*args):
    result = invoke("export", *args)
    lines = result.output.strip().splitlines()
    # one error line (usage errors come after click's two usage lines and a blank one)
    assert "Traceback" not in result.output and len(lines) <= 4 and len([x for x in lines if "rror" in x]) == 1, \
        result.output
    return result


@pytest.mark.parametrize("spec, expected", [
    ("{pkg}.nowhere:make", "is not importable: no module named '{pkg}.nowhere'"),
    ("no_such_pkg_x.nets:make", "is not importable: no module named 'no_such_pkg_x'"),
    ("{pkg}.broken:make", "raised ImportError: needs a library that is not installed"),
    ("{pkg}.nets:missing", "has no attribute 'missing'"),
    ("{pkg}.nets:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable"),
    ("{pkg}.nets:returns_int", "returns_int() returned a int, not a torch.nn.Module"),
    ("{pkg}.nets:raises", "calling raises() raised RuntimeError: boom"),
])
def test_bad_module_or_factory_is_one_line(user_pkg, good_weights, tmp_path, spec, expected):
    name = user_pkg[1]
    result = _bad("--module", spec.format(pkg=name), "--weights", good_weights, "--input-shape", "1,28,28", *DIGITS)
    assert result.exit_code == EXIT_ERROR and expected.format(pkg=name) in result.output
    assert not list(tmp_path.glob("init.*onnx")) and not (tmp_path / "init.pt").exists()


def test_dotted_factory_attribute_is_accepted(user_pkg, good_weights):
    from toolkit.export.user_module import load_module
    from toolkit.flags import PreprocessFlags

    flags = PreprocessFlags.parse(labels="0,1,2,3,4,5,6,7,8,9", mean="0.5", std="0.5")
    loaded, model = load_module(f"{user_pkg[1]}.nets:Factories.small", good_weights, (1, 28, 28), flags)
    assert loaded.kind == "module" and loaded.config.num_classes == 10 and not model.training


def test_weights_that_do_not_fit_name_the_keys(user_pkg, tmp_path):
    src, name = user_pkg
    sd = _load_user_module(src, name).make().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["head.bias"]
    sd["head.weight"] = torch.zeros(3, 3)
    path = tmp_path / "other.pth"
    torch.save(sd, path)
    result = _bad("--module", f"{name}.nets:make", "--weights", path, "--input-shape", "1,28,28", *DIGITS)
    assert result.exit_code == EXIT_ERROR and str(path) in result.output
    for part in ("missing keys head.bias", "unexpected keys extra.weight",
                 "head.weight is (3, 3), expected (10, 1568)"):
        assert part in result.output


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("kind, expected", [
    ("missing", "no such file"),
    ("garbage", ""),
    ("code", "could execute code on load"),
    ("nan", "NaN/Inf value(s)"),
    ("list", "holds a list, not a state_dict"),
])
def test_bad_weights_file_is_one_line(user_pkg, tmp_path, kind, expected):
    src, name = user_pkg
    path = tmp_path / "w.pth"
    if kind == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif kind == "code":
        torch.save({"w": Evil()}, path)
    elif kind == "nan":
        sd = _load_user_module(src, name).make().state_dict()
        sd["head.bias"][0] = float("nan")
        torch.save(sd, path)
    elif kind == "list":
        torch.save([torch.zeros(1)], path)
    result = _bad("--module", f"{name}.nets:make", "--weights", path, "--input-shape", "1,28,28", *DIGITS)
    assert result.exit_code == EXIT_ERROR and str(path) in result.output and expected in result.output
    assert "code ran" not in result.output


@pytest.mark.parametrize("shape, code, expected", [
    ("1,28", EXIT_USAGE, "expected three integers C,H,W"),
    ("1,x,28", EXIT_USAGE, "expected three integers C,H,W"),
    ("1,4,4", EXIT_USAGE, "height and width 8 to 1024"),
    ("2,28,28", EXIT_ERROR, "does not run on input of shape (batch, 2, 28, 28)"),  # the net takes 1 channel
    ("1,32,32", EXIT_ERROR, "does not run on input of shape (batch, 1, 32, 32)"),
])
def test_bad_input_shape_is_one_line(user_pkg, good_weights, shape, code, expected):
    result = _bad("--module", f"{user_pkg[1]}.nets:make", "--weights", good_weights, "--input-shape", shape, *DIGITS)
    assert result.exit_code == code and expected in result.output


def test_channels_other_than_1_or_3_are_refused_by_the_options(user_pkg, tmp_path):
    """A 2-channel net runs, but the toolkit can feed only gray or RGB images."""
    src, name = user_pkg
    (src / name / "two.py").write_text(USER_CODE + "\n\ndef make2():\n    return Net(channels=2)\n")
    path = tmp_path / "two.pth"
    torch.save(_load_user_module(src, name).Net(channels=2).state_dict(), path)
    result = _bad("--module", f"{name}.two:make2", "--weights", path, "--input-shape", "2,28,28", *DIGITS)
    assert result.exit_code == EXIT_USAGE and "only 1 (gray) or 3" in result.output


def test_output_width_other_than_the_labels_is_refused(user_pkg, good_weights):
    result = _bad("--module", f"{user_pkg[1]}.nets:make", "--weights", good_weights, "--input-shape", "1,28,28",
                  "--labels", "cat,dog,bird", "--mean", "0.5", "--std", "0.5")
    assert result.exit_code == EXIT_USAGE and "has 10 outputs but --labels names 3" in result.output


@pytest.mark.parametrize("args, expected", [
    (["--module", "nocolon"], "not of the form package.module:factory"),
    (["--module", "a.b:c", "--input-shape", "1,28,28", *DIGITS], "--module needs --weights FILE"),
    (["--module", "a.b:c", "--weights", "w.pth", "--input-shape", "1,28,28"], "--module needs --labels"),
    (["model.pth", "--module", "a.b:c"], "or --module, not both"),
    (["model.pth", "--weights", "w.pth"], "--weights and --input-shape go with --module"),
    ([], "missing CHECKPOINT"),
    # A checkpoint carries its own contract: options that export would ignore are refused, each of them.
    (["model.pth", "--labels", "a,b"], "--labels describe an ONNX file to stamp"),
    (["model.pth", "--mean", "0.1", "--std", "0.3"], "--mean, --std describe an ONNX file to stamp"),
    (["model.pth", "--scale", "1"], "--scale describe an ONNX file to stamp"),
    (["model.pth", "--polarity", "dark-on-light"], "--polarity describe an ONNX file to stamp"),
])
def test_usage_errors(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.zeros(2)}, "model.pth")  # a checkpoint by content: export identifies it first
    result = _bad(*args)
    assert result.exit_code == EXIT_USAGE and expected in result.output


def test_help_says_the_factory_is_run():
    text = textwrap.dedent(invoke("export", "--help").output)
    assert "IMPORTS AND RUNS YOUR CODE" in text and "weights_only=True" in text
