"""The in-memory form of a dataset split and the error a dataset raises: a leaf module, so the
loaders (components/data.py, components/datasets.py) and their callers share it without
importing one another."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A dataset that cannot be found or read: the message names the file."""


@dataclass
class ImageSet:
    """A split of a dataset.

    Attributes:
        dataset: dataset name, the first part of every sample id.
        split: "train" or "test".
        images: uint8 array (N, C, H, W).
        labels: int64 array (N,).
        class_names: name of each label index.
    """

    dataset: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def ids(self, indices: np.ndarray) -> list[str]:
        return [f"{self.dataset}:{self.split}:{int(i)}" for i in indices]
