"""The from-scratch default (issue #19): ``resnet_tiny`` and its recipe (AdamW with
decoupled weight decay on kernels only, warmup + cosine, label smoothing, bfloat16
compute where the CPU has it) as the ``train`` command's default, ``resnet_small``,
and the image size taken from the data where its images are smaller than the
model's input.

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


def test_resnet_tiny_is_residual_and_a_fraction_of_resnet_small():
    model = models.build_model(ModelConfig(name="resnet_tiny"), 10, SIZE)
    kinds = _layer_kinds(model)
    assert kinds.count("Add") == 1, "one residual block, in stage 2"
    assert {"BatchNormalization", "GlobalAveragePooling2D", "Dropout"} <= set(kinds)
    assert model.get_layer("stem_conv").strides == (2, 2)  # at every input size
    assert model.get_layer("stage3_relu").output.shape[1:3] == (4, 4)
    small = models.build_model(ModelConfig(name="resnet_small"), 10, SIZE)
    assert 100_000 <= model.count_params() <= small.count_params() / 4


def test_the_default_trains_with_the_scratch_recipe():
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


@pytest.mark.parametrize("schedule", ["constant", "cosine", "exponential"])
def test_stage_two_scales_the_rate_of_every_schedule(schedule):
    """Two-stage transfer's ``fine_tune_lr_factor`` applies to a schedule too (it once
    applied to a constant rate only): from the switch on, the rate is the stage-one
    schedule's at the same step, times the factor."""
    cfg = _recipe(epochs=10, warmup_epochs=1, lr_schedule=schedule, head_epochs=3, fine_tune_lr_factor=0.1)
    optimizer = imgrec_loop.make_optimizer(cfg, steps_per_epoch=10)
    optimizer.build([keras.Variable(np.zeros(2, "float32"))])
    stage_one = optimizer._learning_rate
    optimizer.iterations.assign(30)  # the head epochs done
    before = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    imgrec_loop.enter_fine_tuning_rate(optimizer, cfg, steps_per_epoch=10)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.1 * before, rel=1e-5)
    if schedule != "constant":
        for step in (30, 55, 90):
            assert float(optimizer._learning_rate(step)) == pytest.approx(0.1 * float(stage_one(step)), rel=1e-5)


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
    for name in ("resnet_tiny", "resnet_small", "small_cnn", "seed_catsdogs"):
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


# --------------------------------------------------------------------------- precision


def _policies(model) -> set[str]:
    return {layer.dtype_policy.name for layer in models.all_layers(model)}


def test_mixed_bfloat16_computes_in_bfloat16_keeps_float32_weights_and_loads_in_plain_keras(tmp_path):
    from imgrec.models.build import as_float32

    model = models.build_model(ModelConfig(name="resnet_tiny", precision="mixed_bfloat16"), 3, SIZE)
    assert keras.config.dtype_policy().name == "float32", "the global policy is restored after the build"
    assert model.get_layer("stage2_conv").compute_dtype == "bfloat16"
    assert {v.dtype for v in model.weights} == {"float32"}
    x, _ = synth.make_arrays("shapes", classes=3, per_class=2, image_size=SIZE, seed=2)
    probs = model.predict(x, verbose=0)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("stage2_conv").compute_dtype == "bfloat16"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), probs)
    # exports' copy: every layer float32, the same weights, the same answer within bfloat16's precision
    copy = as_float32(model)
    assert _policies(copy) == {"float32"} and copy is not model
    for a, b in zip(copy.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(copy.predict(x, verbose=0), probs, atol=0.02)
    plain = models.build_model(ModelConfig(name="resnet_tiny"), 3, SIZE)
    assert _policies(plain) == {"float32"} and as_float32(plain) is plain


@pytest.mark.parametrize("flags, expected", [
    ("fpu vme avx512f avx512_bf16 avx512_vnni", "mixed_bfloat16"),  # x86 with AVX512-BF16 (this machine)
    ("fpu vme avx512f amx_bf16 amx_tile", "mixed_bfloat16"),  # x86 with AMX
    ("fpu vme avx2 fma", "float32"),  # x86 without: emulated bfloat16 is slower than float32
])
def test_auto_precision_is_bfloat16_only_on_cpus_with_its_instructions(tmp_path, flags, expected):
    from imgrec.models import build

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    has = build.cpu_has_bfloat16(str(cpuinfo))
    assert has == (expected == "mixed_bfloat16")
    assert build.resolve_precision("auto", cpu_has_bf16=has) == expected  # no GPU here
    assert build.resolve_precision("float32", cpu_has_bf16=True) == "float32"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert build.cpu_has_bfloat16(str(arm)) and not build.cpu_has_bfloat16(str(tmp_path / "missing"))


def test_prediction_runs_a_bfloat16_checkpoint_in_float32_where_the_cpu_lacks_bfloat16():
    from imgrec.models.build import for_inference

    model = models.build_model(ModelConfig(name="resnet_tiny", precision="mixed_bfloat16"), 3, SIZE)
    assert for_inference(model, cpu_has_bf16=True) is model
    elsewhere = for_inference(model, cpu_has_bf16=False)
    assert _policies(elsewhere) == {"float32"}
    x, _ = synth.make_arrays("shapes", classes=3, per_class=2, image_size=SIZE, seed=4)
    np.testing.assert_allclose(elsewhere.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.02)


def test_a_bad_precision_is_refused_naming_the_field():
    from imgrec.config import ConfigError

    with pytest.raises(ConfigError, match="precision must be one of float32, mixed_bfloat16, auto") as err:
        models.build_model(ModelConfig(name="resnet_tiny", precision="float16"), 3, SIZE)
    assert err.value.field == "precision"
