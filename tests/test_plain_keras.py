"""Checkpoints plain Keras 3 can use (issue #17): the in-model preprocessing is
built-in layers only (caffe's RGB -> BGR minus mean is a frozen 1x1 convolution,
numerically the old ``ReverseChannels`` + ``Normalization``), the model is
compiled with its loss and accuracy, and a checkpoint of every model family
loads, evaluates and predicts in a process where imgrec cannot be imported,
with no ``custom_objects``. Old checkpoints holding ``ReverseChannels`` still load.

All networks are weightless builds at 32x32; no Ray, no downloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from imgrec import checkpoint as ckpt  # noqa: E402
from imgrec import loop as imgrec_loop  # noqa: E402
from imgrec import models, synth  # noqa: E402
from imgrec.config import SCRATCH_RECIPE, ModelConfig, TrainConfig, replace  # noqa: E402
from imgrec.models.layers import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, ReverseChannels  # noqa: E402

SIZE = (32, 32)
# One registry entry per preprocessing mode.
MODES = {"rescale_0_1": "small_cnn", "tf": "mobilenet", "torch": "densenet121", "caffe": "vgg16",
         "none": "efficientnet_b0"}
# Every model family: (registry name, ModelConfig extras, classes). seed_cifar takes the 2-class sigmoid output;
# resnet_tiny is compiled with the train command's recipe (config.SCRATCH_RECIPE: bfloat16 compute
# on a CPU with bfloat16 instructions, as here).
FAMILIES = [
    ("small_cnn", {}, 3),
    ("resnet_small", {}, 3),
    ("resnet_tiny", {}, 3),
    ("seed_cifar", {}, 2),
    ("mobilenet", {"alpha": 0.25}, 3),  # tf
    ("vgg16", {}, 3),  # caffe
    ("densenet121", {}, 3),  # torch
]


def _images(n_per_class: int = 2, size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Rendered uint8 images (synth), plus one image holding every value 0..255 in every channel."""
    x, y = synth.make_arrays("shapes", classes=3, per_class=n_per_class, image_size=size, seed=3)
    ramp = np.zeros((1, *size, 3), np.uint8)
    values = np.arange(size[0] * size[1]) % 256
    ramp[0, ..., 0] = values.reshape(size)
    ramp[0, ..., 1] = values[::-1].reshape(size)
    ramp[0, ..., 2] = np.random.default_rng(0).permutation(values).reshape(size)
    return np.concatenate([x, ramp]), np.concatenate([y, [0]])


def _old_preprocessing(mode: str) -> list[keras.layers.Layer]:
    """The layers imgrec built before issue #17 (imgrec.models.layers at main)."""
    L = keras.layers
    if mode == "rescale_0_1":
        return [L.Rescaling(1.0 / 255)]
    if mode == "tf":
        return [L.Rescaling(1.0 / 127.5, offset=-1.0)]
    if mode == "torch":
        return [L.Rescaling(1.0 / 255),
                L.Normalization(mean=list(IMAGENET_MEAN_RGB), variance=[s * s for s in IMAGENET_STD_RGB])]
    if mode == "caffe":
        return [ReverseChannels(name="rgb_to_bgr"),
                L.Normalization(mean=list(CAFFE_MEAN_BGR), variance=[1.0, 1.0, 1.0], name="caffe_mean")]
    return [L.Rescaling(1.0)]


def _through(layers, x: np.ndarray) -> np.ndarray:
    t = keras.ops.convert_to_tensor(x)
    for layer in layers:
        t = layer(t)
    return keras.ops.convert_to_numpy(t)


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("mode", list(MODES))
def test_new_preprocessing_equals_the_old_layers(mode):
    name = MODES[mode]
    assert models.get_spec(name).preprocessing == mode
    x, _ = _images()
    new_layers = models.preprocessing_layers(name)
    new, old = _through(new_layers, x), _through(_old_preprocessing(mode), x)
    diff = float(np.abs(new - old).max())
    print(f"preprocessing {mode}: max abs diff new vs old = {diff:g}")
    assert new.dtype == np.float32 and new.shape == x.shape
    assert diff <= 1e-5
    for layer in new_layers:  # built-in Keras layers only, none of them trainable
        assert type(layer).__module__.startswith("keras."), type(layer)
        assert layer.trainable_weights == []
    if mode == "caffe":  # a real permutation and mean: channel 0 out is blue in minus its mean
        np.testing.assert_array_equal(new[..., 0], x[..., 2].astype("float32") - np.float32(CAFFE_MEAN_BGR[0]))


def test_caffe_convolution_stays_frozen_outside_the_backbone(tmp_path):
    """The frozen 1x1 convolution sits before the backbone: freeze depths, layer
    counts and block boundaries count backbone layers only, and no freeze change
    (nor a save/load round trip) makes the convolution trainable."""
    model = models.build_model(ModelConfig(name="vgg16"), 3, SIZE)
    conv = model.get_layer("caffe_bgr_mean")
    assert isinstance(conv, keras.layers.Conv2D) and not conv.trainable
    backbone_layers = models.backbone_layers(model)
    assert conv not in backbone_layers and model.get_layer("to_float") not in backbone_layers
    plain = models.get_spec("vgg16").construct(SIZE)
    assert models.backbone_layer_count(model) == len(plain.layers) - 1  # without its InputLayer
    assert [type(layer) for layer in model.layers[:3]] == [keras.layers.InputLayer, keras.layers.Rescaling,
                                                           keras.layers.Conv2D]
    assert model.layers[3] is models.get_backbone(model)  # the preprocessing comes first, outside it

    conv_ids = {id(v) for v in conv.weights}
    for depth in ("all", 0, models.block_boundaries("vgg16")[1], 0):
        n = models.set_freeze_depth(model, depth)
        assert models.frozen_depth(model) == n
        assert not conv.trainable and not conv_ids & {id(v) for v in model.trainable_variables}
    head = {id(v) for v in model.get_layer("predictions").trainable_variables}
    backbone = {id(v) for v in models.get_backbone(model).trainable_variables}
    assert {id(v) for v in model.trainable_variables} == head | backbone

    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert not loaded.get_layer("caffe_bgr_mean").trainable
    assert models.backbone_layer_count(loaded) == models.backbone_layer_count(model)


# --------------------------------------------------------------------------- old checkpoints


def test_old_checkpoint_with_reverse_channels_still_loads(tmp_path):
    """A checkpoint written the old way (ReverseChannels + Normalization, compiled with
    an optimizer only) loads through imgrec and predicts what the new layers do."""
    assert keras.saving.get_registered_name(ReverseChannels) == "imgrec>ReverseChannels"
    L = keras.layers
    body = [L.Conv2D(4, 3, name="conv"), L.GlobalAveragePooling2D(name="pool"),
            L.Dense(3, activation="softmax", name="predictions")]
    old = keras.Sequential([keras.Input((*SIZE, 3), dtype="uint8"), *_old_preprocessing("caffe"), *body])
    old.compile(optimizer="adam")
    old.optimizer.build(old.trainable_variables)
    new = keras.Sequential([keras.Input((*SIZE, 3), dtype="uint8"), *models.preprocessing_layers("vgg16"),
                            L.Conv2D(4, 3, name="conv"), L.GlobalAveragePooling2D(name="pool"),
                            L.Dense(3, activation="softmax", name="predictions")])
    for name in ("conv", "predictions"):
        new.get_layer(name).set_weights(old.get_layer(name).get_weights())
    ckpt.write_checkpoint(old, str(tmp_path / "old"), {"epoch": 1, "class_names": ["a", "b", "c"]})

    loaded, _ = ckpt.load_local(str(tmp_path / "old"))
    assert isinstance(loaded.get_layer("rgb_to_bgr"), ReverseChannels)
    x, _ = _images()
    ours = loaded.predict(x, verbose=0)
    np.testing.assert_allclose(ours, old.predict(x, verbose=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours, new.predict(x, verbose=0), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- plain Keras, imgrec not importable


_PLAIN_KERAS = textwrap.dedent(
    """
    import json, sys
    sys.path.extend(json.loads(sys.argv[1]))  # site-packages, without its .pth files (imgrec's editable install)
    try:
        import imgrec
    except ImportError:
        pass
    else:
        raise SystemExit(f"imgrec is importable here: {imgrec.__file__}")
    import numpy as np
    import keras

    out = {}
    for name, directory in json.loads(sys.argv[2]).items():
        model = keras.models.load_model(directory + "/model.keras")  # safe mode, no custom_objects
        x, y = np.load(directory + "/x.npy"), np.load(directory + "/y.npy")
        scores = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
        probs = model.predict(x, batch_size=4, verbose=0)
        out[name] = dict(
            scores={k: float(v) for k, v in scores.items()},
            max_diff=float(np.abs(probs - np.load(directory + "/probs.npy")).max()),
            loss=model.loss, input_dtype=str(model.input.dtype), keras=keras.__version__,
            modules=sorted({type(l).__module__.split(".")[0] for l in model._flatten_layers(include_self=False)}),
        )
    print(json.dumps(out))
    """
)


def _write_family_checkpoint(name: str, extra: dict, classes: int, directory: str) -> dict:
    """Built and compiled as imgrec's loop does (build_model, compile_model with
    make_optimizer, optimizer built), written by imgrec's writer; the images, labels,
    in-process probabilities and the loop's own loss and accuracy saved alongside."""
    cfg = TrainConfig(model=ModelConfig(name=name, **extra))
    if name == "resnet_tiny":  # with train's recipe: AdamW, CosineDecay with warmup, weight decay, precision
        cfg = replace(cfg, **{k: v for k, v in SCRATCH_RECIPE.items() if k != "model.name"})
    model = models.build_model(cfg.model, classes, SIZE)
    models.compile_model(model, imgrec_loop.make_optimizer(cfg, steps_per_epoch=10), classes)
    model.optimizer.build(model.trainable_variables)
    ckpt.write_checkpoint(model, directory, {"epoch": 1, "class_names": [f"c{i}" for i in range(classes)]})

    x, y = _images()
    y = y % classes
    probs = model.predict(x, batch_size=4, verbose=0)
    y_t = keras.ops.convert_to_tensor(y)
    loss = float(np.mean(keras.ops.convert_to_numpy(imgrec_loop.per_example_loss(classes)(y_t, probs))))
    correct = float(keras.ops.convert_to_numpy(imgrec_loop.correct_counter(classes)(y_t, probs)))
    np.save(os.path.join(directory, "x.npy"), x)
    np.save(os.path.join(directory, "y.npy"), y)
    np.save(os.path.join(directory, "probs.npy"), probs)
    return {"loss": loss, "accuracy": correct / len(y), "loss_name": models.loss_name(classes)}


@pytest.mark.parametrize("families", [
    pytest.param([f for f in FAMILIES if f[0] != "densenet121"], id="course-scratch-tf-caffe"),
    pytest.param(FAMILIES, id="all-with-torch", marks=pytest.mark.slow),  # DenseNet121: ~40 s more on 2 cores
])
def test_every_family_loads_and_evaluates_in_plain_keras_without_imgrec(tmp_path, families):
    expected, dirs = {}, {}
    for name, extra, classes in families:
        dirs[name] = str(tmp_path / name)
        expected[name] = _write_family_checkpoint(name, extra, classes, dirs[name])

    site = list(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    # -I: no PYTHONPATH, no cwd on the path; -S: no site, so no .pth file installs imgrec's finder.
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _PLAIN_KERAS, json.dumps(site), json.dumps(dirs)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert sorted(result) == sorted(dirs)
    for name, got in result.items():
        want = expected[name]
        print(f"plain keras {got['keras']} {name}: {got['scores']} predictions max abs diff {got['max_diff']:g}")
        assert got["loss"] == want["loss_name"] and got["input_dtype"] == "uint8", (name, got)
        assert got["modules"] == ["keras"], (name, got["modules"])  # built-in layers only
        assert got["max_diff"] <= 1e-5, (name, got)
        # plain Keras' compiled loss and accuracy are what imgrec's loop computes
        assert got["scores"]["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-5), (name, got, want)
        assert got["scores"]["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6), (name, got, want)
