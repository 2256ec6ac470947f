"""Forget / retain / held-out / test splits and their manifests.

A manifest is a CSV of `id,label,sha256,poisoned,request` rows, one per sample (`request`:
the deletion request a forget sample was taken for, empty where the params chose it). The
sha256 of each image is checked again whenever a split is loaded, so an image changed after
`prepare` is caught before any training, with the file and id named.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.data import ImageSet, resolve_classes

SPLITS = ("forget", "retain", "heldout", "test")


class SplitError(ValueError):
    """A forget request that cannot be honoured (empty, everything, unknown class)."""


class IntegrityError(ValueError):
    """A manifest or image whose content no longer matches what `prepare` recorded."""


@dataclass
class Split:
    """Indices into a dataset split, with labels and the poisoned flag per sample."""

    name: str
    source: str  # "train" or "test": which ImageSet the indices point into
    indices: np.ndarray
    labels: np.ndarray
    poisoned: np.ndarray  # bool, True where the backdoor trigger is stamped
    # the deletion request each sample was forgotten for ("" where the params chose it)
    requests: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, keep: np.ndarray) -> Split:
        """The sub-split at `keep` (a boolean mask or index array)."""
        requests = None if self.requests is None else self.requests[keep]
        return Split(self.name, self.source, self.indices[keep], self.labels[keep],
                     self.poisoned[keep], requests)


def image_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_forget_retain(
    train: ImageSet,
    test: ImageSet,
    *,
    kind: str,
    classes: list[int | str],
    fraction: float,
    heldout_fraction: float,
    poison_fraction: float,
    seed: int,
    max_train: int | None = None,
    max_test: int | None = None,
    requested: dict[int, str] | None = None,
) -> dict[str, Split]:
    """Draw the four splits, reproducibly from `seed`.

    Held-out samples come from the train split but are never trained on (λ calibration,
    membership-inference reference); test is the dataset's own test split.

    Args:
        train, test: the dataset's splits.
        kind: "class" (forget whole classes) or "sample" (a random fraction).
        classes: classes to forget when kind == "class" (indices or names).
        fraction: share of the trainable samples to forget when kind == "sample".
        heldout_fraction: share of the train split held out.
        poison_fraction: share of the forget set that carries the backdoor (0 for none).
        seed: the seed of every draw.
        max_train, max_test: optional caps (random subsets) for quick runs.
        requested: train index -> deletion request id (the ledger): always forgotten, on
            top of what `kind` selects; kind "ledger" forgets exactly these.

    Returns:
        {"forget", "retain", "heldout", "test"} -> Split.
    """
    rng = np.random.default_rng(seed)
    pool = np.arange(len(train))
    if max_train is not None and max_train < len(pool):
        pool = np.sort(rng.choice(pool, max_train, replace=False))
    perm = rng.permutation(pool)
    n_heldout = int(round(len(pool) * heldout_fraction))
    heldout, trainable = np.sort(perm[:n_heldout]), np.sort(perm[n_heldout:])
    requested = requested or {}
    asked = np.array(sorted(requested), np.int64)
    # a requested sample is never used again, not even as a held-out reference
    heldout = heldout[~np.isin(heldout, asked)]
    if kind == "ledger":
        is_forget = np.isin(trainable, asked)
        forget = trainable[is_forget]
    elif kind == "class":
        wanted = resolve_classes(classes, train.class_names)
        is_forget = np.isin(train.labels[trainable], wanted)
        forget = trainable[is_forget]
    elif kind == "sample":
        n_forget = int(round(len(trainable) * fraction))
        forget = np.sort(rng.choice(trainable, n_forget, replace=False))
        is_forget = np.isin(trainable, forget)
    else:
        raise SplitError(f"unknown forget.kind {kind!r} (class, sample or ledger)")
    if kind != "ledger" and len(asked):
        is_forget |= np.isin(trainable, asked)
        forget = trainable[is_forget]
    retain = trainable[~is_forget]
    # an empty ledger still makes manifests: deletion requests are checked against them
    if len(forget) == 0 and kind != "ledger":
        raise SplitError(f"the forget set is empty (kind={kind}, classes={classes}, "
                         f"fraction={fraction}, {len(trainable)} trainable samples)")
    if len(retain) == 0:
        raise SplitError("the forget set is the whole training set: nothing would be left to "
                         "retain (forget fewer classes or a smaller fraction)")
    n_poison = int(round(len(forget) * poison_fraction))
    if n_poison == len(forget) > 0:
        raise SplitError("backdoor.fraction would poison every forget sample, leaving none clean "
                         "for the membership and OOD audits (use a fraction below 1)")
    poisoned = np.zeros(len(forget), bool)
    poisoned[rng.choice(len(forget), n_poison, replace=False)] = True
    test_idx = np.arange(len(test))
    if max_test is not None and max_test < len(test_idx):
        test_idx = np.sort(rng.choice(test_idx, max_test, replace=False))

    def make(name: str, source: ImageSet, idx: np.ndarray, flags: np.ndarray | None = None):
        flags = np.zeros(len(idx), bool) if flags is None else flags
        return Split(name, source.split, idx, source.labels[idx], flags)

    forget_split = make("forget", train, forget, poisoned)
    forget_split.requests = np.array([requested.get(int(i), "") for i in forget], dtype=object)
    return {
        "forget": forget_split,
        "retain": make("retain", train, retain),
        "heldout": make("heldout", train, heldout),
        "test": make("test", test, test_idx),
    }


def write_manifest(path: str | Path, split: Split, source: ImageSet) -> str:
    """Write a split's manifest CSV.

    Args:
        path: the CSV to write.
        split: the split.
        source: the ImageSet its indices point into.

    Returns:
        The sha256 of the written file (the split's hash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = source.ids(split.indices)
    requests = split.requests if split.requests is not None else [""] * len(split)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "sha256", "poisoned", "request"])
        for sid, i, label, flag, req in zip(ids, split.indices, split.labels, split.poisoned,
                                            requests, strict=True):
            w.writerow([sid, int(label), image_sha256(source.images[i]), int(flag), req])
    return file_sha256(path)


def read_manifest(path: str | Path, sets: dict[str, ImageSet]) -> Split:
    """Read a manifest back and check every image against its recorded sha256.

    Args:
        path: the manifest CSV.
        sets: {"train": ImageSet, "test": ImageSet} the ids point into.

    Returns:
        The Split.

    Raises:
        IntegrityError: a malformed row, an unknown id, or an image whose sha256 changed.
    """
    path = Path(path)
    if not path.exists():
        raise IntegrityError(f"split manifest missing: {path} (run the prepare stage)")
    indices, labels, flags, requests, source = [], [], [], [], None
    with path.open(newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                dataset, split, index = row["id"].split(":")
                i = int(index)
                image = sets[split].images[i]
                if sets[split].dataset != dataset:
                    raise KeyError(dataset)
            except (KeyError, ValueError, IndexError, AttributeError, TypeError):
                raise IntegrityError(f"{path}:{n}: bad or unknown sample id {row.get('id')!r}") \
                    from None
            if image_sha256(image) != row["sha256"]:
                raise IntegrityError(
                    f"{path}:{n}: sha256 mismatch for {row['id']}: the image or the manifest "
                    "changed after prepare (rerun `dvc repro` to rebuild the splits)"
                )
            source = source or split
            indices.append(i)
            labels.append(int(row["label"]))
            flags.append(row["poisoned"] == "1")
            requests.append(row.get("request") or "")
    return Split(path.stem, source or "train", np.array(indices, np.int64),
                 np.array(labels, np.int64), np.array(flags, bool),
                 np.array(requests, dtype=object))


def class_matched(pool: Split, labels: np.ndarray, limit: int, seed: int) -> Split:
    """A seeded sample of `pool` with the class mix of `labels`: the membership audits'
    reference for a forget set.

    A loss-based membership score compares the forget set with never-seen samples; if the
    two hold different classes, class difficulty decides the AUC rather than membership.
    Measured: a forget set of 5,374 sneakers plus a T-shirt and a trouser, against held-out
    samples of the three classes pooled (a third sneakers), gave MIA AUC 0.27-0.37 for every
    model, retrained included. Here every class gets the share it has in `labels`, and the
    sample is the largest (at most `limit`) that keeps those shares exactly (largest-remainder
    rounding), so a class with one forget sample gets about one reference sample.

    Args:
        pool: candidate reference samples (held-out data).
        labels: the labels of the samples to match (the forget set).
        limit: the most samples to return.
        seed: the draw's seed.

    Returns:
        The matched sample (indices sorted); classes of `labels` the pool does not hold are
        left out and the others keep their relative shares.
    """
    classes, counts = np.unique(labels, return_counts=True)
    available = {c: np.flatnonzero(pool.labels == c) for c in classes}
    held = [(c, n) for c, n in zip(classes, counts, strict=True) if len(available[c])]
    if not held:
        return pool.take(np.zeros(0, int))
    shares = np.array([n for _, n in held], float)
    shares /= shares.sum()
    size = min(limit, min(int(len(available[c]) / s) for (c, _), s in zip(held, shares,
                                                                          strict=True)))
    exact = shares * size
    take = np.floor(exact).astype(int)
    take[np.argsort(exact - take)[::-1][: size - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(available[c], k, replace=False)
              for (c, _), k in zip(held, take, strict=True) if k]
    return pool.take(np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, int))


def whole_class_share(forget: Split, retain: Split) -> float:
    """Share of the forget samples whose class keeps no sample in the retain set: 1 for the
    deletion of a class, 0 for scattered samples, in between for a class plus individual
    requests. The reference-free audit asks more of a forgotten class (components.verdict)."""
    if len(forget.labels) == 0:
        return 0.0
    return float(np.isin(forget.labels, retain.labels, invert=True).mean())
