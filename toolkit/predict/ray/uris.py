"""Inputs beyond local folders for --engine ray: s3://... and any other URI pyarrow.fs reads.

A URI is listed with the local walk's rules (inputs.collect): files of a prefix in name order before its
sub-prefixes, image suffixes only, hidden names passed over, the parent folder's name as the label.
"""

from __future__ import annotations

import os

import numpy as np

from ...errors import ImageError
from ..decode import IMAGE_SUFFIXES, decode_image
from ..inputs import Inputs, collect


def is_uri(path) -> bool:
    return "://" in os.fspath(path)


def collect_any(paths) -> tuple[Inputs, list[int], list[str]]:
    """inputs.collect's result for local paths and URIs alike, in argument order.

    Returns (inputs, source of each file: -1 local or an index into ``roots``, roots: the URI arguments).
    A URI is listed with the local walk's rules: files of a prefix in name order before its sub-prefixes,
    image suffixes only, hidden names passed over, the parent folder's name as the label.
    """
    found, sources, roots = Inputs(), [], []
    local: list[str] = []

    def flush_local():
        if local:
            part = collect(local)
            found.files += part.files
            found.parents += part.parents
            found.skipped += part.skipped
            found.ignored += part.ignored
            found.notes += part.notes
            sources.extend([-1] * len(part.files))
            local.clear()

    for arg in map(os.fspath, paths):
        if not is_uri(arg):
            local.append(arg)
            continue
        flush_local()
        roots.append(arg)
        before = len(found.files)
        _list_uri(arg, found)
        sources.extend([len(roots) - 1] * (len(found.files) - before))
    flush_local()
    return found, sources, roots


def _list_uri(uri: str, found: Inputs) -> None:
    import pyarrow.fs as pafs

    shown = uri.split("?", 1)[0].rstrip("/")  # query parameters (endpoint, scheme) configure, they name nothing
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            found.add(shown, _parent(shown))
            return
        if info.type == pafs.FileType.NotFound:
            found.skipped.append((shown, "no such file or directory"))
            return
        listing = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as e:
        found.skipped.append((shown, f"cannot list ({e})"))
        return
    root = root.rstrip("/")
    entries = []
    ignored = 0
    for entry in listing:
        if entry.type != pafs.FileType.File:
            continue
        parts = entry.path[len(root):].strip("/").split("/")
        if any(p.startswith(".") for p in parts):
            continue
        if os.path.splitext(parts[-1])[1].lower() not in IMAGE_SUFFIXES:
            found.ignored.append(f"{shown}/{'/'.join(parts)}")
            ignored += 1
            continue
        # Depth-first as the local walk: within a folder its files (0) before its subfolders (1), each by name.
        entries.append(([(1, p) for p in parts[:-1]] + [(0, parts[-1])], parts))
    if not entries:
        tail = f" ({ignored} other file(s) ignored)" if ignored else ""
        found.skipped.append((shown, f"folder holds no image files{tail}"))
    for _, parts in sorted(entries):
        path = f"{shown}/{'/'.join(parts)}"
        found.add(path, parts[-2] if len(parts) > 1 else _parent(shown))


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 2)[-2] if uri.count("/") > 3 else ""


# ---------------------------------------------------------------- on the cluster

_filesystems: dict[str, tuple] = {}


def read_uri(root: str, path: str, mode: str = "digit"):
    """The object at ``path`` (under ``root``) decoded for the pipeline ``mode`` (decode.decode_image)."""
    import pyarrow.fs as pafs

    if root not in _filesystems:
        fs, base = pafs.FileSystem.from_uri(root)
        _filesystems[root] = (fs, base.rstrip("/"), root.split("?", 1)[0].rstrip("/"))
    fs, base, shown = _filesystems[root]
    inside = base + path[len(shown):] if path != shown else base
    try:
        with fs.open_input_stream(inside) as f:
            data = f.read()
    except (OSError, ValueError) as e:
        raise ImageError(path, f"cannot read ({e})") from None
    return decode_image(data, mode, path)
