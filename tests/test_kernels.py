"""TensorFlow's fused batch norm swapped into real imgrec models (``models.fuse_batch_norm``):
the same function as Keras's own layer, forward, backward and in its moving statistics, and a
saved file plain Keras loads as it always did."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from imgrec import models
from imgrec.config import ModelConfig


def _pair(name: str, size: int, **extra):
    """The same model twice from one seed: Keras's batch norm, and the fused kernel."""
    built = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        built.append(models.build_model(ModelConfig(name=name, **extra), 4, (size, size)))
    stock, fused = built
    return stock, fused, models.fuse_batch_norm(fused)


def _train_step(model, x, y):
    with tf.GradientTape() as tape:
        probs = model(x, training=True)
        loss = keras.losses.categorical_crossentropy(y, probs)
    return probs.numpy(), [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def _assert_same_train_step(stock, fused, x, y):
    """One training call of each: the same probabilities and gradients."""
    probs_stock, grads_stock = _train_step(stock, x, y)
    probs_fused, grads_fused = _train_step(fused, x, y)
    np.testing.assert_allclose(probs_fused, probs_stock, atol=1e-5)
    for a, b in zip(grads_fused, grads_stock, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)


def _batch(size: int, n: int = 4):
    rng = np.random.default_rng(0)
    return (tf.constant(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)),
            tf.one_hot(rng.integers(0, 4, n), 4))


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_trains_exactly_as_keras_does(precision):
    stock, fused, swapped = _pair("resnet_tiny", 32, precision=precision)
    assert swapped == sum(isinstance(layer, keras.layers.BatchNormalization) for layer in stock.layers) == 6
    x, y = _batch(32)
    _assert_same_train_step(stock, fused, x, y)
    # The moving statistics moved, and by the biased batch variance Keras uses: with the kernel's
    # Bessel correction left in (64/63 at the last stage's 4 x 4 x 4 values a channel), 3e-5 off.
    for a, b in zip(fused.non_trainable_weights, stock.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, rtol=1e-5)
    assert not np.allclose(stock.get_layer("stage3_bn").moving_variance.numpy(), 1.0)
    np.testing.assert_allclose(fused(x, training=False).numpy(), stock(x, training=False).numpy(), atol=1e-5)


def test_a_frozen_backbone_keeps_its_statistics_and_nested_layers_are_fused():
    """Transfer's MobileNet, all but its top block frozen: its batch norms live in a nested
    backbone. The frozen ones keep their moving statistics under the fused kernel too; the top
    block's (trained from scratch here, so not kept frozen) move exactly as Keras moves them."""
    stock, fused, swapped = _pair("mobilenet", 32, alpha=0.25, freeze_depth="all-1")
    assert swapped == 27

    def moving(model):
        return {w.path: w.numpy() for w in models.get_backbone(model).non_trainable_weights if "moving" in w.path}

    before = moving(fused)
    x, y = _batch(32)
    _assert_same_train_step(stock, fused, x, y)
    after, after_stock = moving(fused), moving(stock)
    moved = sorted(p for p in before if not np.array_equal(before[p], after[p]))
    assert moved == sorted(f"{block}_bn/moving_{s}" for block in ("conv_dw_13", "conv_pw_13")
                           for s in ("mean", "variance"))
    for path in before:
        np.testing.assert_allclose(after[path], after_stock[path], atol=1e-6, rtol=1e-5)


def test_a_fused_model_saves_the_file_plain_keras_loads(tmp_path):
    stock, fused, _ = _pair("small_cnn", 32)
    assert models.fuse_batch_norm(fused) == 0  # once only
    assert fused.get_config() == stock.get_config()
    fused.save(path := str(tmp_path / "fused.keras"))
    stock.save(stock_path := str(tmp_path / "stock.keras"))
    loaded = keras.models.load_model(path)
    assert loaded.get_config() == keras.models.load_model(stock_path).get_config()
    bn = loaded.get_layer("stem_bn")
    assert "call" not in vars(bn)  # Keras's own layer, as saved
    x, _ = _batch(32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), stock.predict(x, verbose=0), atol=1e-6)


def test_prediction_models_run_the_fused_kernel():
    model = models.build_model(ModelConfig(name="resnet_tiny"), 3, (32, 32))
    served = models.for_inference(model, cpu_has_bf16=False)
    assert all("call" in vars(layer) for layer in served.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert models.fuse_batch_norm(served) == 0


def test_layers_the_fused_kernel_does_not_cover_keep_keras_call():
    inputs = keras.Input((6,))
    x = keras.layers.BatchNormalization(name="flat")(inputs)  # 2-D: no fused kernel
    image = keras.Input((4, 4, 3))
    y = keras.layers.BatchNormalization(axis=1, name="channels_first")(image)
    z = keras.layers.BatchNormalization(synchronized=True, name="synced")(image)
    model = keras.Model([inputs, image], [x, y, z])
    assert models.fuse_batch_norm(model) == 0
