"""Image-file loaders on small data written in each dataset's own on-disk layout."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import datasets
from components.data import DataError, load_dataset, resolve_classes
from components.datasets import LoadOptions, Preset, first_per_class, load_options
from components.export import folder_names, write_imagefolder
from components.params import ParamsError, parse_params
from components.splits import split_forget_retain
from tests.conftest import REPO, free_port

WNIDS = ["n01440764", "n01443537", "n01484850"]


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> Image.Image:
    return Image.new("RGB", size, colour)


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def imagenet_tree(root: Path, per_class: int = 3, val_per_class: int = 2) -> Path:
    """train/<wnid>/<wnid>_<i>.JPEG and val/<wnid>/ILSVRC2012_val_<i>.JPEG, sizes varying."""
    for c, wnid in enumerate(WNIDS):
        for split, n in (("train", per_class), ("val", val_per_class)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{c}{i}.JPEG"
                solid((80 * c, 40 * i, 200), (20 + 4 * i, 16)).save(folder / name, "JPEG")
    return root


def test_imagefolder_train_and_val_with_wnid_classes(tmp_path):
    root = imagenet_tree(tmp_path)
    (root / "train" / WNIDS[0] / "README.txt").write_text("not an image")  # ignored
    opts = LoadOptions(image_size=8)
    train = load_dataset("imagefolder", root, "train", opts)
    test = load_dataset("imagefolder", root, "test", opts)
    assert train.images.shape == (9, 3, 8, 8) and train.images.dtype == np.uint8
    assert test.images.shape == (6, 3, 8, 8)
    assert train.class_names == WNIDS == test.class_names
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # sorted file order: index 1 is the second file of the first class (green 40)
    assert abs(int(train.images[1, 1].mean()) - 40) <= 3
    assert train.ids(np.array([4])) == ["imagefolder:train:4"]
    assert resolve_classes(["N01443537", 2], train.class_names) == [1, 2]
    again = load_dataset("imagefolder", root, "train", opts)
    assert np.array_equal(again.images, train.images)  # stable ids: same files, same indices
    capped = load_dataset("imagefolder", root, "train", LoadOptions(image_size=8, max_per_class=2))
    assert capped.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_resize_keeps_the_centre_of_the_shorter_side(tmp_path):
    """32x16 image: red | green (the middle 16 columns) | blue; size 8 -> the green centre."""
    im = np.zeros((16, 32, 3), np.uint8)
    im[:, :8, 0] = im[:, 8:24, 1] = im[:, 24:, 2] = 255
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(im).save(folder / "x.png")
    (tmp_path / "val").mkdir()
    out = load_dataset("imagefolder", tmp_path, "train", LoadOptions(image_size=8)).images[0]
    assert out.shape == (3, 8, 8)
    # bicubic blends a pixel at the crop's edges; a left or right crop would be half red / blue
    assert out[1].min() > 200 and out[0].max() < 40 and out[2].max() < 40


def test_native_size_must_agree_or_image_size_is_asked_for(tmp_path):
    root = imagenet_tree(tmp_path)
    with pytest.raises(DataError, match="differ in size.*data.image_size"):
        load_dataset("imagefolder", root, "train")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "CMYK"])
def test_every_8bit_mode_becomes_the_dataset_channels(tmp_path, mode):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    (tmp_path / "val").mkdir()
    rgb = solid((200, 200, 200), (8, 8))
    converted = rgb.convert(mode)
    converted.save(folder / ("x.jpg" if mode == "CMYK" else "x.png"))
    rgb_set = load_dataset("imagefolder", tmp_path, "train")
    grey_set = load_dataset("imagefolder", tmp_path, "train", LoadOptions(channels=1))
    assert rgb_set.images.shape == (1, 3, 8, 8) and grey_set.images.shape == (1, 1, 8, 8)
    assert rgb_set.images.min() > 150 or mode == "1"  # mode 1 is black / white


def test_corrupt_truncated_and_16bit_files_are_errors_naming_the_file(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    (tmp_path / "val").mkdir()
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        good, "JPEG")
    (folder / "a_0.jpg").write_bytes(good.getvalue())
    (folder / "a_1.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(DataError, match=r"a_1\.jpg"):
        load_dataset("imagefolder", tmp_path, "train", LoadOptions(image_size=8))
    (folder / "a_1.jpg").write_bytes(b"this is not an image")
    with pytest.raises(DataError, match=r"cannot read image .*a_1\.jpg"):
        load_dataset("imagefolder", tmp_path, "train", LoadOptions(image_size=8))
    (folder / "a_1.jpg").unlink()
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(folder / "deep.png")
    with pytest.raises(DataError, match=r"deep\.png: unsupported image mode I;16"):
        load_dataset("imagefolder", tmp_path, "train", LoadOptions(image_size=8))


def test_imagefolder_layout_mistakes(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        load_dataset("imagefolder", tmp_path, "train")
    root = imagenet_tree(tmp_path)
    (root / "val" / "n09999999").mkdir()
    with pytest.raises(DataError, match="train/ lacks: n09999999"):
        load_dataset("imagefolder", root, "test", LoadOptions(image_size=8))


def places_tree(root: Path) -> Path:
    """Places365-Standard: the category file, both file lists, data_256/ and val_256/."""
    cats = ["/a/airfield", "/b/bakery/shop", "/c/canyon"]
    (root / "categories_places365.txt").write_text(
        "".join(f"{c} {i}\n" for i, c in enumerate(cats)))
    train, val = [], []
    for i, c in enumerate(cats):
        for j in (2, 1):  # listed out of order: the loader sorts by path
            rel = f"{c}/{j:08d}.jpg"
            (root / "data_256" / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            solid((100 * i, 10 * j, 0)).save(root / "data_256" / rel.lstrip("/"))
            train.append(f"{rel} {i}\n")
        name = f"Places365_val_{i + 1:08d}.jpg"
        (root / "val_256").mkdir(exist_ok=True)
        solid((100 * i, 0, 0)).save(root / "val_256" / name)
        val.append(f"{name} {i}\n")
    (root / "places365_train_standard.txt").write_text("".join(train))
    (root / "places365_val.txt").write_text("".join(val))
    return root


def test_places365_file_lists(tmp_path):
    root = places_tree(tmp_path)
    train = load_dataset("places365", root, "train")
    test = load_dataset("places365", root, "test")
    assert train.class_names == ["airfield", "bakery/shop", "canyon"]
    assert train.images.shape == (6, 3, 10, 12) and test.images.shape == (3, 3, 10, 12)
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] and test.labels.tolist() == [0, 1, 2]
    assert int(train.images[0, 1].mean()) <= 14  # 00000001.jpg (green 10) comes first
    assert resolve_classes(["canyon", "bakery/shop"], train.class_names) == [1, 2]
    with (root / "places365_val.txt").open("a") as f:
        f.write("Places365_val_00000009.jpg\n")
    with pytest.raises(DataError, match=r"places365_val\.txt:4: expected"):
        load_dataset("places365", root, "test")
    (root / "data_256/c/canyon/00000002.jpg").unlink()
    with pytest.raises(DataError, match=r"canyon/00000002\.jpg"):
        load_dataset("places365", root, "train")


def test_li2024_presets_are_the_papers_counts():
    imagenet, places = datasets.PRESETS["li2024-imagenet"], datasets.PRESETS["li2024-places"]
    assert (imagenet.dataset, imagenet.forget_classes, imagenet.retain_classes,
            imagenet.train_per_forget_class, imagenet.test_per_class) == \
        ("imagefolder", 100, 100, 120, 50)
    assert (places.dataset, places.forget_classes, places.retain_classes) == \
        ("places365", 50, 50)


def test_preset_restricts_classes_caps_counts_and_drives_the_forget_split(tmp_path, monkeypatch):
    # the real preset at a tenth of a class's size: 1 forget + 1 retain class, 2 train images
    # per forget class, 1 validation image per class
    monkeypatch.setitem(datasets.PRESETS, "li2024-imagenet", Preset("imagefolder", 1, 1, 2, 1))
    root = imagenet_tree(tmp_path, per_class=4, val_per_class=2)
    class_list = tmp_path / "classes.txt"
    class_list.write_text(f"# forget first\n{WNIDS[2]} goldfish\n\n{WNIDS[0]} tench\n{WNIDS[1]}\n")
    params = parse_params({"data": {"dataset": "imagefolder", "path": str(root),
                                    "image_size": 8},
                           "forget": {"preset": "li2024-imagenet",
                                      "class_list": str(class_list)}})
    assert params.forget.classes == [0]  # the class list's first class
    opts = load_options(params)
    train = load_dataset("imagefolder", root, "train", opts)
    test = load_dataset("imagefolder", root, "test", opts)
    assert train.class_names == [WNIDS[2], WNIDS[0]]  # list order: forget classes first
    assert train.labels.tolist() == [0, 0, 1, 1, 1, 1]  # forget capped at 2, retain all 4
    assert test.labels.tolist() == [0, 1]
    splits = split_forget_retain(train, test, kind="class", classes=params.forget.classes,
                                 fraction=0.01, heldout_fraction=0.01, poison_fraction=0.0,
                                 seed=0)
    assert set(splits["forget"].labels) == {0} and set(splits["retain"].labels) == {1}
    # mistakes in the list, the dataset or the params
    class_list.write_text(f"{WNIDS[0]}\n")
    with pytest.raises(DataError, match="lists 1 classes; li2024-imagenet needs 2"):
        load_dataset("imagefolder", root, "train", opts)
    class_list.write_text(f"{WNIDS[0]}\nn00000000\n")
    with pytest.raises(DataError, match="not in the dataset: n00000000"):
        load_dataset("imagefolder", root, "train", opts)
    class_list.write_text(f"{WNIDS[0]}\n{WNIDS[0]}\n")
    with pytest.raises(DataError, match="twice"):
        load_dataset("imagefolder", root, "train", opts)
    with pytest.raises(DataError, match="reads data.dataset imagefolder, not digits"):
        load_dataset("digits", "", "train", opts)
    with pytest.raises(ParamsError, match="needs forget.class_list"):
        parse_params({"forget": {"preset": "li2024-places"}})
    with pytest.raises(ParamsError, match="forget.kind must be class"):
        parse_params({"forget": {"preset": "li2024-places", "kind": "sample",
                                 "class_list": "x"}})


def test_places_preset_reads_names_with_or_without_the_letter_prefix(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.PRESETS, "li2024-places", Preset("places365", 1, 1, 1, 1))
    root = places_tree(tmp_path)
    class_list = tmp_path / "classes.txt"
    class_list.write_text("/c/canyon 2\nairfield\n")
    opts = LoadOptions(preset="li2024-places", class_list=str(class_list))
    train = load_dataset("places365", root, "train", opts)
    assert train.class_names == ["canyon", "airfield"] and train.labels.tolist() == [0, 1, 1]


def shard(path: Path, samples: list[tuple[str, bytes | None, bytes | None]]) -> None:
    """A WebDataset tar: <key>.png (or .jpg) and <key>.cls members per sample."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, image, cls in samples:
            for ext, data in (("png", image), ("cls", cls)):
                if data is not None:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def webdataset_tree(root: Path) -> Path:
    for split, n_shards in (("train", 2), ("test", 1)):
        for s in range(n_shards):
            shard(root / split / f"shard-{s:06d}.tar",
                  [(f"part/s{s}{i:03d}", png_bytes(solid((50 * s, 20 * i, 0), (8, 8))),
                    str((s + i) % 3).encode()) for i in range(4)])
    return root


def test_webdataset_local_shards(tmp_path):
    root = webdataset_tree(tmp_path)
    train = load_dataset("webdataset", root, "train")
    test = load_dataset("webdataset", root, "test", LoadOptions(image_size=4, channels=1))
    assert train.images.shape == (8, 3, 8, 8) and test.images.shape == (4, 1, 4, 4)
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]  # shard order, then tar order
    assert train.class_names == ["0", "1", "2"]
    assert int(train.images[5, 0].mean()) == 50 and int(train.images[5, 1].mean()) == 20
    capped = load_dataset("webdataset", root, "train", LoadOptions(max_per_class=1))
    assert capped.labels.tolist() == [0, 1, 2]


def test_webdataset_bad_shards_name_the_shard_and_sample(tmp_path):
    good = png_bytes(solid((1, 2, 3), (8, 8)))
    shard(tmp_path / "train" / "a.tar", [("k1", good, b"0"), ("k2", good, None)])
    with pytest.raises(DataError, match=r"a\.tar: sample k2 lacks"):
        load_dataset("webdataset", tmp_path, "train")
    shard(tmp_path / "train" / "a.tar", [("k1", good, b"zero")])
    with pytest.raises(DataError, match=r"a\.tar: k1\.cls is not a class index"):
        load_dataset("webdataset", tmp_path, "train")
    shard(tmp_path / "train" / "a.tar", [("k1", good[:40], b"0")])
    with pytest.raises(DataError, match=r"cannot read image .*a\.tar:k1"):
        load_dataset("webdataset", tmp_path, "train")
    shard(tmp_path / "train" / "a.tar", [("k1", good, b"0")] * 3)
    raw = (tmp_path / "train" / "a.tar").read_bytes()
    (tmp_path / "train" / "a.tar").write_bytes(raw[:700])
    with pytest.raises(DataError, match=r"cannot read shard .*a\.tar"):
        load_dataset("webdataset", tmp_path, "train")
    with pytest.raises(DataError, match=r"no WebDataset shards \(\*\.tar\) in .*test"):
        load_dataset("webdataset", tmp_path, "test")


def test_builtin_sets_take_image_size_and_max_per_class():
    digits = load_dataset("digits", "", "train", LoadOptions(image_size=16, max_per_class=5))
    assert digits.images.shape == (50, 1, 16, 16)
    assert np.bincount(digits.labels).tolist() == [5] * 10


def test_data_params_refuse_options_that_do_not_apply():
    with pytest.raises(ParamsError, match="data.channels applies to"):
        parse_params({"data": {"channels": 1}})
    with pytest.raises(ParamsError, match="endpoint_url applies to an s3://"):
        parse_params({"data": {"endpoint_url": "http://127.0.0.1:9000"}})
    with pytest.raises(ParamsError, match="data.dataset"):
        parse_params({"data": {"dataset": "imagenet"}})


MOTO = Path("/tmp/motovenv")


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A moto S3 server on a free port (its own venv: moto's pins differ from the project's)."""
    server = MOTO / "bin" / "moto_server"
    if not server.exists():
        uv = REPO / ".venv" / "bin" / "uv"
        made = subprocess.run(f"{uv} venv {MOTO} && {uv} pip install --python "
                              f"{MOTO}/bin/python 'moto[server]==5.2.5'", shell=True,
                              capture_output=True, text=True)
        if made.returncode or not server.exists():
            pytest.skip(f"moto[server]==5.2.5 venv could not be created: {made.stderr[-300:]}")
    port = free_port()
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.3)
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    yield url
    proc.terminate()
    proc.wait(10)


def test_webdataset_from_s3_through_boto3(tmp_path, s3_endpoint, monkeypatch):
    import boto3

    root = webdataset_tree(tmp_path)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="shards")
    for tar in sorted(root.rglob("*.tar")):
        s3.upload_file(str(tar), "shards", f"wds/v1/{tar.relative_to(root)}")
    local = load_dataset("webdataset", root, "train")
    params = parse_params({"data": {"dataset": "webdataset", "path": "s3://shards/wds/v1",
                                    "endpoint_url": s3_endpoint}})
    remote = load_dataset("webdataset", params.data.path, "train", load_options(params))
    assert np.array_equal(remote.images, local.images)
    assert remote.labels.tolist() == local.labels.tolist()
    # the endpoint from the environment, as AWS tools read it
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert len(load_dataset("webdataset", "s3://shards/wds/v1/", "test")) == 4
    with pytest.raises(DataError, match=r"cannot list s3://missing/wds/train/"):
        load_dataset("webdataset", "s3://missing/wds", "train")
    with pytest.raises(DataError, match=r"no WebDataset shards .* s3://shards/nothing/train/"):
        load_dataset("webdataset", "s3://shards/nothing", "train")


def test_exported_imagefolder_loads_back_the_same_pixels_and_labels(tmp_path):
    source = load_dataset("digits", "", "train")
    assert write_imagefolder(source, tmp_path / "train", 5) == 50
    assert write_imagefolder(load_dataset("digits", "", "test"), tmp_path / "val", 2) == 20
    back = load_dataset("imagefolder", tmp_path, "train", LoadOptions(channels=1))
    keep = np.flatnonzero(first_per_class(source.labels, 5))
    order = np.argsort(source.labels[keep], kind="stable")  # the loader orders by class
    np.testing.assert_array_equal(back.images, source.images[keep][order])
    np.testing.assert_array_equal(back.labels, source.labels[keep][order])
    assert back.class_names == folder_names(source.class_names)
    assert len(load_dataset("imagefolder", tmp_path, "test", LoadOptions(channels=1))) == 20
    with pytest.raises(DataError, match="not empty"):
        write_imagefolder(source, tmp_path / "train", 1)
