"""File output: a file appears complete under its final name, or not at all; folders made for it
are removed again if the work fails.

Writers get a temporary path in the destination directory (same filesystem, so the final
rename is atomic); on any exception, KeyboardInterrupt included, the temporary file is
removed and an existing file at the destination is untouched. A full disk (or quota, file
size limit, I/O error) while writing becomes one OutputError naming the final path.

Without ``replace`` (no --force) the final step never clobbers: ``os.link`` fails atomically
when a file appeared at the destination during the run (another run, another program); the
result is then kept under the next free name (``out.1.csv``) and an OutputError says where.

An output name that is not a plain file (``destination``): a symbolic link to a regular file is followed (its
target is what --force replaces; the link stays); a dangling link is refused before any work (replacing it would
swap the link for a file). A character device or FIFO (``/dev/null``, ``/dev/full``, a named pipe), or a name that
goes through one of this process's descriptors (``/dev/stdout``, ``/proc/self/fd/1``), is written through, with
or without --force, since nothing is replaced: the complete file is made in the temporary folder first and then
appended to it (never truncated: ``--json /dev/stdout >> log`` keeps the log); a FIFO nobody reads is refused
rather than waited on. A block device or socket is refused. The node itself is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import OutputError


@dataclass(frozen=True)
class Destination:
    """Where the bytes for an output name go (the module docstring's rules)."""

    path: Path  # the name itself, or the regular file a symbolic link leads to
    stream: bool = False  # a character device, FIFO or descriptor: written through, never renamed over
    dangling: bool = False  # a symbolic link to nothing
    descriptor: int | None = None  # one of this process's open descriptors (/dev/stdout: 1): written to as it is


def destination(path: str | os.PathLike) -> Destination:
    """What ``path`` names, links followed: OutputError for a block device or a socket."""
    path = Path(path)
    try:
        os.lstat(path)
    except OSError:
        return Destination(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return Destination(path, dangling=True)
    except OSError as e:
        raise OutputError(path, f"cannot be examined ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        return Destination(path)  # the callers say what a directory is for them
    if stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        kind = "a block device" if stat.S_ISBLK(mode) else "a socket"
        raise OutputError(path, f"is {kind}; outputs are files, character devices (/dev/null) or FIFOs")
    descriptor = _own_descriptor(path)
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or descriptor is not None:
        return Destination(path, stream=True, descriptor=descriptor)
    return Destination(Path(os.path.realpath(path)) if path.is_symlink() else path)


def _own_descriptor(path: Path) -> int | None:
    """The descriptor number when ``path`` or a link on the way names one of this process's open descriptors
    (/dev/stdout, /proc/self/fd/1, /dev/fd/3): its file is an open stream, to be written on that descriptor (so
    the shell's offset is shared), never replaced or reopened under it."""
    own = {"self", str(os.getpid())}
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        if current in ("/dev/stdout", "/dev/stderr"):
            return 1 if current.endswith("out") else 2
        m = re.fullmatch(r"/(?:proc/([^/]+)|dev)/fd/(\d+)", current)
        if m and (m.group(1) is None or m.group(1) in own):
            return int(m.group(2))
        if not os.path.islink(current):
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return None


def check_writable(path: str | os.PathLike, *, force: bool) -> Path:
    """Fail early, before any expensive work, if ``path`` cannot be produced."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "is a directory, expected a file path")
    dest = destination(path)
    if dest.dangling:
        raise OutputError(path, f"is a symbolic link to {os.readlink(path)}, which does not exist; name the file "
                                "itself (the link is never replaced)")
    if dest.stream:
        return path  # written through: nothing is replaced, --force or not
    if dest.path.exists() and not force:
        via = f" (a symbolic link to {dest.path})" if dest.path != path else ""
        raise OutputError(path, f"already exists{via}; pass --force to replace it")
    check_parent_writable(dest.path)
    return path


def check_parent_writable(path: Path) -> None:
    """The folder that will hold ``path`` exists and takes new entries."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(path, f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(path, f"directory {parent} is not writable")


# The storage refused the bytes: nothing about the path itself is wrong.
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary path; move it onto ``path`` only if the block succeeds.

    ``replace`` (--force): an existing file is replaced atomically. Otherwise a file at ``path``
    is never replaced, even one that appeared while the block ran (see the module's docstring).
    """
    path = Path(path)
    dest = destination(path)
    if dest.stream:
        with _streamed(path, dest.descriptor) as tmp:
            yield tmp
        return
    path = dest.path
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    except OSError as e:
        raise OutputError(path, f"cannot write here ({e.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish(tmp_path, path, replace=replace)
    except BaseException as e:
        with contextlib.suppress(OSError):
            if not (isinstance(e, OutputError) and str(tmp_path) in str(e)):
                tmp_path.unlink()
        if isinstance(e, OSError) and e.errno in STORAGE_ERRORS:
            kept = "the existing file is kept" if path.exists() else "nothing was written"
            raise OutputError(path, f"could not be written: {e.strerror or e}; {kept}") from None
        raise


@contextlib.contextmanager
def _streamed(path: Path, descriptor: int | None) -> Iterator[Path]:
    """``atomic_path`` for a device, FIFO or descriptor: the whole file is made first, then appended to ``path``."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".toolkit-output.", suffix=".part")
    except OSError as e:
        raise OutputError(path, f"cannot make the temporary file ({e.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    keep = False
    try:
        try:
            yield tmp_path
        except OSError as e:
            if e.errno in STORAGE_ERRORS:
                raise OutputError(path, f"could not be written: {e.strerror or e}; nothing was written") from None
            raise
        try:
            if descriptor is not None:
                import sys

                for stream in (sys.stdout, sys.stderr):  # what this program printed comes first
                    with contextlib.suppress(Exception):
                        stream.flush()
            # O_NONBLOCK: a FIFO that nobody reads is refused at once (ENXIO) instead of blocking forever.
            flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
            fd = os.dup(descriptor) if descriptor is not None else os.open(path, flags)
        except OSError as e:
            keep = e.errno == errno.ENXIO
            reason = f"is a FIFO that no process reads; the results are in {tmp_path}" if keep else \
                f"cannot be opened for writing ({e.strerror})"
            raise OutputError(path, reason) from None
        try:
            if descriptor is None:
                os.set_blocking(fd, True)
            with open(tmp_path, "rb") as f, open(fd, "wb", closefd=False) as out:
                shutil.copyfileobj(f, out)
        except OSError as e:
            raise OutputError(path, f"could not be written: {e.strerror or e}") from None
        finally:
            os.close(fd)
    finally:
        if not keep:
            with contextlib.suppress(OSError):
                tmp_path.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, replace: bool = False, replaceable=None) -> Iterator[Path]:
    """``atomic_path`` for a directory (e.g. a Parquet dataset): a hidden sibling that takes the name at the end.

    Removed on any exception, and when the block removed it itself (work that keeps nothing partial).
    ``replaceable(path)``: with ``replace``, asked again just before an existing ``path`` is replaced; a reason
    (what is there is not an output this kind of work wrote, e.g. something put there during the run) keeps it,
    and the new directory goes to the next free name (an OutputError says where).
    """
    path = Path(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent if str(path.parent)
                                    else "."))
    except OSError as e:
        raise OutputError(path, f"cannot write here ({e.strerror})") from None
    try:
        yield tmp
        if tmp.exists():
            reason = replaceable(path) if replace and replaceable and os.path.lexists(path) else None
            if reason:
                kept = _keep_aside(tmp, path)
                raise OutputError(path, f"was not replaced: {reason}; the results are in {kept or tmp}")
            publish(tmp, path, replace=replace)
    except BaseException as e:
        if not (isinstance(e, OutputError) and str(tmp) in str(e)):
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, path: Path, *, replace: bool) -> None:
    """Give the finished file or directory ``tmp`` the name ``path``, with a plain open()'s or mkdir's mode.

    ``replace`` (--force): what is at ``path`` is replaced (a directory is moved aside first, so the new one is
    never mixed with the old). Otherwise nothing at ``path`` is replaced, even what appeared while the work ran:
    the result is then kept under the next free name and an OutputError says where.
    """
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~_umask())  # mkstemp's 0600, mkdtemp's 0700
    if replace and not os.path.islink(path):  # a link that appeared meanwhile is never swapped for our file
        if tmp.is_dir() and os.path.lexists(path):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=tmp.parent))
            os.rename(path, old / "replaced")
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        return
    if not _place(tmp, path):
        kept = _keep_aside(tmp, path)
        raise OutputError(path, "appeared while this run was writing it and was left untouched; the results are in "
                                f"{kept or tmp} instead")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def _place(src: Path, dst: Path) -> bool:
    """Give ``src`` the name ``dst`` unless something has it: checked by the kernel for a file (a hard link); a
    directory cannot be linked, so it is checked just before the rename."""
    if src.is_dir():
        if os.path.lexists(dst):
            return False
        os.rename(src, dst)
        return True
    return _link_no_clobber(src, dst)


def _link_no_clobber(src: Path, dst: Path) -> bool:
    """Give ``src`` the name ``dst`` unless ``dst`` exists (checked atomically by the kernel)."""
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
    # A filesystem without hard links (FAT, some network mounts): the best a plain rename can do.
    if os.path.lexists(dst):
        return False
    os.replace(src, dst)
    return True


def _keep_aside(tmp: Path, path: Path) -> Path | None:
    """The first free visible name beside ``path``: out.csv -> out.1.csv, out.2.csv, ..."""
    for n in range(1, 1000):
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        with contextlib.suppress(FileExistsError):
            if _place(tmp, candidate):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    tmp.unlink()
                return candidate
    return None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, replace: bool = False) -> Iterator[BinaryIO]:
    """``atomic_path`` with the temporary file open for binary writing: for output written while work goes on."""
    with atomic_path(path, replace=replace) as tmp, open(tmp, "wb") as f:
        yield f


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two names reach one file: symlinks, ``./x`` against ``x``, hard links, case-folding filesystems."""
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = False) -> None:
    with atomic_path(path, replace=replace) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, *, replace: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), replace=replace)


def write_json(path: str | os.PathLike, data, *, replace: bool = False) -> None:
    """Every JSON file the toolkit writes (reports, metrics): indented, and strict JSON, which has no NaN or
    Infinity: a non-finite float is written as the string Python prints for it ("nan", "inf")."""
    write_text(path, json.dumps(_finite(data), indent=2) + "\n", replace=replace)


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


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
