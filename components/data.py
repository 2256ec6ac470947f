"""Image datasets, read offline with numpy/Pillow (no torchvision, nothing downloaded).

Every dataset is held as uint8 arrays in NCHW layout with integer labels; a sample's id is
`<dataset>:<split>:<index>` and stays stable for a given dataset file, so split manifests and
deletion requests can refer to it.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from components import datasets
from components.datasets import LoadOptions
from components.imageset import DataError, ImageSet  # a leaf: datasets.py shares them

FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]  # fmt: skip


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) + 4 + 4 * ndim
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt ({len(raw)} bytes, expected {expected})")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise DataError(f"missing {stem}(.gz) under {root}")


def load_fashion_mnist(path: str | Path, split: str) -> ImageSet:
    """Fashion-MNIST from its IDX files (Debian's dataset-fashion-mnist layout)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST directory not found: {root} "
            "(install it with `apt-get install dataset-fashion-mnist` or set data.path)"
        )
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels for {split}")
    return ImageSet("fashion-mnist", split, images[:, None], labels.astype(np.int64),
                    list(FASHION_MNIST_CLASSES))


def load_digits(split: str) -> ImageSet:
    """scikit-learn's bundled 8x8 digits (1,797 images); every 5th image is the test split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    is_test = np.arange(len(images)) % 5 == 0
    keep = is_test if split == "test" else ~is_test
    return ImageSet("digits", split, images[keep], bunch.target[keep].astype(np.int64),
                    [str(d) for d in range(10)])


SHAPE_CLASSES = ["square", "circle", "triangle", "cross"]


def make_shapes(split: str, n: int = 1200, size: int = 16, seed: int = 0) -> ImageSet:
    """A seeded RGB set of coloured shapes on dark backgrounds (4 classes).

    Args:
        split: "train" or "test" (a different seed stream each).
        n: number of images.
        size: image side in pixels.
        seed: base seed.

    Returns:
        The generated ImageSet.
    """
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.zeros((n, 3, size, size), np.uint8)
    labels = rng.integers(0, len(SHAPE_CLASSES), n)
    for i, label in enumerate(labels):
        r = rng.uniform(size * 0.2, size * 0.35)
        cy, cx = rng.uniform(r, size - r, 2)
        if label == 0:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        elif label == 1:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif label == 2:
            mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
        else:
            mask = ((abs(yy - cy) <= r / 3) | (abs(xx - cx) <= r / 3)) & \
                   (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        background = rng.integers(0, 60, 3)
        colour = rng.integers(120, 256, 3)
        images[i] = np.where(mask[None], colour[:, None, None], background[:, None, None])
    return ImageSet("shapes", split, images, labels.astype(np.int64), list(SHAPE_CLASSES))


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataError(f"missing CIFAR-10 batch {path} (data.path must be the "
                        "cifar-10-batches-py folder)")
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")  # noqa: S301 - the CIFAR format is pickle
        data = np.asarray(batch[b"data"], np.uint8)
        labels = np.asarray(batch[b"labels"], np.int64)
        images = data.reshape(len(data), 3, 32, 32)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from None
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_cifar10(path: str | Path, split: str) -> ImageSet:
    """CIFAR-10 from its python pickles (data_batch_1..5, test_batch), 3x32x32 uint8."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"CIFAR-10 directory not found: {root}")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_read_cifar_batch(root / n) for n in names]
    return ImageSet("cifar10", split, np.concatenate([p[0] for p in parts]),
                    np.concatenate([p[1] for p in parts]), list(CIFAR10_CLASSES))


def load_dataset(name: str, path: str | Path, split: str,
                 options: LoadOptions | None = None) -> ImageSet:
    """Load one split of a dataset by name.

    Args:
        name: "fashion-mnist", "cifar10", "digits", "shapes", or an image-file dataset
            ("imagefolder", "places365", "webdataset": components/datasets.py).
        path: directory of the dataset files, or s3://bucket/prefix for webdataset (ignored
            by the bundled and generated sets).
        split: "train" or "test".
        options: image size, per-class cap, channels, S3 endpoint, preset
            (components.datasets.load_options(params); None: the files as they are).

    Returns:
        The ImageSet.
    """
    options = options or datasets.LoadOptions()
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} (train or test)")
    if name in datasets.LOADERS:
        return datasets.load_image_files(name, str(path), split, options)
    if name == "fashion-mnist":
        images = load_fashion_mnist(path, split)
    elif name == "cifar10":
        images = load_cifar10(path, split)
    elif name == "digits":
        images = load_digits(split)
    elif name == "shapes":
        images = make_shapes(split)
    else:
        raise DataError(f"unknown dataset {name!r}")
    return datasets.adjust(images, options)


def resolve_classes(classes: list[int | str], class_names: list[str]) -> list[int]:
    """Turn class indices or names into indices, refusing unknown ones.

    Args:
        classes: indices (int or digit strings) or names, case-insensitive.
        class_names: the dataset's class names.

    Returns:
        Sorted unique class indices.
    """
    lowered = [c.lower() for c in class_names]
    out, bad = set(), []
    for c in classes:
        if isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
            i = int(c)
            (out.add(i) if 0 <= i < len(class_names) else bad.append(str(c)))
        elif c.lower() in lowered:
            out.add(lowered.index(c.lower()))
        else:
            bad.append(repr(c))
    if bad:
        raise DataError(
            f"unknown class(es) {', '.join(bad)}; this dataset has "
            + ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
        )
    return sorted(out)
