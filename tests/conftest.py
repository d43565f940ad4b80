"""Shared fixtures: real MNIST, a real tiny training (seconds), a real ONNX export.

Everything here is session-scoped and built once per test run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Repository folder -> where it lives once installed (pyproject's package-dir mapping).
SOURCE_DIRS = {"toolkit": "toolkit", "train": "toolkit/train", "export": "toolkit/export"}
ARTIFACTS = Path(os.environ.get("TOOLKIT_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


# A test that needs one of these session fixtures waits for a real training or a wheel build (seconds):
# it is `slow` by construction, and one that needs the X server is `gui`, without a decorator to forget.
MARKED_BY_FIXTURE = {"tiny_run": "slow", "wheel": "slow", "xvfb": "gui", "foreign_models": "slow"}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture in MARKED_BY_FIXTURE.keys() & set(item.fixturenames):
            item.add_marker(MARKED_BY_FIXTURE[fixture])


@pytest.fixture(scope="session")
def mnist():
    from toolkit.train.data import load_mnist

    return load_mnist(quiet=True)


@pytest.fixture(scope="session")
def seed_model_class():
    """The seed notebook's network class, verbatim (pytorch-notes.md, MNIST example): its state_dict
    keys (model.1.weight ... model.13.bias) are the layout our checkpoints must keep loading."""
    from torch import nn

    class SimpleNN(nn.Module):
        def __init__(self):
            super(SimpleNN, self).__init__()
            self.model = nn.Sequential(
                nn.Flatten(),
                nn.Linear(28 * 28, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.1), nn.Dropout(0.3),
                nn.Linear(512, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.1), nn.Dropout(0.3),
                nn.Linear(256, 128), nn.BatchNorm1d(128), nn.LeakyReLU(0.1), nn.Dropout(0.3),
                nn.Linear(128, 10),
            )

        def forward(self, x):
            return self.model(x)

    return SimpleNN


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mnist):
    """A real 1-epoch training on 10,000 images (~90% test accuracy), written by the library."""
    from toolkit.train.run import TrainJob, train_to_files

    out = tmp_path_factory.mktemp("tiny") / "model.pth"
    summary = train_to_files(TrainJob(epochs=1, train_subset=10000, seed=0, device="cpu", progress=False), out=out)
    return out, summary


@pytest.fixture
def tiny_ckpt(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny checkpoint in this test's own tmp_path."""
    dst = tmp_path / "model.pth"
    shutil.copy(tiny_run[0], dst)
    return dst


@pytest.fixture(scope="session")
def tiny_onnx_session(tiny_run, tmp_path_factory) -> Path:
    from toolkit.export.onnx_export import contract_for, export_onnx
    from toolkit.train.checkpoint import build_model, load_checkpoint

    ck = load_checkpoint(tiny_run[0])
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(build_model(ck), path, contract_for(ck, 17))
    return path


@pytest.fixture
def tiny_onnx(tiny_onnx_session, tmp_path) -> Path:
    """A private copy of an exported ONNX model of the tiny checkpoint."""
    dst = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx_session, dst)
    return dst


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory) -> dict:
    """`toolkit export --int8` of the tiny checkpoint, once: the library's report dict (files under its paths)."""
    from toolkit.export.pipeline import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("export")
    return export_checkpoint(tiny_run[0], ExportOptions(int8=True, latency_runs=200), out_dir=out)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` would install, built once from a clean copy of the sources."""
    import importlib.util
    import shutil
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: setuptools reuses an in-tree build/ folder, whose stale files could hide a gap.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in SOURCE_DIRS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "dist"
    # Reuse the installed setuptools when there is one: an isolated build would fetch it again.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (built,) = out.glob("toolkit-*.whl")
    return built


@pytest.fixture(scope="session")
def installed_wheel(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked as pip installs it (no dependencies), for PYTHONPATH."""
    import subprocess
    import sys

    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target
