"""Feeding training: per-worker (uint8 images, int labels) batches from a
Ray Data shard, as numpy or as a tf.data dataset."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- feeding training


def shard_batches(
    shard,
    batch_size: int,
    *,
    shuffle_buffer: int = 0,
    drop_last: bool = False,
    seed: int | None = None,
    prefetch: int = 2,
    soft: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 images, int labels) batches from a Ray Train dataset shard (or any
    Ray dataset). ``shuffle_buffer`` > 0 gives a fresh local shuffle each epoch;
    ``soft``: the labels are the rows' float32 soft ``target`` (mixed training data)."""
    kwargs: dict[str, Any] = dict(batch_size=batch_size, batch_format="numpy", drop_last=drop_last,
                                  prefetch_batches=prefetch)
    if shuffle_buffer:
        kwargs["local_shuffle_buffer_size"] = shuffle_buffer
        if seed is not None:
            kwargs["local_shuffle_seed"] = seed
    for batch in shard.iter_batches(**kwargs):
        yield batch["image"], (batch["target"].astype(np.float32) if soft else batch["label"].astype(np.int64))


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
