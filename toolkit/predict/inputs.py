"""Which files `toolkit predict` reads, in which order, and what it says about the rest.

Rules (documented in docs/predict.md):
* PATH arguments keep the order given. A file named on the command line is always
  tried, whatever its name. A folder is walked depth-first: its files in name order,
  then its subfolders in name order, so the order (and the output file) is the same
  on every run and machine.
* Inside folders, only files whose name ends in an image suffix are read; hidden
  entries (".name") are passed over; other files are counted as ignored.
* Each real directory is entered once, so symbolic-link loops cannot hang the walk.
* A missing path, an unreadable folder, a broken link or a folder with no image files
  becomes a skipped entry with its reason: it is listed, and the run ends with exit code 3.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import PurePath

from .decode import IMAGE_SUFFIXES


@dataclass
class Inputs:
    files: list[str] = field(default_factory=list)
    # Name of each file's parent folder (its label when that is a class name); one string per folder, shared.
    parents: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: list[str] = field(default_factory=list)  # non-image files met inside folders
    notes: list[str] = field(default_factory=list)

    def add(self, path: str, parent: str) -> None:
        self.files.append(path)
        self.parents.append(parent)


def collect(paths) -> Inputs:
    found = Inputs()
    visited: set[tuple[int, int]] = set()
    for arg in paths:
        arg = os.fspath(arg)
        try:
            st = os.stat(arg)
        except FileNotFoundError:
            reason = "broken symbolic link" if os.path.islink(arg) else "no such file or directory"
            found.skipped.append((arg, reason))
            continue
        except OSError as e:
            found.skipped.append((arg, f"cannot access ({e.strerror})"))
            continue
        if stat.S_ISDIR(st.st_mode):
            before_files, before_ignored = len(found.files), len(found.ignored)
            _walk(arg, st, found, visited)
            if len(found.files) == before_files:
                others = len(found.ignored) - before_ignored
                tail = f" ({others} other file(s) ignored)" if others else ""
                found.skipped.append((arg, f"folder holds no image files{tail}"))
        elif stat.S_ISREG(st.st_mode):
            found.add(arg, parent_name(arg))
        else:
            found.skipped.append((arg, "not a regular file or folder"))
    return found


def _walk(root: str, root_stat: os.stat_result, found: Inputs, visited: set) -> None:
    # An explicit stack instead of recursion: deep trees must not hit Python's recursion limit.
    stack = [(root, root_stat)]
    while stack:
        folder, st = stack.pop()
        key = (st.st_dev, st.st_ino)
        if key in visited:
            found.notes.append(f"{folder}: already visited (symbolic link loop or repeated folder); not read again")
            continue
        visited.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            found.skipped.append((folder, f"cannot list folder ({e.strerror})"))
            continue
        parent = PurePath(os.path.normpath(folder)).name
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = entry.path
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    subfolders.append((path, os.stat(path)))
                except OSError as e:
                    found.skipped.append((path, f"cannot access folder ({e.strerror})"))
                continue
            # splitext, not PurePath(...).suffix: same answer at a tenth of the cost, once per file
            if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                found.ignored.append(path)
                continue
            try:
                regular = entry.is_file()
            except OSError:
                regular = False
            if regular:
                found.add(path, parent)
            elif entry.is_symlink() and not os.path.exists(path):
                found.skipped.append((path, "broken symbolic link"))
            else:
                found.skipped.append((path, "not a regular file"))
        # Files of a folder come before its subfolders; subfolders in name order.
        stack.extend(reversed(subfolders))


def parent_name(path: str) -> str:
    return PurePath(os.path.normpath(path)).parent.name


def expected_label(path: str, classes) -> str | None:
    """The true label of an image in a labelled folder: its parent folder's name, if that is a class."""
    parent = parent_name(path)
    return parent if parent in classes else None
