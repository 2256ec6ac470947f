"""Dataset loaders on real files: Debian's Fashion-MNIST, sklearn digits, IDX files we write."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from components.data import (
    DataError,
    load_dataset,
    load_fashion_mnist,
    make_shapes,
    resolve_classes,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fmnist(root: Path, n: int = 12) -> None:
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_real_fashion_mnist_from_debian_package():
    train = load_dataset("fashion-mnist", FMNIST, "train")
    test = load_dataset("fashion-mnist", FMNIST, "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == np.uint8
    assert len(test) == 10000
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.class_names[7] == "sneaker"
    assert train.ids(np.array([0, 59999])) == ["fashion-mnist:train:0", "fashion-mnist:train:59999"]


def test_idx_reader_roundtrip(tmp_path):
    fake_fmnist(tmp_path)
    data = load_fashion_mnist(tmp_path, "test")
    assert data.images.shape == (12, 1, 28, 28)
    assert data.labels.tolist() == [i % 10 for i in range(12)]


def test_truncated_idx_names_the_file(tmp_path):
    fake_fmnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    with gzip.open(path, "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is truncated"):
        load_fashion_mnist(tmp_path, "train")


def test_not_gzip_names_the_file(tmp_path):
    fake_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist(tmp_path, "test")


def test_missing_dataset_directory_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere", "train")


def test_digits_split_is_disjoint_and_complete(digits):
    assert len(digits["train"]) + len(digits["test"]) == 1797
    assert digits["train"].images.shape[1:] == (1, 8, 8)
    assert digits["train"].images.max() == 255


def test_shapes_are_seeded_rgb():
    a, b = make_shapes("train", n=50), make_shapes("train", n=50)
    assert np.array_equal(a.images, b.images) and a.images.shape == (50, 3, 16, 16)
    assert not np.array_equal(a.images, make_shapes("test", n=50).images)


def test_resolve_classes_by_index_and_name():
    names = ["t-shirt/top", "trouser", "Sneaker"]
    assert resolve_classes([2, "trouser", "SNEAKER", "0"], names) == [0, 1, 2]
    with pytest.raises(DataError, match=r"unknown class\(es\) 'sneakers', 7"):
        resolve_classes(["sneakers", 7], names)


def write_cifar(root: Path, per_batch: int = 6) -> None:
    """CIFAR-10's python layout: data_batch_1..5 and test_batch, dicts of bytes keys."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(x) for x in rng.integers(0, 10, per_batch)]}
        with (root / name).open("wb") as f:
            pickle.dump(batch, f)


def test_cifar10_pickles(tmp_path):
    write_cifar(tmp_path)
    train = load_dataset("cifar10", tmp_path, "train")
    test = load_dataset("cifar10", tmp_path, "test")
    assert train.images.shape == (30, 3, 32, 32) and len(test) == 6
    assert train.class_names[7] == "horse"
    with (tmp_path / "data_batch_1").open("rb") as f:
        raw = pickle.load(f)
    # channel-first, as the format stores it: the first 1024 bytes are the red plane
    assert np.array_equal(train.images[0, 0].ravel(), raw[b"data"][0][:1024])


def test_cifar10_missing_or_corrupt_batch_names_the_file(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch .*data_batch_3"):
        load_dataset("cifar10", tmp_path, "train")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch is not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path, "test")
