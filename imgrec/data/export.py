"""Writing in-memory arrays (CIFAR-10 included) as a PNG class-per-folder tree."""

from __future__ import annotations

import io
import logging

import numpy as np

from imgrec import storage
from imgrec.data.datasets import as_rgb_uint8, load_cifar10
from imgrec.data.tree import CIFAR10_CLASSES, DataError, check_label_range, tree_relpath

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- exporting arrays as a tree


def export_arrays(
    arrays: tuple,
    class_names: list[str],
    uri: str,
    *,
    overwrite: bool = False,
    workers: int = 16,
    progress: bool = False,
) -> dict[str, dict[str, int]]:
    """Write in-memory ``((x_train, y_train), (x_test, y_test))`` as an image
    tree: ``<uri>/train/<class>/<i>.png`` and ``<uri>/test/<class>/<i>.png``,
    ``i`` being the row in the array (zero-padded, so listing order is row order).

    PNG is lossless, so ``load_dataset`` at the same size gives back the exact
    pixels. ``class_names[label]`` names each folder; they must be sorted,
    because a folder tree's labels are its sorted folder names. ``x_test`` may
    be None or empty. Returns ``{split: {class: images written}}``."""
    names = _check_export_names(class_names)
    (x_tr, y_tr), (x_te, y_te) = arrays
    splits = {"train": (x_tr, y_tr)}
    if x_te is not None and len(x_te):
        splits["test"] = (x_te, y_te)
    checked = {split: _checked_arrays(x, y, names, split) for split, (x, y) in splits.items()}
    out = storage.empty_destination(uri, overwrite=overwrite, what="the image tree", error=DataError)

    def items():
        for split, (images, labels) in checked.items():
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                yield f"{split}/{tree_relpath(names[label], i, len(images))}", _png(image)

    total = sum(len(x) for x, _ in checked.values())
    storage.write_many(out, items(), workers=workers, progress=progress, total=total)
    return {
        split: {name: int(np.sum(labels == k)) for k, name in enumerate(names)}
        for split, (_, labels) in checked.items()
    }


def export_cifar10(uri: str, loader=None, **kwargs) -> dict[str, dict[str, int]]:
    """``keras.datasets.cifar10.load_data()`` (or ``loader()``) written as a PNG
    tree with the class names airplane … truck (``CIFAR10_CLASSES``). Needs the
    network unless ``loader`` is given; keyword arguments go to ``export_arrays``."""
    return export_arrays(load_cifar10(loader), CIFAR10_CLASSES, uri, **kwargs)


def _check_export_names(class_names: list[str]) -> list[str]:
    names = [str(n) for n in class_names]
    bad = [n for n in names if not n or "/" in n or "\\" in n or n in (".", "..")]
    if bad:
        raise DataError(f"class names must be usable as folder names (no '/', not '.' or '..'), got {bad}")
    if len(set(names)) != len(names) or names != sorted(names):
        raise DataError(
            f"class names must be unique and sorted, got {names}: a folder tree's labels are its sorted "
            "folder names, so label i must be the i-th name in sorted order"
        )
    return names


def _checked_arrays(images, labels, names: list[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    images = as_rgb_uint8(np.asarray(images))
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{split}: {len(images)} images but {len(labels)} labels")
    check_label_range(labels, names, f"{split}: labels")
    return images, labels


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # compress_level 1: several times faster than the default and still lossless.
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
