"""Listing a class-per-folder tree (through ``imgrec.storage``) and the
deterministic, hash-based train/validation split (a label manifest lists into
the same ``ImageTree``: ``imgrec.data.manifest``)."""

from __future__ import annotations

import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec import storage
from imgrec.decode import IMAGE_SUFFIXES
from imgrec.hashing import unit_hash

log = logging.getLogger(__name__)


ARRAY_SCHEME = "array://"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class DataError(ValueError):
    """The dataset cannot be used as given; the message names the URI and the fix."""


# --------------------------------------------------------------------------- listing and split


@dataclass
class ImageTree:
    """What a class-per-folder tree (or a label manifest) holds, before any pixel is read."""

    root: str  # the tree's root, or the manifest's URI
    class_names: list[str]
    # {"path": uri, "label": int, "rel": "cat/001.jpg" (the split's hash key), "version": "<size>:<ETag or mtime>"}
    # ("version": what the decoded cache keys a file by; absent where the listing does not know it)
    train: list[dict[str, Any]]
    test: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    # A manifest's explicit split of some train records: path -> "train" | "val"; the rest split by hash.
    splits: dict[str, str] = field(default_factory=dict)
    manifest_sha256: str | None = None  # a manifest's digest, so a changed manifest shows in the lineage


def _layout(root: str) -> str:
    """The expected layout, for error messages."""
    return (
        f"expected one folder per class: {root}/train/<class>/<image>.jpg (and optionally "
        f"{root}/test/<class>/<image>.jpg), or {root}/<class>/<image>.jpg"
    )


def path_reasons(items: list[dict[str, str]], n: int) -> str:
    """``path (reason); ...`` for the first ``n`` of a bad-file list, for error messages."""
    return "; ".join(f"{i['path']} ({i['reason']})" for i in items[:n])


def _examples(skipped: list[dict[str, str]], n: int = 3) -> str:
    if not skipped:
        return ""
    return f" Skipped {len(skipped)} file(s), e.g. {path_reasons(skipped, n)}."


def list_image_tree(uri: str) -> ImageTree:
    """List ``<root>/train/<class>/*`` (and ``<root>/test/<class>/*`` when present).

    A root without a ``train/`` folder is itself the training tree
    (``<root>/<class>/*``). Files that are not images by their ending, or not
    inside a class folder, are skipped and reported."""
    root = storage.normalize(uri)
    objects = list(storage.list_objects(root))
    if not objects:
        raise DataError(f"{root}: no files found (empty or missing tree); {_layout(root)}")
    has_train = any(o.path.startswith("train/") for o in objects)
    if not has_train and any(o.path.startswith("test/") for o in objects):
        # Without this, "test" would silently become a class of the training tree.
        raise DataError(f"{root}: has a test/ folder but no train/ folder; {_layout(root)}")
    trees: dict[str, list[tuple[str, str, str]]] = {"train": [], "test": []}
    skipped: list[dict[str, str]] = []
    for obj in objects:
        rel = obj.path
        if has_train:
            split, _, rel = rel.partition("/")
            if split not in trees:
                skipped.append({"path": obj.uri, "reason": "outside train/ and test/"})
                continue
        else:
            split = "train"
        if "/" not in rel:
            skipped.append({"path": obj.uri, "reason": "not inside a class folder"})
            continue
        if not rel.lower().endswith(IMAGE_SUFFIXES):
            skipped.append({"path": obj.uri, "reason": f"not an image file ending {IMAGE_SUFFIXES}"})
            continue
        trees[split].append((obj.uri, rel, f"{obj.size}:{obj.version}"))

    train_dir = posixpath.join(root, "train") if has_train else root
    if not trees["train"]:
        raise DataError(f"{train_dir}: no images in class folders; {_layout(root)}.{_examples(skipped)}")
    class_names = sorted({rel.split("/", 1)[0] for _, rel, _ in trees["train"]})
    counts = Counter(rel.split("/", 1)[0] for _, rel, _ in trees["train"])
    if len(class_names) < 2:
        # An object listing cannot show an empty class folder (S3 has no folders,
        # only keys), so "only one class" is all we can say: name the layout.
        raise DataError(
            f"{train_dir}: found images for only {len(class_names)} class {class_names}; classification "
            f"needs at least 2 class folders with images (an empty folder is invisible in an object "
            f"listing); {_layout(root)}"
        )
    index = {name: i for i, name in enumerate(class_names)}

    def records(pairs, split):
        out = []
        for path, rel, version in pairs:
            cls = rel.split("/", 1)[0]
            if cls not in index:
                skipped.append({"path": path, "reason": f"class {cls!r} of {split}/ is not a training class"})
                continue
            out.append({"path": path, "label": index[cls], "rel": rel, "version": version})
        return out

    train, test = records(trees["train"], "train"), records(trees["test"], "test")
    tree = ImageTree(root, class_names, train, test, skipped)
    log.info("listed %s: %d classes, %s", root, len(class_names), dict(counts))
    return tree


def split_hash(rel: str, seed: int) -> float:
    return unit_hash(f"{seed}:{rel}")


def class_mixed(records: list[dict]) -> list[dict]:
    """Records in a deterministic hash order that mixes classes. Listings come sorted by
    class folder: blocks (or shards) cut from that order each hold one class, and per-epoch
    block shuffling plus a local buffer cannot undo it (batches of a single class;
    BatchNorm-heavy nets then do not learn)."""
    return sorted(records, key=lambda r: split_hash(r.get("rel", r["path"]), 7919))


def split_records(records: list[dict], fraction: float, seed: int = 0,
                  fixed: dict[str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """Deterministic train/validation split by a hash of each file's relative path.

    Stable across runs, re-listing and cluster sizes (no RNG state, no order
    dependence); every class with 2+ images lands on both sides. ``fixed``
    (path -> "train" | "val", a manifest's split column) places those records
    as it says; the others split by hash, clamped only so that each class still
    reaches both sides."""
    fixed = fixed or {}
    if fraction <= 0 and not fixed:
        return list(records), []
    by_class: dict[int, list[tuple[float, dict]]] = {}
    sides: dict[int, set[str]] = {}
    train, val = [], []
    for rec in records:
        side = fixed.get(rec["path"]) if fixed else None  # records without a path (features) never are fixed
        if side:
            (val if side == "val" else train).append(rec)
            sides.setdefault(rec["label"], set()).add(side)
        else:
            by_class.setdefault(rec["label"], []).append((split_hash(rec["rel"], seed), rec))
    for label, items in by_class.items():
        items.sort(key=lambda t: (t[0], t[1]["rel"]))
        n_val = sum(1 for u, _ in items if u < fraction)
        placed = sides.get(label, set())
        if fraction > 0 and len(items) + len(placed) >= 2:  # both sides get the class
            low = 0 if "val" in placed else 1
            high = len(items) - (0 if "train" in placed else 1)
            n_val = min(max(n_val, low), high)
        # The n_val smallest hashes: the same files as "u < fraction" unless clamped.
        val += [r for _, r in items[:n_val]]
        train += [r for _, r in items[n_val:]]
    return train, val


def tree_relpath(class_name: str, row: int, rows: int) -> str:
    """``<class>/<row>.png``, the row zero-padded to the width of the largest one."""
    return f"{class_name}/{row:0{len(str(max(rows - 1, 0)))}d}.png"


def check_label_range(labels: np.ndarray, names: list[str], what: str) -> None:
    if len(labels) and (int(np.min(labels)) < 0 or int(np.max(labels)) >= len(names)):
        raise DataError(
            f"{what} run from {int(np.min(labels))} to {int(np.max(labels))}, but there are "
            f"{len(names)} class names; labels must index class_names"
        )
