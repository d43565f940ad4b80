"""The declared import layers (pyproject's [tool.importlinter] contracts) hold.

import-linter reads the package from disk, and in the repository toolkit.train and toolkit.export
live in train/ and export/ (a package-dir mapping), so it is run on the installed layout: the wheel
unpacked into a folder. A new core module that imports torch or the torch side fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_import_contracts_are_kept(installed_wheel, tmp_path):
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.exists() or shutil.which("lint-imports"), "import-linter is not installed (the dev extra has it)"
    env = {**os.environ, "PYTHONPATH": str(installed_wheel)}
    proc = subprocess.run([str(lint if lint.exists() else "lint-imports"), str(ROOT / "pyproject.toml"),
                           "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]
