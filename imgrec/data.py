"""The image data plane: class-per-folder trees (or arrays) from any storage URI
into Ray Data datasets of uint8 pixels, decoded once and augmented every epoch.

Flow::

    list_image_tree(uri)            -> ImageTree (class names, file records, split)
    load_dataset(DataConfig)        -> ImageDataset: train / val / test Ray datasets
        read bytes + decode (map_batches, threaded GETs)  -> materialize()  (decode once)
        train: randomize_block_order + Augmenter           (every epoch, fresh randomness)
    shard_batches / to_tf_dataset   -> per-worker (uint8 images, int labels) batches

Class names come from the folder names, sorted, and travel with every
checkpoint and prediction so label indices never drift.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import logging
import posixpath
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec import storage
from imgrec.config import AugmentConfig, DataConfig, DecodeConfig
from imgrec.decode import IMAGE_SUFFIXES, BadImage, decode_image

log = logging.getLogger(__name__)

ARRAY_SCHEME = "array://"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class DataError(ValueError):
    """The dataset cannot be used as given; the message names the URI and the fix."""


# --------------------------------------------------------------------------- listing and split


@dataclass
class ImageTree:
    """What a class-per-folder tree holds, before any pixel is read."""

    root: str
    class_names: list[str]
    train: list[dict[str, Any]]  # {"path": uri, "label": int, "rel": "cat/001.jpg"}
    test: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}


def list_image_tree(uri: str) -> ImageTree:
    """List ``<root>/train/<class>/*`` (and ``<root>/test/<class>/*`` when present).

    A root without a ``train/`` folder is itself the training tree
    (``<root>/<class>/*``). Files that are not images by their ending, or not
    inside a class folder, are skipped and reported."""
    root = storage.normalize(uri)
    objects = list(storage.list_objects(root))
    if not objects:
        raise DataError(f"{root}: no files found; expected <root>/train/<class>/*.jpg (class-per-folder)")
    has_train = any(o.path.startswith("train/") for o in objects)
    trees: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
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
        trees[split].append((obj.uri, rel))

    train_dir = posixpath.join(root, "train") if has_train else root
    if not trees["train"]:
        raise DataError(f"{train_dir}: no images in class folders; expected {train_dir}/<class>/*.jpg")
    class_names = sorted({rel.split("/", 1)[0] for _, rel in trees["train"]})
    counts = Counter(rel.split("/", 1)[0] for _, rel in trees["train"])
    # A class folder with no images at all never shows up above; find them so the error names them.
    if len(class_names) < 2:
        raise DataError(
            f"{train_dir}: found {len(class_names)} class folder(s) with images {class_names}; "
            "image classification needs at least 2 class folders"
        )
    index = {name: i for i, name in enumerate(class_names)}

    def records(pairs, split):
        out = []
        for path, rel in pairs:
            cls = rel.split("/", 1)[0]
            if cls not in index:
                skipped.append({"path": path, "reason": f"class {cls!r} of {split}/ is not a training class"})
                continue
            out.append({"path": path, "label": index[cls], "rel": rel})
        return out

    tree = ImageTree(root, class_names, records(trees["train"], "train"), records(trees["test"], "test"), skipped)
    log.info("listed %s: %d classes, %s", root, len(class_names), dict(counts))
    return tree


def _unit_hash(rel: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_records(records: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic train/validation split by a hash of each file's relative path.

    Stable across runs, re-listing and cluster sizes (no RNG state, no order
    dependence); every class with 2+ images lands on both sides."""
    if fraction <= 0:
        return list(records), []
    by_class: dict[int, list[tuple[float, dict]]] = {}
    for rec in records:
        by_class.setdefault(rec["label"], []).append((_unit_hash(rec["rel"], seed), rec))
    train, val = [], []
    for items in by_class.values():
        items.sort(key=lambda t: (t[0], t[1]["rel"]))
        n_val = sum(1 for u, _ in items if u < fraction)
        if len(items) >= 2:
            n_val = min(max(n_val, 1), len(items) - 1)  # both sides get the class
        # The n_val smallest hashes: the same files as "u < fraction" unless clamped.
        val += [r for _, r in items[:n_val]]
        train += [r for _, r in items[n_val:]]
    return train, val


# --------------------------------------------------------------------------- reading and decoding


_local = threading.local()


def _s3_client():
    # One boto3 client per thread of each Ray worker process: clients are thread-safe
    # for calls, but creating them is slow, and they must never be pickled.
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = storage.boto3_client()
    return client


def fetch_bytes(uri: str) -> bytes:
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        return _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    with open(uri, "rb") as fh:
        return fh.read()


class DecodeImages:
    """Ray Data UDF: read each file's bytes (threaded, since S3 GETs are latency
    bound) and decode to uint8 pixels. A file that cannot be read or decoded gives
    a row with ``error`` set and a black image, so one bad file never fails a run."""

    def __init__(self, decode: DecodeConfig, io_threads: int = 16):
        self.decode = decode
        self.io_threads = io_threads

    def _one(self, uri: str) -> tuple[np.ndarray | None, str]:
        try:
            data = fetch_bytes(uri)
        except Exception as exc:  # a vanished object or a network error: report, go on
            return None, f"cannot read: {type(exc).__name__}: {str(exc)[:200]}"
        try:
            return decode_image(data, self.decode), ""
        except BadImage as exc:
            return None, exc.reason

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        if len(paths) > 1 and self.io_threads > 1:
            with futures.ThreadPoolExecutor(min(self.io_threads, len(paths))) as pool:
                results = list(pool.map(self._one, paths))
        else:
            results = [self._one(p) for p in paths]
        h, w = self.decode.image_size
        images = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
        errors = []
        for i, (img, err) in enumerate(results):
            if img is not None:
                images[i] = img
            errors.append(err)
        out = {k: v for k, v in batch.items() if k != "rel"}
        out["image"] = images
        out["error"] = np.array(errors, dtype=object)
        return out


@dataclass
class ImageDataset:
    """Decoded datasets plus everything a checkpoint must remember about them."""

    class_names: list[str]
    train: Any  # ray.data.Dataset of {"image": uint8 HxWx3, "label": int64, "path": str}
    val: Any | None
    test: Any | None
    counts: dict[str, int]
    bad_files: list[dict[str, str]]
    source: str
    decode: DecodeConfig
    split_seed: int
    validation_split: float

    def summary(self) -> str:
        bad = f", {len(self.bad_files)} bad files skipped" if self.bad_files else ""
        return (
            f"{self.source}: {len(self.class_names)} classes {self.class_names}, "
            f"train {self.counts.get('train', 0)}, val {self.counts.get('val', 0)}, "
            f"test {self.counts.get('test', 0)}{bad}"
        )


def _decoded(records: list[dict], decode: DecodeConfig, *, cache: bool, rows_per_block: int = 256):
    """Records -> Ray dataset of decoded pixels, bad rows reported separately."""
    import ray

    if not records:
        return None, 0, []
    n_blocks = max(1, min(200, len(records) // rows_per_block + 1))
    ds = ray.data.from_items(records, override_num_blocks=n_blocks)
    ds = ds.map_batches(DecodeImages(decode), batch_size=64, batch_format="numpy")
    if cache:
        ds = ds.materialize()  # decode once; later epochs only shuffle and augment
    bad_rows = ds.filter(expr="error != ''").select_columns(["path", "error"]).take_all()
    bad = [{"path": str(r["path"]), "reason": str(r["error"])} for r in bad_rows]
    good = ds.filter(expr="error == ''").drop_columns(["error"])
    return good, len(records) - len(bad), bad


def _from_arrays(images: np.ndarray, labels: np.ndarray, split: str) -> list[dict]:
    labels = np.asarray(labels).reshape(-1)
    return [
        {"path": f"{ARRAY_SCHEME}{split}/{i:06d}", "label": int(labels[i]), "rel": f"{split}/{i:06d}", "index": i}
        for i in range(len(labels))
    ]


def _array_dataset(images: np.ndarray, records: list[dict], decode: DecodeConfig):
    """In-memory arrays (e.g. ``keras.datasets.cifar10.load_data()``) as a Ray dataset,
    resized to the decode size when they differ."""
    import ray

    if not records:
        return None
    idx = np.array([r["index"] for r in records])
    imgs = np.asarray(images)[idx]
    if imgs.ndim == 3:
        imgs = np.repeat(imgs[..., None], 3, axis=-1)
    if imgs.dtype != np.uint8:
        raise DataError(f"array images must be uint8 pixels (0-255), got {imgs.dtype}; pixel scaling lives in the model")
    h, w = decode.image_size
    if imgs.shape[1:3] != (h, w):
        from PIL import Image

        imgs = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in imgs])
    items = [
        {"image": im, "label": int(r["label"]), "path": r["path"]} for im, r in zip(imgs, records, strict=True)
    ]
    return ray.data.from_items(items, override_num_blocks=max(1, min(64, len(items) // 1024 + 1))).materialize()


def load_cifar10(loader=None):
    """``keras.datasets.cifar10.load_data()`` (needs the network), or ``loader()``
    returning the same ``((x_train, y_train), (x_test, y_test))`` shape."""
    if loader is None:
        import keras

        try:
            return keras.datasets.cifar10.load_data()
        except Exception as exc:
            raise DataError(
                f"cannot download CIFAR-10 ({type(exc).__name__}: {exc}); without network access, "
                "export it elsewhere with `imgrec data export-cifar10 URI` and train on that URI"
            ) from None
    return loader()


def load_dataset(
    cfg: DataConfig,
    *,
    arrays: tuple | None = None,
    class_names: list[str] | None = None,
) -> ImageDataset:
    """One call from a DataConfig to decoded train/val/test Ray datasets.

    ``cfg.uri`` is an image tree URI or ``cifar10``; ``arrays`` takes in-memory
    ``((x_train, y_train), (x_test, y_test))`` instead (CIFAR-style)."""
    decode = cfg.decode
    if arrays is not None or cfg.uri == "cifar10":
        (x_tr, y_tr), (x_te, y_te) = arrays if arrays is not None else load_cifar10()
        names = list(class_names or (CIFAR10_CLASSES if cfg.uri == "cifar10" else None) or
                     [str(i) for i in range(int(np.max(y_tr)) + 1)])
        train_recs, val_recs = split_records(_from_arrays(x_tr, y_tr, "train"), cfg.validation_split, cfg.split_seed)
        test_recs = _from_arrays(x_te, y_te, "test") if x_te is not None and len(x_te) else []
        return ImageDataset(
            class_names=names,
            train=_array_dataset(x_tr, train_recs, decode),
            val=_array_dataset(x_tr, val_recs, decode),
            test=_array_dataset(x_te, test_recs, decode) if test_recs else None,
            counts={"train": len(train_recs), "val": len(val_recs), "test": len(test_recs)},
            bad_files=[],
            source=cfg.uri or "arrays",
            decode=decode,
            split_seed=cfg.split_seed,
            validation_split=cfg.validation_split,
        )

    tree = list_image_tree(cfg.uri)
    train_recs = tree.train
    if cfg.limit_per_class:
        seen: Counter = Counter()
        train_recs = [r for r in train_recs if (seen.update([r["label"]]) or seen[r["label"]] <= cfg.limit_per_class)]
    train_recs, val_recs = split_records(train_recs, cfg.validation_split, cfg.split_seed)
    bad = list(tree.skipped)
    train, n_train, b = _decoded(train_recs, decode, cache=cfg.cache)
    bad += b
    val, n_val, b = _decoded(val_recs, decode, cache=cfg.cache)
    bad += b
    test, n_test, b = _decoded(tree.test, decode, cache=cfg.cache)
    bad += b
    if n_train == 0:
        raise DataError(f"{tree.root}: every training image failed to decode; see the bad-file report: {bad[:5]}")
    for item in bad:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    return ImageDataset(
        class_names=tree.class_names,
        train=train,
        val=val,
        test=test,
        counts={"train": n_train, "val": n_val, "test": n_test},
        bad_files=bad,
        source=tree.root,
        decode=decode,
        split_seed=cfg.split_seed,
        validation_split=cfg.validation_split,
    )


def augmented(ds, augment: AugmentConfig):
    """The per-epoch part of the training pipeline: block order shuffled and
    images augmented again every time the dataset is iterated."""
    ds = ds.randomize_block_order()
    if augment.enabled:
        from imgrec.augment import Augmenter

        ds = ds.map_batches(Augmenter(augment), batch_size=64, batch_format="numpy")
    return ds


# --------------------------------------------------------------------------- feeding training


def shard_batches(
    shard,
    batch_size: int,
    *,
    shuffle_buffer: int = 0,
    drop_last: bool = False,
    seed: int | None = None,
    prefetch: int = 2,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 images, int labels) batches from a Ray Train dataset shard (or any
    Ray dataset). ``shuffle_buffer`` > 0 gives a fresh local shuffle each epoch."""
    kwargs: dict[str, Any] = dict(batch_size=batch_size, batch_format="numpy", drop_last=drop_last,
                                  prefetch_batches=prefetch)
    if shuffle_buffer:
        kwargs["local_shuffle_buffer_size"] = shuffle_buffer
        if seed is not None:
            kwargs["local_shuffle_seed"] = seed
    for batch in shard.iter_batches(**kwargs):
        yield batch["image"], batch["label"].astype(np.int64)


def to_tf_dataset(shard, batch_size: int, image_size: tuple[int, int], **kwargs):
    """A tf.data.Dataset of (uint8 images, int64 labels) from a shard, prefetched.
    Each iteration of the returned dataset starts a new epoch of the shard."""
    import tensorflow as tf

    h, w = image_size
    ds = tf.data.Dataset.from_generator(
        lambda: shard_batches(shard, batch_size, **kwargs),
        output_signature=(
            tf.TensorSpec((None, h, w, 3), tf.uint8),
            tf.TensorSpec((None,), tf.int64),
        ),
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def take_arrays(ds, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Collect (images, labels, paths) of a small dataset into memory (tests, reports)."""
    if limit:
        ds = ds.limit(limit)
    images, labels, paths = [], [], []
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        images.append(batch["image"])
        labels.append(batch["label"])
        paths += [str(p) for p in batch["path"]]
    if not images:
        return np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0,), np.int64), []
    return np.concatenate(images), np.concatenate(labels), paths

