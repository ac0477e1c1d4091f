"""Ray Data datasets of uint8 pixels: a tree or arrays decoded once
(``load_dataset``), CIFAR-10, and the per-epoch augmentation wiring."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec.augment import Augmenter, Mixing
from imgrec.config import AugmentConfig, DataConfig, DecodeConfig
from imgrec.data.cache import CacheUse, DecodedCache, cache_root, cacheable
from imgrec.data.manifest import list_images
from imgrec.data.read import DecodeImages
from imgrec.data.tree import (
    ARRAY_SCHEME,
    CIFAR10_CLASSES,
    DataError,
    check_label_range,
    class_mixed,
    path_reasons,
    split_records,
    tree_relpath,
)
from imgrec.runtime import ensure_ray

log = logging.getLogger(__name__)


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
    streamed: bool = False  # read from the decoded cache every epoch, not materialized (load_dataset)
    # Images per class (class_names order) of each split's good rows: {"train": [...], ...};
    # what balanced class weights are computed from. Empty when the maker did not count.
    class_counts: dict[str, list[int]] = field(default_factory=dict)
    manifest_sha256: str | None = None  # trained from a label manifest: its digest (lineage)
    cache_use: CacheUse | None = None  # what the persistent decoded cache gave (None: not used)

    def summary(self) -> str:
        bad = f", {len(self.bad_files)} bad files skipped" if self.bad_files else ""
        cached = f"; {self.cache_use.brief(self.streamed)}" if self.cache_use else ""
        return (
            f"{self.source}: {len(self.class_names)} classes {self.class_names}, "
            f"train {self.counts.get('train', 0)}, val {self.counts.get('val', 0)}, "
            f"test {self.counts.get('test', 0)}{bad}{cached}"
        )


# Rows per Ray Data block when decoding (the unit of parallelism, and of the
# per-epoch block shuffle), and rows per decode call. A decode call reads its S3
# objects on read.S3_READ_THREADS threads: 64 rows keep 16 GETs in flight for most
# of the call, which is what S3's per-GET latency needs. Augmentation takes whole
# blocks (``augmented``).
ROWS_PER_BLOCK = 256
DECODE_BATCH = 64


def num_blocks(n_rows: int, rows_per_block: int, max_blocks: int = 200) -> int:
    return max(1, min(max_blocks, -(-n_rows // rows_per_block)))


def _decoded(records: list[dict], decode: DecodeConfig, *, cache: bool, rows_per_block: int = ROWS_PER_BLOCK,
             tasks: int | None = None, persistent: DecodedCache | None = None, stream: bool = False,
             shuffle_seed: int | None = None):
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
    decodes again, and the report costs one extra pass now. ``tasks``: at most
    this many decode tasks at once (``imgrec.placement.data_tasks``). ``persistent``:
    read what the decoded cache holds, decode and cache the rest (``imgrec.data.cache``);
    with ``stream``, read it anew every epoch instead of materializing."""
    import ray
    from ray.data.expressions import col

    if not records:
        return None, 0, []
    if persistent is not None:
        return persistent.load(records, tasks=tasks, pool=_pool, stream=stream, shuffle_seed=shuffle_seed)
    records = class_mixed(records)
    blocks = num_blocks(len(records), rows_per_block)
    ds = ray.data.from_items(records, override_num_blocks=blocks)
    if not cache:
        ds = ds.map_batches(DecodeImages(decode), batch_size=DECODE_BATCH, batch_format="numpy",
                            compute=_pool(tasks, blocks))
        # Project first so the report never moves pixels.
        rows = ds.select_columns(["path", "error"]).filter(expr=col("error") != "").take_all()
        bad = [{"path": str(r["path"]), "reason": str(r["error"])} for r in rows]
        return ds.filter(expr=col("error") == "").drop_columns(["error"]), len(records) - len(bad), bad
    good = ds.map_batches(_DecodeGood(decode), batch_size=DECODE_BATCH, batch_format="numpy",
                          compute=_pool(tasks, blocks)).materialize()
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
         "rel": tree_relpath(names[label], i, len(labels))}
        for i, label in enumerate(labels)
    ]


def _array_dataset(images: np.ndarray, records: list[dict], decode: DecodeConfig):
    """In-memory arrays (e.g. ``keras.datasets.cifar10.load_data()``) as a Ray dataset,
    resized to the decode size when they differ."""
    import ray

    if not records:
        return None
    records = class_mixed(records)
    idx = np.array([r["index"] for r in records])
    imgs = as_rgb_uint8(np.asarray(images)[idx])
    h, w = decode.image_size
    if imgs.shape[1:3] != (h, w):
        from PIL import Image

        imgs = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in imgs])
    items = [{"image": im, "label": int(r["label"]), "path": r["path"]}
             for im, r in zip(imgs, records, strict=True)]
    return ray.data.from_items(items, override_num_blocks=num_blocks(len(items), 1024, 64)).materialize()


def as_rgb_uint8(images: np.ndarray) -> np.ndarray:
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
    check_label_range(labels, names, "array labels")
    return names


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
        class_counts={"train": class_counts(train_recs, [], len(names))},
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
    tasks: int | None = None,
    storage_uri: str | None = None,
    shuffle_seed: int | None = None,
) -> ImageDataset:
    """One call from a DataConfig to decoded train/val/test Ray datasets.

    ``cfg.uri`` is an image tree URI, a label manifest (``.csv``/``.parquet`` of
    ``uri,label[,split]``, ``imgrec.data.manifest``) or ``cifar10``; ``arrays`` takes in-memory
    ``((x_train, y_train), (x_test, y_test))`` instead (CIFAR-style).
    ``cfg.decode.image_size`` must be set. Unreadable or undecodable files are
    skipped and listed in ``bad_files``; only a tree where every training image
    is bad is an error. Test data: the tree's ``test/``, a manifest's ``test`` rows.
    ``tasks``: at most this many decode tasks at once (``imgrec.placement.data_tasks``).
    ``storage_uri``: the run's storage, under which ``cfg.cache="auto"`` keeps the decoded
    cache (``<storage>/.cache/``); without it (and without a cache URI) pixels stay in memory.
    A decoded set over ``cfg.memory_budget`` of the object store is streamed from that cache
    every epoch (``ImageDataset.streamed``; its shard order shuffled by ``shuffle_seed``)."""
    decode = _require_image_size(cfg)
    if arrays is not None or cfg.uri == "cifar10":
        return _load_arrays(cfg, arrays if arrays is not None else load_cifar10(), class_names)

    tree = list_images(cfg.uri)
    train_recs = _limit_per_class(tree.train, cfg.limit_per_class)
    train_recs, val_recs = split_records(train_recs, cfg.validation_split, cfg.split_seed, tree.splits)
    persistent = _persistent_cache(cfg, tree, storage_uri)
    # Connect after the listing's checks: the budget reads the cluster's object store, and this
    # may be the process's first Ray call (Ray Data's own start would not use imgrec's settings).
    ensure_ray()
    stream = _over_budget(cfg, len(train_recs) + len(val_recs) + len(tree.test), persistent)
    opts = dict(cache=cfg.cache != "off", tasks=tasks, persistent=persistent, stream=stream)
    train, n_train, train_bad = _decoded(train_recs, decode, shuffle_seed=shuffle_seed, **opts)
    if n_train == 0:
        raise DataError(
            f"{tree.root}: every training image failed to decode; first bad files: {path_reasons(train_bad, 5)}"
        )
    val, n_val, val_bad = _decoded(val_recs, decode, **opts)
    test, n_test, test_bad = _decoded(tree.test, decode, **opts)
    if persistent is not None:
        persistent.record_use()
        log.info("%s", persistent.use.summary())
    bad = tree.skipped + train_bad + val_bad + test_bad
    for item in bad:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    return ImageDataset(
        class_names=tree.class_names,
        train=train,
        val=val,
        test=test,
        counts={"train": n_train, "val": n_val, "test": n_test},
        class_counts={"train": class_counts(train_recs, train_bad, len(tree.class_names))},
        bad_files=bad,
        source=tree.root,
        decode=decode,
        split_seed=cfg.split_seed,
        validation_split=cfg.validation_split,
        manifest_sha256=tree.manifest_sha256,
        cache_use=persistent.use if persistent is not None else None,
        streamed=stream,
    )


def _over_budget(cfg: DataConfig, rows: int, persistent: DecodedCache | None) -> bool:
    """Whether ``rows`` decoded images exceed ``cfg.memory_budget`` of the cluster's object
    store. Streaming needs the disk cache; without one, such a set is materialized anyway
    (with a warning saying what to set)."""
    import ray

    h, w = cfg.decode.image_size
    need = rows * h * w * 3
    budget = cfg.memory_budget * ray.cluster_resources().get("object_store_memory", 0)
    if need <= budget:
        return False
    what = f"{rows} decoded images ({need / 2**20:.0f} MB) exceed memory_budget {cfg.memory_budget:g} of the " \
           f"object store ({budget / 2**20:.0f} MB)"
    if persistent is None:
        log.warning("%s and no disk cache is set (cache=%s): materializing anyway; set cache=auto or a cache "
                    "URI to stream, or cache=off to decode every epoch", what, cfg.cache)
        return False
    log.info("%s: streaming them from the decoded cache every epoch", what)
    return True


def _persistent_cache(cfg: DataConfig, tree, storage_uri: str | None) -> DecodedCache | None:
    """The decoded cache's entry for this source and decode setting, where one applies."""
    root = cache_root(cfg, storage_uri)
    if root is None:
        return None
    if not cacheable(tree.train + tree.test):
        log.info("%s: not cached on disk (a label manifest's rows carry no file versions to key the cache "
                 "by); decoded pixels stay in memory for this run", tree.root)
        return None
    return DecodedCache(root, tree.root, cfg.decode)


def class_counts(records: list[dict], bad: list[dict[str, str]], n_classes: int) -> list[int]:
    """Images per label among ``records`` but the ``bad`` ones (their decoded rows)."""
    skipped = {b["path"] for b in bad}
    counts = Counter(int(r["label"]) for r in records if str(r["path"]) not in skipped)
    return [counts.get(i, 0) for i in range(n_classes)]


def augmented(ds, augment: AugmentConfig, *, tasks: int | None = None, mixing: Mixing | None = None,
              shuffled: bool = False):
    """The per-epoch part of the training pipeline: block order shuffled and
    images augmented again every time the dataset is iterated (lazy: nothing
    runs until an epoch iterates it). ``tasks``: as ``load_dataset``'s;
    ``mixing``: mixup/CutMix after the augmentation, adding soft ``target`` rows;
    ``shuffled``: the dataset shuffles its own block order each pass (a streamed cache,
    ``ImageDataset.streamed``), so no block shuffle (a barrier over every block) is added.

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
    blocks = _known_blocks(ds)
    if not shuffled:
        ds = ds.randomize_block_order(seed=None if seed is None else RandomSeedConfig(seed=int(seed)))
    if not augment.enabled and mixing is None:
        return ds

    udf = Augmenter(augment, mixing=mixing) if seed is None else _EpochSaltedAugmenter(augment, mixing)
    # Whole blocks (a cache shard, or ROWS_PER_BLOCK rows): the warp works in small chunks
    # whatever the batch, and 64-row batches cost Ray Data's per-batch slicing and conversion
    # (measured, 20k images: 12.4k -> 16.4k img/s an epoch at 32x32, 2203 -> 2481 at 128x128).
    # A streamed cache's rows are shards that Ray Data fuses with this map, where a row-count
    # batch would gather many shards into one task (measured: 1 task, spilled).
    return ds.map_batches(udf, batch_size=None, batch_format="numpy", compute=_pool(tasks, blocks))


def _pool(tasks: int | None, blocks: int | None):
    """Ray Data's task pool of at most ``tasks`` at once; no cap where the blocks are
    fewer anyway (Ray warns on the console about a cap it cannot reach)."""
    from ray.data import TaskPoolStrategy

    return TaskPoolStrategy(size=tasks if tasks and (blocks is None or blocks > tasks) else None)


def _known_blocks(ds) -> int | None:
    """The block count of a materialized dataset (free), else None."""
    from ray.data.dataset import MaterializedDataset

    return ds.num_blocks() if isinstance(ds, MaterializedDataset) else None


class _EpochSaltedAugmenter:
    """A seeded ``Augmenter`` whose salt is the current pass over the dataset."""

    def __init__(self, augment: AugmentConfig, mixing: Mixing | None = None):
        self.augmenter = Augmenter(augment, mixing=mixing)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.augmenter.salt = _execution_index()
        return self.augmenter(batch)


def _execution_index() -> int:
    """Ray Data's count of finished executions of this dataset's context: it
    grows by one per epoch (a private attribute; 0 when absent)."""
    from ray.data import DataContext

    return int(getattr(DataContext.get_current(), "_execution_idx", 0) or 0)
