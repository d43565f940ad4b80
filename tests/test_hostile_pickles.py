"""Checkpoints whose pickle would run code (issue 19, items 9 and 16), against the torch that is installed.

The refusal is classified from the pickle's opcodes (torch's public static check, or our own reading for the
protocols it cannot read), never from torch's message: torch 2.14 says "Unsupported global" for some globals
and "unsupported GLOBAL posix.system whose module posix is blocked" for others. Every route that reads weights
(inspect, export of a checkpoint, export --module --weights) says the file could execute code, names the global,
and the code never runs (a sentinel file it would create stays absent). Damaged files are never said to hold code.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from toolkit.errors import EXIT_ERROR  # noqa: E402
from toolkit.train.checkpoint import pickle_globals  # noqa: E402

class Runs:
    """Unpickling this calls ``function(*args)``; each args list would create the sentinel file."""

    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def payloads(sentinel: Path) -> dict:
    """name -> (object to pickle, the global the line must name)."""
    import builtins
    import subprocess as sp

    touch = f"open({str(sentinel)!r}, 'w').close()"
    return {  # names as the pickle writes them: protocols 0-2 use Python 2's (__builtin__.exec, commands.Popen)
        "os.system (a blocked module)": (Runs(os.system, (f"touch {sentinel}",)), "posix.system"),
        "builtins.exec": (Runs(builtins.exec, (touch,)), ".exec"),
        "builtins.eval": (Runs(builtins.eval, (touch,)), ".eval"),
        "subprocess.Popen": (Runs(sp.Popen, (["touch", str(sentinel)],)), ".Popen"),
        "open (writes)": (Runs(builtins.open, (str(sentinel), "w")), "io.open"),
    }


def _torch_save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _with_data_pkl(archive: bytes, data: bytes) -> bytes:
    """A real torch.save archive whose data.pkl is replaced (another pickle protocol, a cut stream)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, data if name.endswith("data.pkl") else zin.read(name))
    return out.getvalue()


def containers(obj) -> dict[str, bytes]:
    """The ways a hostile object reaches a .pth file."""
    plain = _torch_save({"w": torch.zeros(2)})
    return {"torch.save": _torch_save({"state_dict": {"w": obj}}),
            "bare pickle": pickle.dumps(obj, protocol=2),
            "archive, protocol 4 data.pkl": _with_data_pkl(plain, pickle.dumps(obj, protocol=4)),
            "archive, protocol 0 data.pkl": _with_data_pkl(plain, pickle.dumps(obj, protocol=0))}


def toolkit(*args):
    """In-process through click (the matrix is large); one test runs the real command line."""
    from click.testing import CliRunner

    from toolkit.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def one_line(proc, path) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == EXIT_ERROR, proc.stdout + proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"toolkit: error: {path}: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("container", ["torch.save", "bare pickle", "archive, protocol 4 data.pkl",
                                       "archive, protocol 0 data.pkl"])
def test_code_in_a_checkpoint_is_named_and_never_runs(tmp_path, container):
    sentinel = tmp_path / "ran"
    for name, (obj, global_name) in payloads(sentinel).items():
        path = tmp_path / "model.pth"
        path.write_bytes(containers(obj)[container])
        for command in (["inspect", path], ["export", path, "--out-dir", tmp_path / "out"]):
            line = one_line(toolkit(*command), path)
            assert "could execute code" in line and global_name in line, (name, command[0], line)
            assert not sentinel.exists(), f"{name}: the pickle's code ran"
        assert not (tmp_path / "out").exists()


@pytest.fixture
def user_module(tmp_path) -> Path:
    (tmp_path / "hostile_nets.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    return tmp_path


def test_export_module_refuses_code_in_its_weights(user_module):
    """Item 16: --weights is read like a checkpoint; the factory (the user's own code) is fine, the weights not."""
    sentinel = user_module / "ran"
    for name, (obj, global_name) in payloads(sentinel).items():
        weights = user_module / "w.pth"
        weights.write_bytes(_torch_save({"0.weight": obj}))
        proc = subprocess.run([sys.executable, "-m", "toolkit", "export", "--module", "hostile_nets:make",
                               "--weights", str(weights), "--input-shape", "1,28,28", "--labels",
                               "0,1,2,3,4,5,6,7,8,9", "--mean", "0.5", "--std", "0.5"],
                              capture_output=True, text=True, timeout=120, cwd=user_module)
        line = one_line(proc, weights)
        assert "could execute code" in line and global_name in line, (name, line)
        assert not sentinel.exists(), f"{name}: the weights' code ran"
    assert not list(user_module.glob("w.*onnx"))


def test_a_whole_module_saved_is_refused_as_types_weights_only_does_not_allow(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(_torch_save(torch.nn.Linear(784, 10)))
    line = one_line(toolkit("inspect", path), path)
    assert "torch.nn.modules.linear.Linear" in line and "weights_only=True does not allow" in line


@pytest.mark.parametrize("damage", ["data.pkl cut in half", "data.pkl replaced by zeros", "no data.pkl bytes"])
def test_a_damaged_archive_is_never_said_to_hold_code(tmp_path, damage):
    archive = _torch_save({"w": torch.zeros(4), "b": torch.ones(2)})
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    data = {"data.pkl cut in half": data[:len(data) // 2], "data.pkl replaced by zeros": bytes(len(data)),
            "no data.pkl bytes": b""}[damage]
    path = tmp_path / "model.pth"
    path.write_bytes(_with_data_pkl(archive, data))
    line = one_line(toolkit("inspect", path), path)
    assert "execute code" not in line and ("damaged" in line or "truncated" in line), line


def test_pickle_globals_reads_every_protocol_and_the_memo():
    evil = Runs(os.system, ("true",))
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert pickle_globals(pickle.dumps(evil, protocol=protocol)) == ["posix.system"], protocol
    # STACK_GLOBAL whose names come back from the memo (a hand-written stream: BINGET of memoised strings)
    stream = (b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94h\x00h\x01\x93\x8c\x04true\x85R.")
    assert pickle_globals(stream) == ["posix.system"]
    assert pickle_globals(pickle.dumps({"a": [1, 2.0, "x"]})) == []
    assert pickle_globals(pickle.dumps(evil)[:10]) is None
