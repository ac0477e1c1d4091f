"""The image data plane: class-per-folder trees (or arrays) from any storage URI
into Ray Data datasets of uint8 pixels, decoded once and augmented every epoch.

Flow::

    list_image_tree(uri)            -> ImageTree (class names, file records, split)
    load_dataset(DataConfig)        -> ImageDataset: train / val / test Ray datasets
        read bytes + decode (map_batches, threaded GETs)  -> materialize()  (decode once)
        bad files dropped inside the decode tasks, then re-checked here for the report
        train: randomize_block_order + Augmenter           (every epoch, fresh randomness)
    shard_batches / to_tf_dataset   -> per-worker (uint8 images, int labels) batches

    inspect(uri)                    -> InspectReport: counts per class and split, image sizes, bad files
    export_arrays / export_cifar10  -> in-memory arrays written as a PNG class-per-folder tree

Class names come from the folder names, sorted, and travel with every
checkpoint and prediction so label indices never drift.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import posixpath
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec import storage
from imgrec.augment import Augmenter
from imgrec.config import AugmentConfig, DataConfig, DecodeConfig
from imgrec.decode import IMAGE_SUFFIXES, BadImage, check_file_size, image_info, plan_decode
from imgrec.runtime import ensure_ray

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


def _layout(root: str) -> str:
    """The expected layout, for error messages."""
    return (
        f"expected one folder per class: {root}/train/<class>/<image>.jpg (and optionally "
        f"{root}/test/<class>/<image>.jpg), or {root}/<class>/<image>.jpg"
    )


def _path_reasons(items: list[dict[str, str]], n: int) -> str:
    """``path (reason); ...`` for the first ``n`` of a bad-file list, for error messages."""
    return "; ".join(f"{i['path']} ({i['reason']})" for i in items[:n])


def _examples(skipped: list[dict[str, str]], n: int = 3) -> str:
    if not skipped:
        return ""
    return f" Skipped {len(skipped)} file(s), e.g. {_path_reasons(skipped, n)}."


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
        raise DataError(f"{train_dir}: no images in class folders; {_layout(root)}.{_examples(skipped)}")
    class_names = sorted({rel.split("/", 1)[0] for _, rel in trees["train"]})
    counts = Counter(rel.split("/", 1)[0] for _, rel in trees["train"])
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
        for path, rel in pairs:
            cls = rel.split("/", 1)[0]
            if cls not in index:
                skipped.append({"path": path, "reason": f"class {cls!r} of {split}/ is not a training class"})
                continue
            out.append({"path": path, "label": index[cls], "rel": rel})
        return out

    train, test = records(trees["train"], "train"), records(trees["test"], "test")
    tree = ImageTree(root, class_names, train, test, skipped)
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


class ReadError(OSError):
    """A file or object could not be read (vanished, network, permissions)."""


def _open_object(uri: str) -> tuple[int, Any]:
    """(size, open binary stream) of a file or S3 object; its body is not read yet."""
    try:
        if uri.startswith("s3://"):
            bucket, _, key = uri[5:].partition("/")
            response = _s3_client().get_object(Bucket=bucket, Key=key)
            return int(response["ContentLength"]), response["Body"]
        fh = open(uri, "rb")
        return os.fstat(fh.fileno()).st_size, fh
    except Exception as exc:  # botocore raises many types
        raise ReadError(_cannot_read(exc)) from None


def _read_body(stream, max_bytes: int | None) -> bytes:
    """The whole body, but never more than ``max_bytes`` + 1 (a size that lied)."""
    try:
        data = stream.read() if max_bytes is None else stream.read(max_bytes + 1)
    except Exception as exc:
        raise ReadError(_cannot_read(exc)) from None
    if max_bytes is not None:
        check_file_size(len(data), max_bytes)
    return data


def _cannot_read(exc: BaseException) -> str:
    return f"cannot read: {type(exc).__name__}: {str(exc)[:200]}"


def fetch_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """A file's bytes. Over ``max_bytes`` it raises ``BadImage`` before reading the
    body; an unreadable file raises ``ReadError``."""
    size, stream = _open_object(uri)
    with contextlib.closing(stream):
        if max_bytes is not None:
            check_file_size(size, max_bytes)
        return _read_body(stream, max_bytes)


class MemoryGate:
    """Bytes held at once by a process's read threads: a thread holds a file's
    size while the file is in memory, then adds its decode budget while it
    decodes. A request waits while it would pass ``limit``, except that one
    decode (or, with nothing held, one read) always proceeds, so no set of
    waiting threads can block one another: the peak is at most ``limit`` plus
    one image."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.decoding = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int, *, decoding: bool = False):
        with self._changed:
            self._changed.wait_for(lambda: self._admits(nbytes, decoding))
            self.held += nbytes
            self.decoding += decoding
        try:
            yield
        finally:
            with self._changed:
                self.held -= nbytes
                self.decoding -= decoding
                self._changed.notify_all()

    def _admits(self, nbytes: int, decoding: bool) -> bool:
        if self.held + nbytes <= self.limit:
            return True
        return self.decoding == 0 if decoding else self.held == 0


_gates: dict[int, MemoryGate] = {}
_gates_lock = threading.Lock()


def memory_gate(limit: int) -> MemoryGate:
    """The process's gate for ``limit`` (gates hold locks: never pickled with a UDF)."""
    with _gates_lock:
        return _gates.setdefault(int(limit), MemoryGate(int(limit)))


class DecodeImages:
    """Ray Data UDF: read each file's bytes (threaded, since S3 GETs are latency
    bound) and decode to uint8 pixels. A file that cannot be read or decoded gives
    a row with ``error`` set and a black image, so one bad file never fails a run.
    The bytes in flight (files being held, decode memory) are bounded by
    ``DecodeConfig.max_inflight_bytes`` through the process's ``MemoryGate``."""

    def __init__(self, decode: DecodeConfig, io_threads: int = 16):
        self.decode = decode
        self.io_threads = io_threads

    def _one(self, uri: str) -> tuple[np.ndarray | None, str]:
        gate = memory_gate(self.decode.max_inflight_bytes)
        try:
            size, stream = _open_object(uri)
            with contextlib.closing(stream):
                check_file_size(size, self.decode.max_file_bytes)
                with gate.hold(size):
                    plan = plan_decode(_read_body(stream, self.decode.max_file_bytes), self.decode)
                    with gate.hold(plan.memory_bytes, decoding=True):
                        return plan.run(), ""
        except ReadError as exc:  # a vanished object or a network error: report, go on
            return None, str(exc)
        except BadImage as exc:
            return None, exc.reason

    def _results(self, paths: list[str]) -> Iterator[tuple[np.ndarray | None, str]]:
        """``_one`` for every path, in order, read on ``io_threads`` threads."""
        if len(paths) > 1 and self.io_threads > 1:
            with futures.ThreadPoolExecutor(min(self.io_threads, len(paths))) as pool:
                yield from pool.map(self._one, paths)
        else:
            yield from map(self._one, paths)

    def errors(self, paths: list[str]) -> list[str]:
        """Each file's read or decode error ('' when it decodes); pixels are not kept."""
        return [err for _, err in self._results(paths)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        h, w = self.decode.image_size
        images = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
        errors = []
        for i, (img, err) in enumerate(self._results(paths)):
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


# Rows per Ray Data block when decoding (the unit of parallelism, and of the
# per-epoch block shuffle), and rows per decode / augment call. A decode call
# reads its files on DecodeImages.io_threads threads: 64 rows keep 16 reads in
# flight for most of the call, which is what S3's per-GET latency needs.
ROWS_PER_BLOCK = 256
DECODE_BATCH = 64
AUGMENT_BATCH = 64


def _num_blocks(n_rows: int, rows_per_block: int, max_blocks: int = 200) -> int:
    return max(1, min(max_blocks, -(-n_rows // rows_per_block)))


def _decoded(records: list[dict], decode: DecodeConfig, *, cache: bool, rows_per_block: int = ROWS_PER_BLOCK):
    """Records -> (Ray dataset of the good decoded rows, their count, bad rows).

    With ``cache``, bad rows are dropped inside the decode tasks, so a single
    pass writes a single copy of the good pixels to the object store, decoded
    once for every epoch; the few files that went missing are then re-checked
    here for their reason. Measured and dropped: materializing the decode
    output and then the filtered rows (a second copy, a third pass for the
    report); a lazy Ray filter on the materialized output (it re-ran every
    epoch, behind the barrier of ``randomize_block_order``: +1.5-4 s per epoch
    for 2000 images at 128x128); a Ray filter fused into the decode (it copies
    every block: ~0.2 ms per 128x128 image). Without ``cache`` every epoch
    decodes again, and the report costs one extra pass now."""
    import ray
    from ray.data.expressions import col

    if not records:
        return None, 0, []
    # Listings come sorted by class folder: blocks cut from that order each hold
    # one class, and per-epoch block shuffling plus a local buffer cannot undo it
    # (batches of a single class; BatchNorm-heavy nets then do not learn). A
    # deterministic hash order mixes classes within every block.
    records = sorted(records, key=lambda r: _unit_hash(r.get("rel", r["path"]), 7919))
    ds = ray.data.from_items(records, override_num_blocks=_num_blocks(len(records), rows_per_block))
    if not cache:
        ds = ds.map_batches(DecodeImages(decode), batch_size=DECODE_BATCH, batch_format="numpy")
        # Project first so the report never moves pixels.
        rows = ds.select_columns(["path", "error"]).filter(expr=col("error") != "").take_all()
        bad = [{"path": str(r["path"]), "reason": str(r["error"])} for r in rows]
        return ds.filter(expr=col("error") == "").drop_columns(["error"]), len(records) - len(bad), bad
    good = ds.map_batches(_DecodeGood(decode), batch_size=DECODE_BATCH, batch_format="numpy").materialize()
    n_good = good.count()  # from block metadata: free
    bad = _missing_reasons(records, good, decode) if n_good < len(records) else []
    return good, n_good, bad


class _DecodeGood(DecodeImages):
    """``DecodeImages`` that drops its failed rows itself: no ``error`` column,
    and no copy of the batch when every file decoded (the usual case)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(batch)
        ok = out.pop("error") == ""
        return out if ok.all() else {k: v[ok] for k, v in out.items()}


RECHECK_LIMIT = 1000  # bad files re-read on the driver for their reason; the rest get a generic one


def _missing_reasons(records: list[dict], good, decode: DecodeConfig) -> list[dict[str, str]]:
    """Why the records missing from ``good`` failed: read and decode them again
    here (bad files are few; a tree of nothing but bad files stops at RECHECK_LIMIT)."""
    kept = {str(r["path"]) for r in good.select_columns(["path"]).take_all()}
    missing = [r["path"] for r in records if r["path"] not in kept]
    errors = DecodeImages(decode).errors(missing[:RECHECK_LIMIT])
    bad = [
        {"path": path, "reason": err or "failed in a Ray worker but reads fine now (a transient read error?)"}
        for path, err in zip(missing, errors, strict=False)
    ]
    bad += [{"path": p, "reason": "failed to read or decode (not re-checked: too many bad files)"}
            for p in missing[RECHECK_LIMIT:]]
    return bad


def _from_arrays(labels: np.ndarray, split: str, names: list[str]) -> list[dict]:
    """Records for array rows. ``rel`` is the path ``export_arrays`` writes the
    row to, so arrays and their exported tree get the same validation split."""
    labels = np.asarray(labels).reshape(-1)
    return [
        {"path": f"{ARRAY_SCHEME}{split}/{i:06d}", "label": int(label), "index": i,
         "rel": _export_relpath(names[label], i, len(labels))}
        for i, label in enumerate(labels)
    ]


def _array_dataset(images: np.ndarray, records: list[dict], decode: DecodeConfig):
    """In-memory arrays (e.g. ``keras.datasets.cifar10.load_data()``) as a Ray dataset,
    resized to the decode size when they differ."""
    import ray

    if not records:
        return None
    records = sorted(records, key=lambda r: _unit_hash(r["rel"], 7919))  # mix classes across blocks (see _decoded)
    idx = np.array([r["index"] for r in records])
    imgs = _as_rgb_uint8(np.asarray(images)[idx])
    h, w = decode.image_size
    if imgs.shape[1:3] != (h, w):
        from PIL import Image

        imgs = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in imgs])
    items = [{"image": im, "label": int(r["label"]), "path": r["path"]}
             for im, r in zip(imgs, records, strict=True)]
    return ray.data.from_items(items, override_num_blocks=_num_blocks(len(items), 1024, 64)).materialize()


def _as_rgb_uint8(images: np.ndarray) -> np.ndarray:
    """N×H×W, N×H×W×1 or N×H×W×3 uint8 -> N×H×W×3 uint8."""
    if images.dtype != np.uint8:
        raise DataError(
            f"array images must be uint8 pixels (0-255), got {images.dtype}; pixel scaling lives in the model"
        )
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"array images must be N×H×W(×1 or ×3), got shape {images.shape}")
    return images


def load_cifar10(loader=None):
    """``keras.datasets.cifar10.load_data()`` (needs the network), or ``loader()``
    returning the same ``((x_train, y_train), (x_test, y_test))`` shape."""
    if loader is None:
        import keras

        try:
            return keras.datasets.cifar10.load_data()
        except Exception as exc:
            raise DataError(
                f"cannot download CIFAR-10 ({type(exc).__name__}: {str(exc)[:200]}); without network access, "
                "export it where there is (`imgrec data export-cifar10 URI`) and train on that URI"
            ) from None
    return loader()


def _require_image_size(cfg: DataConfig) -> DecodeConfig:
    if cfg.decode.image_size is None:
        raise DataError(
            f"{cfg.uri or 'arrays'}: DecodeConfig.image_size is None, and loading decodes to a fixed size; "
            "set image_size (e.g. DecodeConfig(image_size=(128, 128)), --image-size) or let train() fill it "
            "from the model's input size"
        )
    return cfg.decode


def _limit_per_class(records: list[dict], limit: int | None) -> list[dict]:
    """The first ``limit`` records of each class, in listing order (sorted
    paths, so the same files every time). ``None`` or 0: all of them."""
    if not limit:
        return list(records)
    kept: list[dict] = []
    taken: Counter = Counter()
    for rec in records:
        if taken[rec["label"]] < limit:
            taken[rec["label"]] += 1
            kept.append(rec)
    return kept


def _array_class_names(cfg: DataConfig, labels: np.ndarray, class_names: list[str] | None) -> list[str]:
    if class_names:
        names = list(class_names)
    elif cfg.uri == "cifar10":
        names = list(CIFAR10_CLASSES)
    else:
        names = [str(i) for i in range(int(np.max(labels)) + 1)]
    _check_label_range(labels, names, "array labels")
    return names


def _check_label_range(labels: np.ndarray, names: list[str], what: str) -> None:
    if len(labels) and (int(np.min(labels)) < 0 or int(np.max(labels)) >= len(names)):
        raise DataError(
            f"{what} run from {int(np.min(labels))} to {int(np.max(labels))}, but there are "
            f"{len(names)} class names; labels must index class_names"
        )


def _load_arrays(cfg: DataConfig, arrays: tuple, class_names: list[str] | None) -> ImageDataset:
    (x_tr, y_tr), (x_te, y_te) = arrays
    decode = cfg.decode
    names = _array_class_names(cfg, np.asarray(y_tr).reshape(-1), class_names)
    train_recs = _limit_per_class(_from_arrays(y_tr, "train", names), cfg.limit_per_class)
    train_recs, val_recs = split_records(train_recs, cfg.validation_split, cfg.split_seed)
    test_recs = _from_arrays(y_te, "test", names) if x_te is not None and len(x_te) else []
    return ImageDataset(
        class_names=names,
        train=_array_dataset(x_tr, train_recs, decode),
        val=_array_dataset(x_tr, val_recs, decode),
        test=_array_dataset(x_te, test_recs, decode),
        counts={"train": len(train_recs), "val": len(val_recs), "test": len(test_recs)},
        bad_files=[],
        source=cfg.uri or "arrays",
        decode=decode,
        split_seed=cfg.split_seed,
        validation_split=cfg.validation_split,
    )


def load_dataset(
    cfg: DataConfig,
    *,
    arrays: tuple | None = None,
    class_names: list[str] | None = None,
) -> ImageDataset:
    """One call from a DataConfig to decoded train/val/test Ray datasets.

    ``cfg.uri`` is an image tree URI or ``cifar10``; ``arrays`` takes in-memory
    ``((x_train, y_train), (x_test, y_test))`` instead (CIFAR-style).
    ``cfg.decode.image_size`` must be set. Unreadable or undecodable files are
    skipped and listed in ``bad_files``; only a tree where every training image
    is bad is an error."""
    decode = _require_image_size(cfg)
    if arrays is not None or cfg.uri == "cifar10":
        return _load_arrays(cfg, arrays if arrays is not None else load_cifar10(), class_names)

    tree = list_image_tree(cfg.uri)
    train_recs = _limit_per_class(tree.train, cfg.limit_per_class)
    train_recs, val_recs = split_records(train_recs, cfg.validation_split, cfg.split_seed)
    train, n_train, train_bad = _decoded(train_recs, decode, cache=cfg.cache)
    if n_train == 0:
        raise DataError(
            f"{tree.root}: every training image failed to decode; first bad files: {_path_reasons(train_bad, 5)}"
        )
    val, n_val, val_bad = _decoded(val_recs, decode, cache=cfg.cache)
    test, n_test, test_bad = _decoded(tree.test, decode, cache=cfg.cache)
    bad = tree.skipped + train_bad + val_bad + test_bad
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
    images augmented again every time the dataset is iterated (lazy: nothing
    runs until an epoch iterates it).

    Randomness across epochs:

    * ``augment.seed is None`` (the default, and what training uses): every
      batch draws fresh OS entropy, so each epoch sees new augmentations.
    * a seed: reproducible, and still different every epoch. Ray Data pickles
      a fresh ``Augmenter`` into every task, so its own call counter restarts
      each epoch and would repeat the same augmentation; the salt is instead
      Ray Data's execution index (one per pass over the dataset), read inside
      the task. The block order is seeded the same way, so a rerun of the
      same program gets the same salts. If Ray stops exposing the index, the
      salt is 0: the same augmentation every epoch, still reproducible.
    """
    from ray.data import RandomSeedConfig

    seed = augment.seed
    ds = ds.randomize_block_order(seed=None if seed is None else RandomSeedConfig(seed=int(seed)))
    if not augment.enabled:
        return ds

    udf = Augmenter(augment) if seed is None else _EpochSaltedAugmenter(augment)
    return ds.map_batches(udf, batch_size=AUGMENT_BATCH, batch_format="numpy")


class _EpochSaltedAugmenter:
    """A seeded ``Augmenter`` whose salt is the current pass over the dataset."""

    def __init__(self, augment: AugmentConfig):

        self.augmenter = Augmenter(augment)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.augmenter.salt = _execution_index()
        return self.augmenter(batch)


def _execution_index() -> int:
    """Ray Data's count of finished executions of this dataset's context: it
    grows by one per epoch (a private attribute; 0 when absent)."""
    from ray.data import DataContext

    return int(getattr(DataContext.get_current(), "_execution_idx", 0) or 0)


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


# --------------------------------------------------------------------------- inspecting a tree

# Image headers sit in the first few KB; a header beyond this (a big EXIF or ICC
# block) falls back to reading the whole file.
HEADER_BYTES = 64 * 1024
INSPECT_SIZE = (64, 64)  # decode size for the bad-file check: small, so JPEG draft decoding makes it cheap


@dataclass
class SizeSummary:
    """Image sizes as displayed (after EXIF orientation), from file headers only."""

    sampled: int  # headers read
    total: int  # files in the tree
    width: tuple[float, float, float]  # min, median, max
    height: tuple[float, float, float]
    modes: dict[str, int]
    formats: dict[str, int]
    unreadable: int  # sampled files whose header could not be parsed (the decode check says why)


@dataclass
class InspectReport:
    """What ``imgrec data inspect`` prints: ``str(report)`` is a readable table."""

    uri: str
    class_names: list[str]
    counts: dict[str, dict[str, int]]  # split (train/val/test) -> class -> images
    sizes: SizeSummary | None
    bad_files: list[dict[str, str]]  # {"path", "reason"}: files that fail to read or decode
    skipped: list[dict[str, str]]  # {"path", "reason"}: files the listing left out
    checked: str  # which files the bad-file check decoded, and how
    validation_split: float

    def __str__(self) -> str:
        parts = [self._counts_table(), self._sizes_table(), self._bad_list()]
        if self.skipped:
            parts.append(_file_list(f"skipped by the listing: {len(self.skipped)}", self.skipped))
        return "\n\n".join(parts)

    def _counts_table(self) -> str:
        splits = ["train", "val", "test"]
        totals = {s: sum(self.counts[s].values()) for s in splits}
        head = (
            f"{self.uri}: {len(self.class_names)} classes, {sum(totals.values())} images "
            f"(train {totals['train']}, val {totals['val']} = {self.validation_split:.0%} of train/, "
            f"test {totals['test']})"
        )
        rows = [[name, *(self.counts[s].get(name, 0) for s in splits)] for name in self.class_names]
        rows.append(["total", *(totals[s] for s in splits)])
        rows = [[*r, sum(r[1:])] for r in rows]
        return head + "\n\n" + _table(["class", *splits, "total"], rows)

    def _sizes_table(self) -> str:
        s = self.sizes
        if s is None or s.sampled == s.unreadable:
            return "image sizes: no readable image headers"
        head = f"image sizes (headers of {s.sampled - s.unreadable} of {s.total} files"
        head += ", a stable sample" if s.sampled < s.total else ""
        head += f"; {s.unreadable} unreadable, see bad files)" if s.unreadable else ")"
        rows = [["width", *s.width], ["height", *s.height]]
        lines = [head, _table(["", "min", "median", "max"], rows)]
        lines.append("modes: " + _most_common(s.modes))
        lines.append("formats: " + _most_common(s.formats))
        return "\n".join(lines)

    def _bad_list(self) -> str:
        if not self.bad_files:
            return f"bad files: none ({self.checked})"
        return _file_list(f"bad files: {len(self.bad_files)} ({self.checked})", self.bad_files)


def _file_list(title: str, items: list[dict[str, str]], limit: int = 20) -> str:
    lines = [title] + [f"  {i['path']}: {i['reason']}" for i in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


def _most_common(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _table(header: list[str], rows: list[list]) -> str:
    """Left-aligned first column, right-aligned numbers."""
    def text(v) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    cells = [header] + [[text(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)).rstrip()
        for row in cells
    )


def inspect(
    uri: str,
    decode: DecodeConfig | None = None,
    *,
    validation_split: float = 0.3,
    split_seed: int = 0,
    sample: int = 2000,
    decode_all: bool = True,
    io_threads: int = 16,
) -> InspectReport:
    """Look at an image tree before training on it.

    * image counts per class for train / val (``validation_split`` of train/,
      the same split ``load_dataset`` makes) / test;
    * image sizes, modes and formats from the headers of at most ``sample``
      files (a stable pseudo-random sample; headers only, read on threads);
    * the bad-file report: with ``decode_all`` every file is fully decoded
      with Ray Data (at ``decode.image_size``, default 64x64), as training
      would; otherwise only the sample is decoded, in this process."""
    decode = decode or DecodeConfig(image_size=INSPECT_SIZE)
    if decode.image_size is None:
        decode = dataclasses.replace(decode, image_size=INSPECT_SIZE)
    tree = list_image_tree(uri)
    train, val = split_records(tree.train, validation_split, split_seed)
    counts = {
        split: dict(sorted(Counter(tree.class_names[r["label"]] for r in recs).items()))
        for split, recs in (("train", train), ("val", val), ("test", tree.test))
    }
    records = tree.train + tree.test
    sampled = sorted(records, key=lambda r: _unit_hash(r["path"], 0))[:sample] if sample else []
    sizes = _size_summary([r["path"] for r in sampled], len(records), io_threads)
    h, w = decode.image_size
    if decode_all:
        bad = _decode_errors_ray([r["path"] for r in records], decode)
        checked = f"decoded all {len(records)} files with Ray Data at {h}x{w}"
    else:
        bad = _decode_errors_local([r["path"] for r in sampled], decode, io_threads)
        which = f"all {len(records)} files" if len(sampled) == len(records) else (
            f"only the {len(sampled)}-file sample of {len(records)}")
        checked = f"decoded {which}, in this process, at {h}x{w}"
    return InspectReport(
        uri=tree.root,
        class_names=tree.class_names,
        counts=counts,
        sizes=sizes,
        bad_files=bad,
        skipped=tree.skipped,
        checked=checked,
        validation_split=validation_split,
    )


def _read_head(uri: str, n: int) -> bytes:
    """The first ``n`` bytes of a file (a ranged GET on S3)."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        try:
            return _s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{n - 1}")["Body"].read()
        except Exception:  # e.g. a zero-byte object refuses any range: a plain GET says why
            return fetch_bytes(uri, DecodeConfig.max_file_bytes)[:n]
    with open(uri, "rb") as fh:
        return fh.read(n)


def _header(uri: str) -> tuple[int, int, str, str] | None:
    """``decode.image_info`` from the first bytes of the file; None if unreadable."""

    try:
        data = _read_head(uri, HEADER_BYTES)
        try:
            return image_info(data)
        except BadImage:
            if len(data) < HEADER_BYTES:
                raise
            return image_info(fetch_bytes(uri, DecodeConfig.max_file_bytes))  # a header longer than HEADER_BYTES
    except Exception:  # the decode check reports the reason
        return None


def _size_summary(paths: list[str], total: int, io_threads: int) -> SizeSummary | None:
    if not paths:
        return None
    with futures.ThreadPoolExecutor(max(1, min(io_threads, len(paths)))) as pool:
        infos = list(pool.map(_header, paths))
    good = [i for i in infos if i is not None]

    def stats(values: list[int]) -> tuple[float, float, float]:
        if not values:
            return (0.0, 0.0, 0.0)
        return (float(min(values)), float(np.median(values)), float(max(values)))

    return SizeSummary(
        sampled=len(paths),
        total=total,
        width=stats([i[0] for i in good]),
        height=stats([i[1] for i in good]),
        modes=dict(Counter(i[2] for i in good)),
        formats=dict(Counter(i[3] for i in good)),
        unreadable=len(infos) - len(good),
    )


class _DecodeErrors:
    """Ray Data UDF: decode, keep only the failures (path, error). The pixels
    never leave the worker, so checking a big tree moves almost no data."""

    def __init__(self, decode: DecodeConfig):
        self.decode_images = DecodeImages(decode)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.decode_images(batch)
        failed = out["error"] != ""
        return {"path": np.asarray(out["path"], dtype=object)[failed], "error": out["error"][failed]}


def _decode_errors_ray(paths: list[str], decode: DecodeConfig) -> list[dict[str, str]]:
    import ray


    if not paths:
        return []
    ensure_ray()
    blocks = _num_blocks(len(paths), ROWS_PER_BLOCK)
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    ds = ds.map_batches(_DecodeErrors(decode), batch_size=DECODE_BATCH, batch_format="numpy")
    rows = ds.take_all()
    bad = [{"path": str(r["path"]), "reason": str(r["error"])} for r in rows]
    return sorted(bad, key=lambda r: r["path"])


def _decode_errors_local(paths: list[str], decode: DecodeConfig, io_threads: int) -> list[dict[str, str]]:
    errors = DecodeImages(decode, io_threads=io_threads).errors(paths)
    return [{"path": p, "reason": e} for p, e in zip(paths, errors, strict=True) if e]


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
                yield f"{split}/{_export_relpath(names[label], i, len(images))}", _png(image)

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


def _export_relpath(class_name: str, row: int, rows: int) -> str:
    """``<class>/<row>.png``, the row zero-padded to the width of the largest one."""
    return f"{class_name}/{row:0{len(str(max(rows - 1, 0)))}d}.png"


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
    images = _as_rgb_uint8(np.asarray(images))
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{split}: {len(images)} images but {len(labels)} labels")
    _check_label_range(labels, names, f"{split}: labels")
    return images, labels


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # compress_level 1: several times faster than the default and still lossless.
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
