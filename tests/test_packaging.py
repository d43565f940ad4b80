"""The wheel a user installs holds every module of the three packages (a non-editable install
is what an edge machine gets; the editable one used in development would hide a gap)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_module(tmp_path):
    import importlib.util
    import shutil

    # Build from a clean copy: setuptools reuses an in-tree build/ folder, whose stale files could hide a gap.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("toolkit", "train", "export"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"

    # Reuse the installed setuptools when there is one: an isolated build would fetch it again.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("toolkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for pkg in ("toolkit", "train", "export") for p in (ROOT / pkg).rglob("*.py")}
    assert expected, "no modules found"
    missing = sorted(expected - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    assert not any(n.startswith(("tests/", "samples/", "benchmarks/")) for n in names)
