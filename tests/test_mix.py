"""Mixup and CutMix (``--mixup``, ``--cutmix``): the mixed pixels and their soft
targets agree (numpy, the Data-side augmenter), the loop's loss, class weighting and
accuracy read soft targets consistently (against Keras' own ``fit`` on the same
targets), the Data pipeline carries the targets to the feed, and a run trains with them."""

from __future__ import annotations

import numpy as np
import pytest

from imgrec import checkpoint as ckpt
from imgrec.augment import Augmenter, Mixing
from imgrec.config import AugmentConfig, ConfigError, TrainConfig


def _class_images(n: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Image i is flat grey 10 + 20 i, label i: every pixel tells whose it is."""
    labels = np.arange(n)
    images = np.broadcast_to((10 + 20 * labels).astype(np.uint8)[:, None, None, None], (n, size, size, 3)).copy()
    return images, labels


def _partner_and_share(target: np.ndarray, own: int) -> tuple[int, float]:
    """(the partner's class, the own class's share) read off a soft target row."""
    others = [c for c in np.flatnonzero(target > 1e-6) if c != own]
    return (others[0] if others else own), float(target[own])


def test_mixup_pixels_are_the_blend_its_target_says():
    images, labels = _class_images(10)
    out, targets = Mixing(10, mixup=1.0)(images, labels, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == images.shape and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    mixed = 0
    for i in range(10):
        partner, lam = _partner_and_share(targets[i], i)
        expected = np.rint(lam * images[i].astype(float) + (1 - lam) * images[partner].astype(float))
        assert np.abs(out[i].astype(int) - expected).max() <= 1, (i, partner, lam)
        mixed += partner != i
    assert mixed >= 7  # a fixed point of the permutation mixes with itself: at most a few
    assert not np.shares_memory(out, images) and (images[:, 0, 0, 0] == 10 + 20 * labels).all()  # input untouched


def test_cutmix_pastes_one_box_whose_area_is_the_partners_share():
    images, labels = _class_images(10, size=20)
    out, targets = Mixing(10, cutmix=1.0)(images, labels, np.random.default_rng(1))
    for i in range(10):
        partner, lam = _partner_and_share(targets[i], i)
        pasted = out[i, :, :, 0] != images[i, 0, 0, 0]
        assert set(np.unique(out[i, :, :, 0])) <= {images[i, 0, 0, 0], images[partner, 0, 0, 0]}
        assert pasted.sum() / pasted.size == pytest.approx(1 - lam, abs=1e-6)  # the target is the area
        if pasted.any():  # one axis-aligned box
            rows, cols = np.flatnonzero(pasted.any(axis=1)), np.flatnonzero(pasted.any(axis=0))
            assert pasted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert (targets.max(axis=1) < 1).sum() >= 5  # most images got a non-empty box


def test_both_on_each_image_is_blended_or_boxed_and_seeded_augmenter_repeats():
    images, labels = _class_images(12, size=20)
    out, targets = Mixing(12, mixup=1.0, cutmix=1.0)(images, labels, np.random.default_rng(2))
    kinds = set()
    for i in range(12):
        partner, lam = _partner_and_share(targets[i], i)
        values = set(np.unique(out[i, :, :, 0]))
        if partner == i or lam == 1:
            continue
        boxed = values <= {images[i, 0, 0, 0], images[partner, 0, 0, 0]} and len(values) == 2
        kinds.add("box" if boxed else "blend")
    assert kinds == {"box", "blend"}

    batch = {"image": images, "label": labels, "path": np.array([f"p{i}" for i in range(12)])}
    udf = Augmenter(AugmentConfig(horizontal_flip=True, seed=5), mixing=Mixing(12, mixup=0.4))
    first = udf(dict(batch))
    again = Augmenter(AugmentConfig(horizontal_flip=True, seed=5), mixing=Mixing(12, mixup=0.4))(dict(batch))
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["target"], again["target"])
    np.testing.assert_array_equal(first["label"], labels)  # each image's own label stays
    assert "target" not in Augmenter(AugmentConfig(horizontal_flip=True, seed=5))(dict(batch))


def test_mixing_values_are_checked_and_reach_the_config():
    from imgrec.cli_options import build, flag_of, values_from_args
    from imgrec.cli_train import TRAIN_OPTIONS, train_command

    assert not TrainConfig().mixes and TrainConfig(cutmix=1.0).mixes
    with pytest.raises(ConfigError) as caught:
        TrainConfig(mixup=-0.2)
    assert caught.value.field == "mixup"
    assert caught.value.naming(flag_of(TRAIN_OPTIONS, "mixup")).startswith("--mixup is a Beta(a, a) alpha")
    values = values_from_args(train_command, ["--data", "/d", "--mixup", "0.4", "--cutmix", "1"])
    cfg = build(TrainConfig, TRAIN_OPTIONS, values)
    assert (cfg.mixup, cfg.cutmix) == (0.4, 1.0)


# --------------------------------------------------------------------------- the loss


def _models(outputs: int):
    """Two copies of one tiny model: ``keras_model`` compiled for ``fit`` (plain SGD:
    a step is linear in the gradient), ``ours`` for the loop's train step."""
    import keras

    keras.utils.set_random_seed(4)

    def make():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"),
                                 keras.layers.Dense(outputs, activation="softmax" if outputs > 1 else "sigmoid")])

    keras_model, ours = make(), make()
    ours.set_weights(keras_model.get_weights())
    loss = "categorical_crossentropy" if outputs > 1 else "binary_crossentropy"
    keras_model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    ours.compile(optimizer=keras.optimizers.SGD(0.5))
    return keras_model, ours


def _train_step(model, classes: int, class_weights, tmp_path, label_smoothing: float = 0.0):
    import tensorflow as tf

    from imgrec.layout import RunLayout
    from imgrec.loop import step_functions
    from imgrec.loop_state import WorkerLoop

    loop = WorkerLoop(cfg=TrainConfig(label_smoothing=label_smoothing, mixup=1.0), run=RunLayout(str(tmp_path)),
                      rank=0, world=1, class_names=[f"c{i}" for i in range(classes)], manifest_base={},
                      steps_per_epoch=1, global_batch=8, class_weights=class_weights)
    loop.strategy, loop.model = tf.distribute.get_strategy(), model
    return step_functions(loop)[0]


def _soft_batch(classes: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    images, labels = _class_images(8, size=2)
    _, targets = Mixing(classes, mixup=1.0)(images, labels % classes, rng)
    return x, targets, labels % classes


@pytest.mark.parametrize("outputs", [3, 1])
def test_soft_targets_train_as_keras_fit_on_them_with_their_class_weights(tmp_path, outputs):
    """One loop step on mixed targets with class weights moves the model as Keras'
    ``fit`` does with the same soft targets and each example weighted by its
    target's mix of class weights; the reported loss is the weighted one, and an
    example counts as correct for its larger share's class."""
    import tensorflow as tf

    classes = max(outputs, 2)
    x, targets, _ = _soft_batch(classes)
    weights = [0.5, 3.0, 7.0][:classes]
    keras_model, ours = _models(outputs)
    sample_weight = targets @ np.array(weights, dtype=np.float32)
    keras_y = targets if outputs > 1 else targets[:, 1:]
    history = keras_model.fit(x, keras_y, sample_weight=sample_weight, batch_size=8, epochs=1, shuffle=False,
                              verbose=0)
    probs = ours(x).numpy()
    predicted = probs.argmax(axis=1) if outputs > 1 else (probs[:, 0] > 0.5).astype(int)
    loss_sum, correct, seen = (float(v) for v in _train_step(ours, classes, weights, tmp_path)(
        (tf.constant(x), tf.constant(targets))))
    assert seen == 8 and loss_sum / seen == pytest.approx(history.history["loss"][0], rel=1e-5)
    assert correct == (predicted == targets.argmax(axis=1)).sum()
    for ours_w, keras_w in zip(ours.get_weights(), keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(ours_w, keras_w, rtol=1e-5, atol=1e-6)


def test_one_hot_soft_targets_are_the_integer_labels_with_smoothing(tmp_path):
    """Unmixed soft targets (one-hot) give the integer-label step exactly, label smoothing included."""
    import tensorflow as tf

    x, _, labels = _soft_batch(3)
    _, soft = _models(3)
    _, hard = _models(3)
    onehot = np.eye(3, dtype=np.float32)[labels]
    out_soft = _train_step(soft, 3, [1.0, 2.0, 3.0], tmp_path, 0.1)((tf.constant(x), tf.constant(onehot)))
    out_hard = _train_step(hard, 3, [1.0, 2.0, 3.0], tmp_path, 0.1)((tf.constant(x), tf.constant(labels)))
    np.testing.assert_allclose([float(v) for v in out_soft], [float(v) for v in out_hard], rtol=1e-6)
    for a, b in zip(soft.get_weights(), hard.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- through Ray


def test_the_pipeline_carries_soft_targets_to_the_feed(ray_cluster):
    from imgrec import data
    from imgrec.config import DataConfig, DecodeConfig

    images, labels = _class_images(40, size=8)
    labels = labels % 4
    ds = data.load_dataset(DataConfig(uri="", validation_split=0.0, decode=DecodeConfig(image_size=(8, 8))),
                           arrays=((images, labels), (None, None)))
    mixed = data.augmented(ds.train, AugmentConfig(), mixing=Mixing(4, mixup=1.0, cutmix=1.0))
    batches = list(data.shard_batches(mixed, 10, drop_last=True, soft=True))
    assert [x.shape for x, _ in batches] == [(10, 8, 8, 3)] * 4
    for _, y in batches:
        assert y.dtype == np.float32 and y.shape == (10, 4)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    assert sum(int((y.max(axis=1) < 0.999).sum()) for _, y in batches) >= 20  # most rows are mixed
    # the same rows' own labels are still there for everything else
    assert all(y.dtype == np.int64 for _, y in data.shard_batches(mixed, 10))


@pytest.mark.parametrize("feed", ["direct", pytest.param("tf.data", marks=pytest.mark.slow)])
def test_a_run_trains_with_mixup_and_cutmix(ray_cluster, bucket, feed):
    """A run with both on: its soft targets flow through the workers' feed (the default,
    and tf.data's) and loss; validation and the test evaluation score plain labels; the
    checkpoint records the settings."""
    from imgrec.config import DataConfig, DecodeConfig, ModelConfig
    from imgrec.loop_state import LoopOptions
    from imgrec.train import train

    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 3, 240), rng.integers(0, 3, 60)

    def images(y):  # class k: mean brightness 40 + 80 k
        return np.clip(rng.normal(40 + 80 * y[:, None, None, None], 10, (len(y), 16, 16, 3)), 0, 255).astype(np.uint8)

    cfg = TrainConfig(
        data=DataConfig(uri="", validation_split=0.2, decode=DecodeConfig(image_size=(16, 16))),
        model=ModelConfig(name="small_cnn"), storage=f"{bucket}/runs", run_name=f"mixed-{feed}", workers=1,
        batch_size=16, epochs=4, learning_rate=3e-3, mixup=0.4, cutmix=1.0, class_weight="balanced",
    )
    result = train(cfg, arrays=((images(y_train), y_train), (images(y_test), y_test)),
                   class_names=["dark", "mid", "light"], loop_options=LoopOptions(feed=feed))
    manifest = ckpt.read_manifest(result.best_checkpoint)
    assert (manifest["train_config"]["mixup"], manifest["train_config"]["cutmix"]) == (0.4, 1.0)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in result.history)
    assert result.test_metrics["count"] == 60
    assert result.test_metrics["accuracy"] > 0.6, result.history  # chance: 0.33
