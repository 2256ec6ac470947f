"""The class presets of Li et al. (ICLR 2024): a leaf module, read both by the params schema
(a preset fixes forget.classes) and by the image-file loaders (components/datasets.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A published split: which dataset, how many classes of a class list, images per class."""

    dataset: str
    forget_classes: int  # the class list's first N lines
    retain_classes: int  # its next N lines
    train_per_forget_class: int  # training images kept per forget class (retain: all)
    test_per_class: int  # validation images per class, every class (the test split)


PRESETS = {
    # Li et al. 2024, ImageNet-1K: 100 forget and 100 retain classes, 120 training images per
    # forget class, the 50 validation images of each class
    "li2024-imagenet": Preset("imagefolder", 100, 100, 120, 50),
    # Li et al. 2024, Places365: 50 forget and 50 retain classes, the same per-class counts
    "li2024-places": Preset("places365", 50, 50, 120, 50),
}
