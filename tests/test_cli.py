"""The CLI surface: every command's --help, start-up without torch, train end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.cli.options import exit_codes_help
from toolkit.errors import EXIT_CODES, EXIT_GATE, EXIT_USAGE

from conftest import ROOT

COMMANDS = ["train", "export", "inspect", "predict", "bench", "draw"]


@pytest.mark.parametrize("args", [["--help"]] + [[c, "--help"] for c in COMMANDS])
def test_help(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def _help_exit_codes(args) -> list[tuple[int, str]]:
    """The (code, meaning) rows under "Exit codes:" in a command's --help."""
    out = CliRunner().invoke(cli, args, terminal_width=200).output
    block = out.split("Exit codes:\n", 1)[1]
    rows = []
    for line in block.splitlines():
        code, _, meaning = line.strip().partition(" ")
        if not code.isdigit():
            break
        rows.append((int(code), meaning.strip()))
    return rows


def test_top_level_help_is_the_exit_code_table():
    assert _help_exit_codes(["--help"]) == list(EXIT_CODES)


def test_predict_help_codes_come_from_the_table():
    table = dict(EXIT_CODES)
    rows = _help_exit_codes(["predict", "--help"])
    assert [code for code, _ in rows] == [code for code in table if code != EXIT_GATE]  # predict has no gate
    assert dict(rows)[EXIT_USAGE] == table[EXIT_USAGE]  # a code predict does not reword keeps the table's meaning


def test_exit_codes_help_refuses_a_code_outside_the_table():
    with pytest.raises(ValueError, match="not in toolkit.errors.EXIT_CODES"):
        exit_codes_help({6: "a code nobody documented"})


def _markdown_exit_codes(path) -> list[tuple[int, str]]:
    """The rows of the table under a file's "## Exit codes" heading."""
    section = path.read_text(encoding="utf-8").split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|", 1) for line in section.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    return [(int(code), meaning.strip(" |")) for code, meaning in rows]


def test_readme_exit_code_table_is_the_table():
    # README may set names in `code` style; the words themselves must be the table's.
    rows = [(code, meaning.replace("`", "")) for code, meaning in _markdown_exit_codes(ROOT / "README.md")]
    assert rows == list(EXIT_CODES)


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")
                                        if "\n## Exit codes\n" in p.read_text(encoding="utf-8")))
def test_command_pages_use_only_the_tables_codes(page):
    codes = [code for code, _ in _markdown_exit_codes(ROOT / "docs" / page)]
    assert codes and set(codes) <= dict(EXIT_CODES).keys(), codes


@pytest.mark.parametrize("args", [["--help"]] + [[c, "--help"] for c in COMMANDS])
def test_help_does_not_import_torch(args):
    code = ("import sys; from toolkit.cli import main; sys.argv=['toolkit', *%r]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert 'onnx' not in sys.modules, 'onnx was imported'" % (args,))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_train_cli_and_inspect_json(tmp_path, mnist):
    runner = CliRunner()
    out = tmp_path / "m.pth"
    result = runner.invoke(cli, ["train", "--epochs", "1", "--train-subset", "3000", "--out", str(out),
                                 "--no-progress", "--recipe", "onecycle"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    info = runner.invoke(cli, ["inspect", str(out), "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    assert 0.5 < data["metrics"]["test_accuracy"] <= 1.0
    assert data["parameters"] == 784 * 512 + 512 + 2 * 512 + 512 * 256 + 256 + 2 * 256 + 256 * 128 + 128 + 2 * 128 + 128 * 10 + 10
    assert data["recipe"]["name"] == "onecycle" and data["preprocess"]["mean"] == 0.5
    text = runner.invoke(cli, ["inspect", str(out)])
    assert "784-512-256-128-10" in text.output and "test accuracy" in text.output
    again = runner.invoke(cli, ["train", "--epochs", "1", "--train-subset", "3000", "--out", str(out), "--no-progress"])
    assert again.exit_code == 1
    assert again.output.strip().splitlines()[-1] == f"toolkit: error: {out}: already exists; pass --force to replace it"


@pytest.mark.parametrize("args,code", [
    (["train", "--epochs", "0"], 2),
    (["train", "--recipe", "nope"], 2),
    (["inspect", "does-not-exist.pth"], 1),
])
def test_bad_arguments(args, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code
    assert "Traceback" not in result.output


def test_cuda_device_unavailable_is_exit_5(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(cli, ["train", "--device", "cuda", "--out", str(tmp_path / "m.pth"), "--no-progress"])
    assert result.exit_code == 5
    assert "no usable CUDA device" in result.output


@pytest.mark.parametrize("args", [["train", "--no-progress"], ["export", "model.pth"], ["inspect", "model.pth"]])
def test_torch_side_without_torch_is_one_line_exit_5(args, tmp_path, tiny_ckpt):
    """An edge install (no `train` extra) asked to train or export says what to install."""
    import os

    assert tiny_ckpt == tmp_path / "model.pth"  # the fixture's private copy, in this test's folder
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"toolkit: error: `toolkit {args[0]}` needs torch, which is not installed here; "
                     "install the training extra: pip install 'toolkit[train]'"]
    assert not (tmp_path / "model.pt").exists()
