"""Split manifests: disjoint, reproducible from the seed, and tamper-evident."""

import numpy as np
import pytest

from components.splits import (
    SPLITS,
    IntegrityError,
    SplitError,
    read_manifest,
    split_forget_retain,
    write_manifest,
)


def make(digits, **kw):
    args = dict(kind="class", classes=[3], fraction=0.05, heldout_fraction=0.1,
                poison_fraction=0.25, seed=0)
    return split_forget_retain(digits["train"], digits["test"], **{**args, **kw})


def test_splits_are_disjoint_and_cover_the_train_split(digits):
    s = make(digits)
    train_parts = [set(s[n].indices.tolist()) for n in ("forget", "retain", "heldout")]
    assert sum(len(p) for p in train_parts) == len(digits["train"])
    assert set.union(*train_parts) == set(range(len(digits["train"])))
    assert not (train_parts[0] & train_parts[1] or train_parts[0] & train_parts[2]
                or train_parts[1] & train_parts[2])
    assert len(s["test"]) == len(digits["test"])


def test_class_forgetting_takes_exactly_that_class(digits):
    s = make(digits, classes=["3", 5])
    assert set(s["forget"].labels.tolist()) == {3, 5}
    assert not np.isin(s["retain"].labels, [3, 5]).any()
    assert s["forget"].poisoned.sum() == round(len(s["forget"]) * 0.25)
    assert not s["retain"].poisoned.any()


def test_reproducible_from_the_seed(digits):
    a, b, c = make(digits, kind="sample"), make(digits, kind="sample"), \
        make(digits, kind="sample", seed=1)
    for name in SPLITS:
        assert np.array_equal(a[name].indices, b[name].indices)
        assert np.array_equal(a[name].poisoned, b[name].poisoned)
    assert not np.array_equal(a["forget"].indices, c["forget"].indices)


def test_sample_forgetting_takes_the_fraction(digits):
    s = make(digits, kind="sample", fraction=0.05)
    trainable = len(s["forget"]) + len(s["retain"])
    assert len(s["forget"]) == round(trainable * 0.05)


def test_empty_and_total_forget_sets_are_refused(digits, tiny_set):
    with pytest.raises(SplitError, match="empty"):
        split_forget_retain(tiny_set, tiny_set, kind="sample", classes=[], fraction=0.001,
                            heldout_fraction=0.1, poison_fraction=0, seed=0)
    with pytest.raises(SplitError, match="whole training set"):
        make(digits, classes=list(range(10)))


def test_manifest_roundtrip(digits, tmp_path):
    s = make(digits)
    digest = write_manifest(tmp_path / "forget.csv", s["forget"], digits["train"])
    assert len(digest) == 64
    back = read_manifest(tmp_path / "forget.csv", digits)
    assert np.array_equal(back.indices, s["forget"].indices)
    assert np.array_equal(back.poisoned, s["forget"].poisoned)
    assert back.source == "train"


def test_tampered_image_is_caught_with_file_and_id(digits, tmp_path):
    s = make(digits)
    path = tmp_path / "retain.csv"
    write_manifest(path, s["retain"], digits["train"])
    victim = int(s["retain"].indices[5])
    digits_changed = {"train": digits["train"], "test": digits["test"]}
    original = digits["train"].images[victim].copy()
    digits_changed["train"].images.setflags(write=True)
    digits_changed["train"].images[victim, 0, 0, 0] ^= 1
    try:
        with pytest.raises(IntegrityError, match=rf"retain.csv:7: sha256 mismatch for "
                                                  rf"digits:train:{victim}"):
            read_manifest(path, digits_changed)
    finally:
        digits["train"].images[victim] = original


def test_tampered_manifest_is_caught(digits, tmp_path):
    s = make(digits)
    path = tmp_path / "forget.csv"
    write_manifest(path, s["forget"], digits["train"])
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("digits:train:", "digits:train:9999")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError, match="forget.csv:3: bad or unknown sample id"):
        read_manifest(path, digits)


def test_ledger_requests_are_forgotten_on_top_of_the_params(digits):
    base = make(digits)
    retained = base["retain"].indices[:3]
    asked = {int(i): "req-0001" for i in retained}
    s = make(digits, requested=asked)
    assert set(retained.tolist()) <= set(s["forget"].indices.tolist())
    assert set(base["forget"].indices.tolist()) <= set(s["forget"].indices.tolist())
    assert not np.isin(retained, s["retain"].indices).any()
    tagged = dict(zip(s["forget"].indices.tolist(), s["forget"].requests, strict=True))
    assert [tagged[int(i)] for i in retained] == ["req-0001"] * 3
    assert {tagged[int(i)] for i in base["forget"].indices} == {""}


def test_ledger_kind_forgets_exactly_the_requests(digits):
    base = make(digits)
    trained = {int(base["retain"].indices[0]), int(base["forget"].indices[0])}
    held = int(base["heldout"].indices[0])
    asked = {i: f"req-{n}" for n, i in enumerate([*trained, held])}
    s = make(digits, kind="ledger", poison_fraction=0.0, requested=asked)
    assert set(s["forget"].indices.tolist()) == trained
    # a requested held-out sample was never trained on: it is only dropped from the held-out
    # references, never used again
    assert held not in s["heldout"].indices and held not in s["retain"].indices
    # no request yet: manifests all the same (requests are checked against them)
    empty = make(digits, kind="ledger", poison_fraction=0.0, requested={})
    assert len(empty["forget"]) == 0 and len(empty["retain"]) == len(base["retain"]) + len(
        base["forget"])


def test_manifest_keeps_the_request_of_each_forget_sample(digits, tmp_path):
    asked = {int(make(digits)["retain"].indices[5]): "req-0007"}
    s = make(digits, requested=asked)
    write_manifest(tmp_path / "forget.csv", s["forget"], digits["train"])
    back = read_manifest(tmp_path / "forget.csv", digits)
    assert list(back.requests) == list(s["forget"].requests)
    assert "req-0007" in (tmp_path / "forget.csv").read_text()


def test_class_matched_reference_has_the_forget_sets_class_mix():
    """5,374 sneakers plus one T-shirt and one trouser: the reference is almost all
    sneakers, not a third of each class, and a class the pool lacks is left out."""
    from components.splits import Split, class_matched

    labels = np.r_[np.full(600, 7), np.full(600, 0), np.full(600, 1), np.full(50, 3)]
    pool = Split("heldout", "train", np.arange(len(labels)), labels,
                 np.zeros(len(labels), bool))
    forget = np.r_[np.full(5374, 7), [0, 1]]
    matched = class_matched(pool, forget, 2000, seed=0)
    values, counts = np.unique(matched.labels, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {7: 600}
    mixed = class_matched(pool, np.r_[np.full(30, 7), np.full(10, 3), np.full(20, 9)], 2000, 0)
    counts = {int(c): int((mixed.labels == c).sum()) for c in (7, 3, 9)}
    assert counts == {7: 150, 3: 50, 9: 0}  # shares 3:1 kept; class 3 (50 held) binds
    assert class_matched(pool, forget, 2000, 0).indices.tolist() == matched.indices.tolist()
