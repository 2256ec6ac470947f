"""Write a dataset out as image files in ImageNet's layout (`train/<class>/`, `val/<class>/`).

Why: the image-file loaders (components/datasets.py) are what a platform team points at its
own data; ImageNet itself is not on this machine. Exporting a dataset we do have (Fashion-MNIST,
shapes, digits) into that exact layout lets the whole pipeline, `dvc exp run` included, run on
an ImageFolder dataset end to end, and lets anyone check that loading the files gives back the
same pixels as the built-in loader.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from components.data import DataError, ImageSet, load_dataset
from components.datasets import first_per_class


def folder_names(class_names: list[str]) -> list[str]:
    """One folder per class, named like an ImageNet WNID and readable: `n00000007_sneaker`.

    The index prefix keeps the sorted folder order equal to the label order, so class k of the
    source is class k of the exported set.
    """
    return [f"n{i:08d}_{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}"
            for i, name in enumerate(class_names)]


def write_imagefolder(images: ImageSet, split_dir: str | Path, per_class: int | None) -> int:
    """Write the first `per_class` images of every class as PNG files.

    Args:
        images: the split to write (uint8 N x C x H x W, 1 or 3 channels).
        split_dir: `<root>/train` or `<root>/val`; class folders are made under it.
        per_class: images kept per class, in index order (None: all).

    Returns:
        The number of files written.

    Raises:
        DataError: split_dir already holds files (an export never overwrites data).
    """
    split_dir = Path(split_dir)
    if split_dir.exists() and any(split_dir.iterdir()):
        raise DataError(f"{split_dir} is not empty: export to a new folder")
    names = folder_names(images.class_names)
    keep = np.flatnonzero(first_per_class(images.labels, per_class))
    for name in names:
        (split_dir / name).mkdir(parents=True, exist_ok=True)
    for index in keep:
        array = images.images[index]
        im = Image.fromarray(array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0)))
        im.save(split_dir / names[images.labels[index]] / f"{images.split}_{index:06d}.png")
    return len(keep)


def export_splits(dataset: str, source_path: str, root: str | Path,
                  per_class: int | None, val_per_class: int | None) -> dict[str, int]:
    """Write a dataset's train split to `root/train` and its test split to `root/val`.

    Args:
        dataset: a built-in dataset name (components.data.load_dataset).
        source_path: the dataset's files.
        root: the new export folder.
        per_class, val_per_class: images kept per class in train and val (None: all).

    Returns:
        Folder ("train", "val") -> images written.
    """
    root = Path(root)
    return {folder: write_imagefolder(load_dataset(dataset, source_path, split), root / folder,
                                      cap)
            for split, folder, cap in (("train", "train", per_class),
                                       ("test", "val", val_per_class))}
