"""Packaging: one import namespace in both install modes.

The repository keeps train/ and export/ at its top, but they install as toolkit.train and
toolkit.export. A wheel (what an edge machine gets) must hold every module under that name and
nothing at the top level besides ``toolkit``; an editable install (development) must not put the
repository root on sys.path. In both, a user's own train.py/export.py in the working folder must
not be imported by `toolkit` or `python -m toolkit`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
from conftest import SOURCE_DIRS

# A folder as ML users have them: their own train.py and export.py, which must never run.
USER_TRAIN = 'raise SystemExit("the user\'s own train.py was imported")\n'
USER_EXPORT = 'raise SystemExit("the user\'s own export.py was imported")\n'


def test_wheel_holds_every_module_under_the_toolkit_namespace(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{installed}/{p.relative_to(ROOT / folder)}" for folder, installed in SOURCE_DIRS.items()
                for p in (ROOT / folder).rglob("*.py")}
    assert len(expected) > 30, "no modules found"
    missing = sorted(expected - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"toolkit"}, f"the wheel installs other top-level names: {sorted(top_level - {'toolkit'})}"


def _run(code: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *code.split("\0")], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def _check_namespace(tmp_path: Path, env_extra: dict | None, where: str) -> None:
    neutral = tmp_path / "neutral"
    neutral.mkdir()
    probe = ("import importlib.util, json, toolkit.train.data, toolkit.export.parity, toolkit.cli\n"
             "print(json.dumps({'train': importlib.util.find_spec('train') is not None,"
             " 'export': importlib.util.find_spec('export') is not None,"
             " 'toolkit': toolkit.cli.__file__}))")
    proc = _run("-c\0" + probe, neutral, env_extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout)
    assert found["train"] is False and found["export"] is False, f"top-level train/export importable: {found}"
    assert found["toolkit"].startswith(where), found

    user = tmp_path / "user"
    user.mkdir()
    (user / "train.py").write_text(USER_TRAIN)
    (user / "export.py").write_text(USER_EXPORT)
    checkpoint = user / "model.pth"
    # Commands that import the torch side (inspect of a checkpoint) and the edge side (--help).
    proc = _run("-m\0toolkit\0--help", user, env_extra)
    assert proc.returncode == 0 and "Usage: toolkit" in proc.stdout, proc.stderr[-2000:]
    proc = _run("-m\0toolkit\0inspect\0" + str(checkpoint), user, env_extra)
    assert "user's own" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 1 and "model.pth" in proc.stderr, proc.stderr  # no such file: a clean refusal
    proc = _run("-m\0toolkit\0export\0--help", user, env_extra)
    assert proc.returncode == 0 and "user's own" not in proc.stderr, proc.stderr[-2000:]


def test_wheel_install_imports_no_top_level_train_or_export(installed_wheel, tmp_path):
    target = installed_wheel
    # PYTHONPATH puts the unpacked wheel before this environment's (possibly editable) toolkit.
    _check_namespace(tmp_path, {"PYTHONPATH": str(target)}, str(target))


@pytest.mark.slow
def test_editable_install_imports_no_top_level_train_or_export(tmp_path):
    # An egg-info folder left in the repository by a build is a distribution too; the installed one has direct_url.json.
    urls = [json.loads(d.read_text("direct_url.json") or "{}") for d in metadata.distributions(name="toolkit")]
    if not any(u.get("dir_info", {}).get("editable") for u in urls):
        pytest.skip("this environment holds a regular install of toolkit (the wheel test covers it)")
    _check_namespace(tmp_path, None, str(ROOT))


def test_wheel_holds_the_serve_page(wheel):
    """`toolkit serve`'s page (GET /) is package data: without it an installed server has no page."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "pad.css", "pad.js"):
        assert f"toolkit/serve/page/{name}" in names, name
