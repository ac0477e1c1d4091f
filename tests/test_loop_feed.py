"""The worker loop's direct feed: Ray Data batches into the step functions, the
validation split kept in memory after its first pass when it is small."""

from __future__ import annotations

import types

import numpy as np
import pytest


class _NoMorePasses:
    def iter_batches(self, **kwargs):
        raise AssertionError("the kept validation split went back to Ray Data")


def _feed(rows: int, val_cache_mb: float, training: bool = False):
    import ray
    import tensorflow as tf

    from imgrec.config import DataConfig, DecodeConfig, TrainConfig
    from imgrec.loop import _direct
    from imgrec.loop_state import LoopOptions

    images = np.random.default_rng(0).integers(0, 256, (rows, 8, 8, 3), dtype=np.uint8)
    ds = ray.data.from_items([{"image": im, "label": i % 3} for i, im in enumerate(images)]).materialize()
    loop = types.SimpleNamespace(global_batch=4, world=1, strategy=tf.distribute.get_strategy(), val_rows=rows,
                                 cfg=TrainConfig(data=DataConfig(decode=DecodeConfig(image_size=(8, 8)))))
    return _direct(loop, LoopOptions(val_cache_mb=val_cache_mb), ds, training=training)


def _rows(feed) -> list[tuple]:
    return [(x.numpy().tobytes(), tuple(y.numpy())) for x, y in feed]


def test_small_validation_split_is_kept_after_its_first_pass(ray_cluster):
    feed = _feed(rows=10, val_cache_mb=1)
    first = _rows(feed)
    assert sum(len(y) for _, y in first) == 10  # every row, the short last batch included
    feed.shard = _NoMorePasses()
    assert _rows(feed) == first


@pytest.mark.parametrize("val_cache_mb, training", [(0, False), (1e-4, False), (1, True)])
def test_training_and_large_validation_splits_stream_every_epoch(ray_cluster, val_cache_mb, training):
    feed = _feed(rows=10, val_cache_mb=val_cache_mb, training=training)
    _rows(feed)
    feed.shard = _NoMorePasses()
    with pytest.raises(AssertionError, match="went back to Ray Data"):
        _rows(feed)


def test_the_first_training_epoch_started_early_is_the_whole_epoch_then_the_shard_again(ray_cluster):
    """``_FirstBatch`` starts epoch 1 in a thread while the model builds: the feed's
    first pass yields every full batch of it, the next pass reads the shard anew."""
    from imgrec.loop import _FirstBatch

    feed = _feed(rows=10, val_cache_mb=0, training=True)
    feed.first = _FirstBatch(feed._epoch())  # as _direct.started does, once the shard is Ray Train's
    assert [len(y) for _, y in _rows(feed)] == [4, 4]  # 10 rows, drop_last: two full batches
    assert feed.first is None
    feed.shard = _NoMorePasses()
    with pytest.raises(AssertionError, match="went back to Ray Data"):
        _rows(feed)


def test_an_error_in_the_early_first_batch_is_raised_where_batches_are_read():
    from imgrec.loop import _FirstBatch

    def broken():
        raise OSError("s3://bucket/run: connection reset")
        yield  # a generator, as shard_batches

    first = _FirstBatch(broken())
    with pytest.raises(OSError, match="connection reset"):
        list(first.batches())
