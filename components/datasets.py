"""Datasets read from image files: ImageNet-style class folders, Places365's file lists and
WebDataset tar shards (a folder or s3://), and the class presets of Li et al. (ICLR 2024).

Images are decoded with Pillow, converted to the dataset's channels (RGB unless
`data.channels` is 1) and, with `data.image_size`, resized (shorter side to image_size) and
centre-cropped. Samples are ordered by class, then by file path (WebDataset: by shard name,
then by position in the shard), so a sample's index, and with it its id
`<dataset>:<split>:<index>`, stays the same for the same files and options. A file that
cannot be read stops the load with its name: nothing is skipped silently.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from components.imageset import DataError, ImageSet
from components.presets import PRESETS
from components.presets import Preset as Preset  # re-exported: where the loaders' callers look

if TYPE_CHECKING:
    from components.params import Params

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # compared lower-case: ImageNet's files are .JPEG
# 8-bit modes that convert to L / RGB without loss of range; 16-bit ("I;16") and float modes
# would be clipped to 255 by Pillow's convert, so they are refused instead
CONVERTIBLE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"}


@dataclass(frozen=True)
class LoadOptions:
    """How to read a dataset beyond its name and path (params' data.* and forget.preset).

    Attributes:
        image_size: side of the square images after resizing and centre-cropping (None: the
            files' own size, which must then be the same for every image).
        max_per_class: keep at most this many images per class and split (None: all).
        channels: 1 (grey) or 3 (RGB) for image-file datasets (None: 3).
        endpoint_url: S3-compatible endpoint for an s3:// path (None: AWS_ENDPOINT_URL or AWS).
        preset: a key of PRESETS, or None.
        class_list: the preset's class-list file.
    """

    image_size: int | None = None
    max_per_class: int | None = None
    channels: int | None = None
    endpoint_url: str | None = None
    preset: str | None = None
    class_list: str | None = None


def load_options(params: Params) -> LoadOptions:
    """The LoadOptions that params.yaml asks for."""
    data, forget = params.data, params.forget
    return LoadOptions(image_size=data.image_size, max_per_class=data.max_per_class,
                       channels=data.channels, endpoint_url=data.endpoint_url,
                       preset=forget.preset, class_list=forget.class_list)


def _fit(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (antialiased bicubic), then centre-crop a square."""
    w, h = im.size
    scale = size / min(w, h)
    w, h = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def _to_array(im: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(im, np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def read_image(source: str | Path | bytes, name: str, size: int | None,
               channels: int) -> np.ndarray:
    """Decode one image file to uint8 (C, H, W).

    Args:
        source: a file path or the file's bytes.
        name: what an error message calls the file.
        size: resize the shorter side to this and centre-crop (None: keep the size).
        channels: 1 (L) or 3 (RGB); every 8-bit mode (L, P, RGBA, CMYK, ...) converts to it.

    Returns:
        The image.

    Raises:
        DataError: a truncated, corrupt or non-image file, or a 16-bit / float image.
    """
    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.mode not in CONVERTIBLE_MODES:
                raise DataError(f"{name}: unsupported image mode {im.mode} (8-bit L, P, RGB, "
                                "RGBA or CMYK expected)")
            if size is not None:
                # JPEG only: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size
                # (a 500x375 photo to 64 px: 3.3 ms instead of 6.5 ms, decode and resize)
                im.draft(mode, (size, size))
            im.load()
            # palette transparency converts through RGBA (a direct convert warns and may drop it)
            converted = im.convert("RGBA" if im.mode in ("P", "PA") else im.mode).convert(mode)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {name}: {exc}") from None
    return _to_array(_fit(converted, size) if size is not None else converted, channels)


def _decode(items: list[tuple[str, str | bytes]], size: int | None, channels: int) -> np.ndarray:
    """Decode (name, path or bytes) items into one uint8 (N, C, H, W) array, in order.

    Pillow releases the GIL while decoding, so threads use every core.
    """
    out = None
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        arrays = pool.map(lambda item: read_image(item[1], item[0], size, channels), items)
        for i, array in enumerate(arrays):
            if out is None:
                out = np.empty((len(items), *array.shape), np.uint8)
            elif array.shape != out.shape[1:]:
                raise DataError(
                    f"images differ in size: {items[0][0]} is {out.shape[3]}x{out.shape[2]}, "
                    f"{items[i][0]} is {array.shape[2]}x{array.shape[1]} (set data.image_size "
                    "to resize and crop every image to one size)")
            out[i] = array
    if out is None:
        raise DataError("no images to load")
    return out


def _normalise(name: str) -> str:
    """A class name as compared: Places365's '/a/airfield' and 'airfield' are one class."""
    return re.sub(r"^/?[a-z]/", "", name.strip()).lower()


def read_class_list(path: str | Path, preset: str) -> list[str]:
    """The classes a preset uses: the first N (forget) and next N (retain) names of the file.

    One class per line, its first word counts (so ImageNet's `n01440764 tench, ...` mapping
    and Places365's `/a/airfield 0` category files work as they are); blank lines and lines
    starting with # are skipped; lines after the first 2N are not used.
    """
    p, spec = Path(path), PRESETS[preset]
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read forget.class_list {p}: {exc}") from None
    names = [ln.split()[0] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    need = spec.forget_classes + spec.retain_classes
    if len(names) < need:
        raise DataError(f"{p} lists {len(names)} classes; {preset} needs {need} (the first "
                        f"{spec.forget_classes} are forgotten, the next {spec.retain_classes} "
                        "retained)")
    names = names[:need]
    seen: set[str] = set()
    repeated = [n for n in names if _normalise(n) in seen or seen.add(_normalise(n))]
    if repeated:
        raise DataError(f"{p} lists these classes twice: {', '.join(repeated[:5])}")
    return names


def _select(all_names: list[str], split: str, options: LoadOptions
            ) -> tuple[list[str], list[int], list[int | None]]:
    """Which classes to load, in label order, and the per-class cap of each.

    Returns:
        (names, indices into all_names, cap per kept class).
    """
    cap = options.max_per_class
    if options.preset is None:
        return list(all_names), list(range(len(all_names))), [cap] * len(all_names)
    spec = PRESETS[options.preset]
    wanted = read_class_list(options.class_list, options.preset)
    lookup = {_normalise(n): i for i, n in enumerate(all_names)}
    missing = [w for w in wanted if _normalise(w) not in lookup]
    if missing:
        raise DataError(f"{options.class_list}: {len(missing)} class(es) not in the dataset: "
                        f"{', '.join(missing[:5])}")
    indices = [lookup[_normalise(w)] for w in wanted]
    if split == "train":
        caps = [spec.train_per_forget_class] * spec.forget_classes + [None] * spec.retain_classes
    else:
        caps = [spec.test_per_class] * len(indices)
    caps = [c if cap is None else cap if c is None else min(c, cap) for c in caps]
    return [all_names[i] for i in indices], indices, caps


def _by_class(paths: dict[int, list[str]], caps: list[int | None]) -> list[tuple[str, int]]:
    """(path, label) ordered by label, then path, at most caps[label] per label."""
    return [(p, label) for label in sorted(paths) for p in sorted(paths[label])[:caps[label]]]


def _image_set(name: str, split: str, entries: list[tuple[str, int]], class_names: list[str],
               options: LoadOptions, where: str) -> ImageSet:
    if not entries:
        raise DataError(f"no images for the {split} split under {where}")
    images = _decode([(p, p) for p, _ in entries], options.image_size, options.channels or 3)
    labels = np.array([label for _, label in entries], np.int64)
    return ImageSet(name, split, images, labels, class_names)


def load_imagefolder(path: str | Path, split: str, options: LoadOptions) -> ImageSet:
    """ImageNet's layout: `train/<class>/*.JPEG` and `val/<class>/*.JPEG` (val is the test split).

    Class names are the train folders' names (WNIDs for ImageNet), sorted; val uses the same
    labels. .jpg, .jpeg and .png files count (any case); other files are not images.
    """
    root = Path(path)
    train_dir = root / "train"
    split_dir = train_dir if split == "train" else root / "val"
    for d in (train_dir, split_dir):
        if not d.is_dir():
            raise DataError(f"image folder not found: {d} (data.path must hold train/<class>/ "
                            "and val/<class>/ folders)")
    all_names = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not all_names:
        raise DataError(f"no class folders under {train_dir}")
    stray = sorted({d.name for d in split_dir.iterdir() if d.is_dir()} - set(all_names))
    if stray:
        raise DataError(f"{split_dir} has class folders that train/ lacks: {', '.join(stray[:5])}")
    names, indices, caps = _select(all_names, split, options)
    paths = {label: [str(f) for f in (split_dir / all_names[i]).glob("*")
                     if f.suffix.lower() in IMAGE_SUFFIXES]
             for label, i in enumerate(indices) if (split_dir / all_names[i]).is_dir()}
    return _image_set("imagefolder", split, _by_class(paths, caps), names, options, str(split_dir))


def _read_file_list(path: Path) -> list[tuple[str, int]]:
    """Lines of `<name> <class index>` (Places365's file lists and category file)."""
    if not path.is_file():
        raise DataError(f"missing Places365 file list {path} (data.path must hold the "
                        "filelist_places365-standard files and the image folders)")
    out = []
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(f"{path}:{n}: expected '<path> <class index>', "
                                f"got {line.strip()!r}")
            out.append((parts[0], int(parts[1])))
    return out


def load_places365(path: str | Path, split: str, options: LoadOptions) -> ImageSet:
    """Places365-Standard: `categories_places365.txt`, `places365_train_standard.txt` with
    images under `data_256/` (or `data_large/`), `places365_val.txt` with `val_256/` (or
    `val_large/`; val is the test split). Class names drop the `/a/` prefix (`airfield`)."""
    root = Path(path)
    categories = _read_file_list(root / "categories_places365.txt")
    all_names = [""] * len(categories)
    for name, label in categories:
        if label >= len(categories):
            raise DataError(f"{root / 'categories_places365.txt'}: class index {label} out of "
                            f"range for {len(categories)} classes")
        all_names[label] = _normalise(name)
    listing = "places365_train_standard.txt" if split == "train" else "places365_val.txt"
    folders = ("data_256", "data_large") if split == "train" else ("val_256", "val_large")
    image_dir = next((root / d for d in folders if (root / d).is_dir()), None)
    if image_dir is None:
        raise DataError(f"no Places365 image folder under {root} ({' or '.join(folders)})")
    names, indices, caps = _select(all_names, split, options)
    relabel = {i: label for label, i in enumerate(indices)}
    paths: dict[int, list[str]] = {}
    for rel, label in _read_file_list(root / listing):
        if label >= len(all_names):
            raise DataError(f"{root / listing}: {rel} has class index {label}, the categories "
                            f"file has {len(all_names)}")
        if label in relabel:
            paths.setdefault(relabel[label], []).append(str(image_dir / rel.lstrip("/")))
    return _image_set("places365", split, _by_class(paths, caps), names, options, str(root))


def first_per_class(labels: np.ndarray, cap: int | None) -> np.ndarray:
    """Mask keeping the first `cap` samples of each class, in index order (None: all)."""
    keep = np.ones(len(labels), bool)
    if cap is not None:
        for c in np.unique(labels):
            keep[np.flatnonzero(labels == c)[cap:]] = False
    return keep


def _local_shards(root: str, split: str) -> Iterator[tuple[str, BinaryIO]]:
    folder = Path(root) / split
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise DataError(f"no WebDataset shards (*.tar) in {folder}")
    for shard in shards:
        try:
            f = shard.open("rb")
        except OSError as exc:
            raise DataError(f"cannot open shard {shard}: {exc}") from None
        with f:
            yield str(shard), f


def _s3_shards(url: str, split: str, endpoint_url: str | None) -> Iterator[tuple[str, BinaryIO]]:
    """The shards under s3://bucket/prefix/<split>/, read whole, one at a time, with boto3."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = "/".join(p for p in (prefix.strip("/"), split) if p) + "/"
    # endpoint_url None: boto3 reads AWS_ENDPOINT_URL itself, else talks to AWS
    client = boto3.client("s3", endpoint_url=endpoint_url)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = sorted(o["Key"] for page in pages for o in page.get("Contents", [])
                      if o["Key"].endswith(".tar"))
    except (BotoCoreError, ClientError) as exc:
        raise DataError(f"cannot list s3://{bucket}/{prefix}: {exc}") from None
    if not keys:
        raise DataError(f"no WebDataset shards (*.tar) under s3://{bucket}/{prefix}")
    for key in keys:
        name = f"s3://{bucket}/{key}"
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise DataError(f"cannot read {name}: {exc}") from None
        yield name, io.BytesIO(body)


def _read_shard(name: str, fileobj: BinaryIO) -> list[tuple[str, bytes, int]]:
    """(sample name, image bytes, label) of each sample of a shard, in tar order.

    A sample is the tar members sharing a key (the path up to the file name's first dot);
    it needs an image (.jpg, .jpeg or .png) and a .cls member (the class index as text).
    """
    fields: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                if member.isfile() and ext.lower() in ("jpg", "jpeg", "png", "cls"):
                    key = f"{folder}/{stem}" if folder else stem
                    fields.setdefault(key, {})[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read shard {name}: {exc}") from None
    out = []
    for key, f in fields.items():
        image = next((f[e] for e in ("jpg", "jpeg", "png") if e in f), None)
        if image is None or "cls" not in f:
            raise DataError(f"{name}: sample {key} lacks an image (.jpg/.png) or its .cls label")
        text = f["cls"].decode("utf-8", "replace").strip()
        if not text.isdigit():
            raise DataError(f"{name}: {key}.cls is not a class index: {text[:20]!r}")
        out.append((f"{name}:{key}", image, int(text)))
    return out


def load_webdataset(path: str, split: str, options: LoadOptions) -> ImageSet:
    """WebDataset shards `<path>/<split>/*.tar` (train, test), a folder or s3://bucket/prefix.

    Class names are the class indices as text ("0", "1", ...); max_per_class keeps the first
    images of each class in shard order.
    """
    shards = _s3_shards(path, split, options.endpoint_url) if path.startswith("s3://") \
        else _local_shards(path, split)
    samples = [s for name, f in shards for s in _read_shard(name, f)]
    if not samples:
        raise DataError(f"no samples in the WebDataset shards under {path}/{split}")
    labels = np.array([label for _, _, label in samples], np.int64)
    keep = first_per_class(labels, options.max_per_class)
    chosen = [s for s, k in zip(samples, keep, strict=True) if k]
    images = _decode([(n, data) for n, data, _ in chosen], options.image_size,
                     options.channels or 3)
    return ImageSet("webdataset", split, images, labels[keep],
                    [str(i) for i in range(int(labels.max()) + 1)])


LOADERS = {"imagefolder": load_imagefolder, "places365": load_places365,
           "webdataset": load_webdataset}


def load_image_files(name: str, path: str, split: str, options: LoadOptions) -> ImageSet:
    """One split of an image-file dataset (a key of LOADERS)."""
    if options.preset is not None and PRESETS[options.preset].dataset != name:
        raise DataError(f"forget.preset {options.preset} reads data.dataset "
                        f"{PRESETS[options.preset].dataset}, not {name}")
    return LOADERS[name](path, split, options)


def adjust(images: ImageSet, options: LoadOptions) -> ImageSet:
    """A built-in dataset with data.max_per_class (the first images of each class, in index
    order) and data.image_size (every image resized and centre-cropped) applied."""
    if options.preset is not None:
        raise DataError(f"forget.preset {options.preset} reads data.dataset "
                        f"{PRESETS[options.preset].dataset}, not {images.dataset}")
    if options.max_per_class is None and options.image_size is None:
        return images
    keep = first_per_class(images.labels, options.max_per_class)
    array = images.images[keep]
    if options.image_size is not None:
        channels = array.shape[1]
        mode = "L" if channels == 1 else "RGB"
        array = np.stack([
            _to_array(_fit(Image.fromarray(a[0] if channels == 1 else a.transpose(1, 2, 0), mode),
                           options.image_size), channels) for a in array])
    return ImageSet(images.dataset, images.split, array, images.labels[keep], images.class_names)
