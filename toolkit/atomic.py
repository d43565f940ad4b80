"""File output: a file appears complete under its final name, or not at all; folders made for it
are removed again if the work fails.

Writers get a temporary path in the destination directory (same filesystem, so
``os.replace`` is atomic); on any exception, KeyboardInterrupt included, the
temporary file is removed and an existing file at the destination is untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import OutputError


def check_writable(path: str | os.PathLike, *, force: bool) -> Path:
    """Fail early, before any expensive work, if ``path`` cannot be produced."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "is a directory, expected a file path")
    if path.exists() and not force:
        raise OutputError(path, "already exists; pass --force to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(path, f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(path, f"directory {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    except OSError as e:
        raise OutputError(path, f"cannot write here ({e.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``atomic_path`` with the temporary file open for binary writing: for output written while work goes on."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def prepare_folder(folder: Path) -> Path | None:
    """Make sure ``folder`` exists and is writable; return the topmost folder this call created, if any."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "cannot create the output directory (a file has that name)")
    created = None
    if not folder.exists():
        created = folder.absolute()
        while not created.parent.exists():
            created = created.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(folder, f"cannot create the output directory ({e.strerror})") from None
    try:
        # A real file, not os.access: root passes os.access on read-only mounts and /sys.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(folder, f"output directory is not writable ({e.strerror})") from None
    return created


@contextlib.contextmanager
def removed_on_failure(folder: Path, created: Path | None):
    """A refused or failed export leaves no empty folder that it made itself."""
    try:
        yield
    except BaseException:
        if created is not None:
            with contextlib.suppress(OSError):  # rmdir only succeeds while empty: nothing else is removed
                level = folder.absolute()
                while True:
                    level.rmdir()
                    if level == created:
                        break
                    level = level.parent
        raise


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
