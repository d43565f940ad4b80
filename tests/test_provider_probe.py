"""Issue 17 item 5: `--provider auto` looks for an NVIDIA driver before it loads any CUDA library.

Measured in real processes: the peak RSS (the child's ru_maxrss, from wait4) of `toolkit predict samples/`
with `auto` against `--provider cpu`, and the shared objects a session with `auto` has mapped at exit.
On a machine with a driver these tests are skipped: there `auto` is meant to load CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_runtime_contracts import linear_onnx
from toolkit.machine import nvidia_driver_missing

ROOT = Path(__file__).resolve().parent.parent
TOOLKIT = [sys.executable, "-m", "toolkit"]
CUDA_LIBRARIES = ("libcudart", "libcudnn", "libcublas", "libcufft", "libcurand", "onnxruntime_providers_cuda")

pytestmark = pytest.mark.skipif(nvidia_driver_missing() is None, reason="this machine has an NVIDIA driver")


def peak_rss(args) -> tuple[int, int, str]:
    """(exit code, peak RSS in KiB, stderr) of one real process."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss, err


def test_the_probe_names_the_missing_driver():
    reason = nvidia_driver_missing()
    assert reason.startswith("no NVIDIA driver on this machine (") and "libcuda.so.1" in reason
    assert "/proc/driver/nvidia" in reason and "\n" not in reason


def test_auto_peaks_within_ten_percent_of_cpu(tmp_path):
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    runs = {}
    for provider in ("cpu", "auto", "cpu", "auto"):  # interleaved; the lower of two runs each
        code, rss, err = peak_rss([*TOOLKIT, "predict", "samples/", "--model", str(model), "--provider", provider])
        assert code == 0, err
        runs[provider] = min(runs.get(provider, rss), rss)
    assert runs["auto"] <= 1.10 * runs["cpu"], runs
    assert "no NVIDIA driver on this machine" in err and "using CPU" in err


def test_auto_maps_no_cuda_library(tmp_path):
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    code = ("import sys; from toolkit.runtime import create_session; "
            "print(create_session(sys.argv[1], 'auto')[1]); print(open('/proc/self/maps').read())")
    out = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, check=True).stdout
    used, maps = out.split("\n", 1)
    assert used == "cpu"
    assert "onnxruntime_pybind11_state" in maps  # the maps are really this process's, ORT loaded
    assert [lib for lib in CUDA_LIBRARIES if lib in maps] == []


@pytest.mark.parametrize("command", [["predict", "samples/0"], ["bench", "--engines", "onnx", "--runs", "2",
                                                                  "--warmup", "0", "--no-peak", "--no-progress"]])
def test_cuda_without_a_driver_is_one_line_and_exit_5(tmp_path, command):
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    args = [*TOOLKIT, command[0], *command[1:], "--model", str(model), "--provider", "cuda"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("toolkit: error: --provider cuda: "), proc.stderr
    assert "no NVIDIA driver on this machine" in lines[0] and "\x1b[" not in proc.stderr
