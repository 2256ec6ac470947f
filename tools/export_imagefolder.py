"""Export a dataset this machine has into ImageNet's folder layout, for `data.dataset: imagefolder`.

    python -m tools.export_imagefolder data/fmnist-imagefolder --per-class 500 --val-per-class 100

Writes `<out>/train/<class>/*.png` and `<out>/val/<class>/*.png` (the test split becomes
`val/`, as ImageNet's validation set does). Then:

    dvc exp run -S data.dataset=imagefolder -S data.path=data/fmnist-imagefolder \
        -S model.family=mae -S model.task=inpaint
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from components.data import DataError
from components.export import export_splits

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"


def export_imagefolder(
    out: Annotated[Path, typer.Argument(help="new folder for train/ and val/")],
    dataset: Annotated[str, typer.Option(help="fashion-mnist | digits | shapes | cifar10")] =
    "fashion-mnist",
    path: Annotated[str, typer.Option(help="the dataset's files")] = DEFAULT_PATH,
    per_class: Annotated[int | None, typer.Option(help="train images per class (all)")] = None,
    val_per_class: Annotated[int | None, typer.Option(help="val images per class (all)")] = None,
) -> None:
    """Write DATASET's train and test splits as PNG files in class folders under OUT."""
    console = Console(stderr=True)
    try:
        written = export_splits(dataset, path, out, per_class, val_per_class)
    except DataError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    for folder, n in written.items():
        console.print(f"{out / folder}: {n} images")


if __name__ == "__main__":
    typer.run(export_imagefolder)
