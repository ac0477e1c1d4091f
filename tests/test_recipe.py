"""The from-scratch default (issue #19): ``resnet_small`` and its recipe (AdamW with
decoupled weight decay on kernels only, warmup + cosine, label smoothing) as the
``train`` command's default, and the image size taken from the data where its
images are smaller than the model's input.

Unit level: real Keras models at 32x32, real JPEG headers (cifar10-dev and synth
trees); no Ray. About 10 s on two cores."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from conftest import CIFAR_DEV, needs_photos  # noqa: E402

from imgrec import loop as imgrec_loop  # noqa: E402
from imgrec import models, synth  # noqa: E402
from imgrec.config import SCRATCH_RECIPE, DataConfig, ModelConfig, TrainConfig, replace  # noqa: E402
from imgrec.train import default_image_size  # noqa: E402

SIZE = (32, 32)


def _recipe(**changes) -> TrainConfig:
    return replace(TrainConfig(), **{**SCRATCH_RECIPE, **changes})


def _layer_kinds(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("size, stem_stride", [(SIZE, 1), ((96, 96), 2)])
def test_resnet_small_is_residual_regularised_and_sized_for_cpus(size, stem_stride):
    model = models.build_model(ModelConfig(name="resnet_small"), 10, size)
    kinds = _layer_kinds(model)
    assert kinds.count("Add") == 3, "one residual block per stage"
    assert {"BatchNormalization", "GlobalAveragePooling2D", "Dropout"} <= set(kinds)
    assert 500_000 <= model.count_params() <= 1_500_000
    assert model.get_layer("stem_conv").strides == (stem_stride, stem_stride)
    probs = model.predict(np.zeros((2, *size, 3), np.uint8), verbose=0)
    assert probs.shape == (2, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_resnet_small_trains_with_the_scratch_recipe():
    """Three steps of the recipe on rendered shapes: warmup starts at lr 0, then every
    kernel moves and the training loss (label-smoothed) stays finite."""
    cfg = _recipe()
    x, y = synth.make_arrays("shapes", classes=3, per_class=8, image_size=SIZE, seed=1)
    model = models.build_model(cfg.model, 3, SIZE)
    models.compile_model(model, imgrec_loop.make_optimizer(cfg, steps_per_epoch=3), 3)
    loss_fn = imgrec_loop.per_example_loss(3, cfg.label_smoothing)
    kernels = {v.path: v.numpy().copy() for v in model.trainable_variables if v.name == "kernel"}
    lrs = []
    for _ in range(3):
        lrs.append(float(model.optimizer.learning_rate))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(tf.constant(y), model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        assert np.isfinite(float(loss))
    assert lrs[0] == 0.0 and 0 < lrs[1] < lrs[2] <= cfg.learning_rate, lrs
    moved = [path for path, before in kernels.items() if not np.allclose(before, model.get_layer(
        path.split("/")[0]).kernel.numpy())]
    assert len(moved) == len(kernels)


def _decay_only_step(model, optimizer) -> dict[str, float]:
    """One step with zero gradients: only the weight decay moves anything. The
    largest relative change per variable kind."""
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    change: dict[str, float] = {}
    for v in model.trainable_variables:
        rel = float(np.max(np.abs(v.numpy() - before[v.path]) / (np.abs(before[v.path]) + 1e-12)))
        change[v.name] = max(change.get(v.name, 0.0), rel)
    return change


def test_weight_decay_reaches_kernels_only_also_after_a_save_and_load(tmp_path):
    cfg = _recipe(lr_schedule="constant", learning_rate=0.1, weight_decay=0.5)
    model = models.build_model(cfg.model, 3, SIZE)
    models.compile_model(model, imgrec_loop.make_optimizer(cfg, steps_per_epoch=1), 3)
    model.optimizer.build(model.trainable_variables)
    for stage in ("new", "loaded"):
        change = _decay_only_step(model, model.optimizer)
        assert change["kernel"] == pytest.approx(0.1 * 0.5, rel=1e-3), stage  # AdamW's w -= lr * wd * w
        assert change["gamma"] == change["beta"] == change["bias"] == 0.0, (stage, change)
        path = tmp_path / "model.keras"
        model.save(path)
        model = keras.models.load_model(path)
        # Keras does not save the exclusion; the loop's restore sets it again.
        imgrec_loop.decay_kernels_only(model.optimizer)


def test_warmup_then_cosine_and_its_stretch_on_resume():
    cfg = _recipe(epochs=10, warmup_epochs=1)
    optimizer = imgrec_loop.make_optimizer(cfg, steps_per_epoch=10)
    lr = optimizer._learning_rate
    assert [float(lr(s)) for s in (0, 5, 10)] == pytest.approx([0.0, 1e-3, 2e-3])
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-9) and float(lr(55)) == pytest.approx(1e-3, rel=1e-3)
    said = []
    imgrec_loop.stretch_cosine_schedule(optimizer, 200, said.append)  # --resume --epochs 20
    stretched = optimizer._learning_rate
    assert stretched.warmup_steps == 10 and stretched.decay_steps == 190 and said
    assert float(stretched(10)) == pytest.approx(2e-3) and float(stretched(105)) == pytest.approx(1e-3, rel=1e-3)


def test_label_smoothing_is_keras_own_on_the_training_loss_only():
    probs = tf.constant([[0.7, 0.2, 0.1]])
    smoothed = float(imgrec_loop.per_example_loss(3, 0.1)(tf.constant([0]), probs)[0])
    # target (0.9 + 0.1/3, 0.1/3, 0.1/3) against probs
    expected = -sum(t * np.log(p) for t, p in zip((0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3), (0.7, 0.2, 0.1), strict=True))
    assert smoothed == pytest.approx(expected, rel=1e-4)
    assert float(imgrec_loop.per_example_loss(3)(tf.constant([0]), probs)[0]) == pytest.approx(-np.log(0.7), rel=1e-5)
    sigmoid = float(imgrec_loop.per_example_loss(2, 0.1)(tf.constant([1]), tf.constant([[0.8]]))[0])
    assert sigmoid == pytest.approx(-(0.95 * np.log(0.8) + 0.05 * np.log(0.2)), rel=1e-4)


# --------------------------------------------------------------------------- image size from the data


@needs_photos
def test_small_photos_train_at_their_own_size(capsys):
    """CIFAR's 32x32 JPEGs: every scratch model decodes them at 32x32 instead of
    upsampling to its input size, and the log says so."""
    for name in ("resnet_small", "small_cnn", "seed_catsdogs"):
        cfg = TrainConfig(data=DataConfig(uri=CIFAR_DEV), model=ModelConfig(name=name))
        assert default_image_size(cfg) == (32, 32), name
    assert "image size 32x32: the data's own" in capsys.readouterr().out


def test_images_larger_than_the_model_keep_its_input_size(tmp_path, capsys):
    tree = tmp_path / "big"
    synth.make_dataset(str(tree), classes=2, per_class=3, image_size=(80, 100), test_per_class=1)
    cfg = TrainConfig(data=DataConfig(uri=str(tree)), model=ModelConfig(name="small_cnn"))  # 64x64
    assert default_image_size(cfg) == (64, 64)
    # in-memory arrays (cifar10) are not sampled
    assert default_image_size(replace(cfg, **{"data.uri": "cifar10"})) == (64, 64)
    assert "image size" not in capsys.readouterr().out
    small = tmp_path / "small"
    synth.make_dataset(str(small), classes=2, per_class=3, image_size=(40, 48), test_per_class=1)
    assert default_image_size(replace(cfg, **{"data.uri": str(small)})) == (40, 48)
