"""The model registry: preprocessing parity with keras.applications, the course
models' exact structure, freezing, save/load in a fresh process, and weights
files (local and S3) including the mismatch and offline errors.

Everything builds with weights=None on small inputs; the default suite stays
well under a minute on two cores. Building every registry entry is ``slow``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from imgrec import models, storage  # noqa: E402
from imgrec.config import ConfigError, ModelConfig, TrainConfig  # noqa: E402
from imgrec.models.registry import check_model_config  # noqa: E402

SIZE = (96, 96)


def _pixels(n=4, size=SIZE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _mobilenet(alpha=0.25, size=SIZE, **kw) -> keras.Model:
    return models.build_model(ModelConfig(name="mobilenet", alpha=alpha, **kw), 3, size)


def _randomize(model: keras.Model, seed=1) -> None:
    """Distinct, positive values everywhere (BN variances included), so a
    weights round trip cannot pass by accident on fresh initialisations."""
    rng = np.random.default_rng(seed)
    backbone = models.get_backbone(model)
    backbone.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in backbone.get_weights()])


def _assert_same_backbone_weights(a: keras.Model, b: keras.Model) -> None:
    wa, wb = models.get_backbone(a).get_weights(), models.get_backbone(b).get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb, strict=True):
        assert x.shape == y.shape and np.array_equal(x, y)


# --------------------------------------------------------------------------- preprocessing


def _through(layers, x):
    for layer in layers:
        x = layer(x)
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("name", [s.name for s in models.list_models()])
def test_preprocessing_matches_keras_preprocess_input(name):
    """Every entry's in-model preprocessing equals keras.applications.<module>.preprocess_input
    (the identity for EfficientNet/EfficientNetV2/ConvNeXt/MobileNetV3, which normalise inside)."""
    spec = models.get_spec(name)
    x = _pixels(3, (16, 16))
    ours = _through(models.preprocessing_layers(name), keras.ops.convert_to_tensor(x))
    assert ours.dtype == np.float32
    if spec.kind == "backbone":
        module = getattr(keras.applications, spec.factory.module)
        expected = np.asarray(module.preprocess_input(x.astype("float32").copy()), dtype="float32")
    else:
        expected = x.astype("float32") / 255.0
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=2e-5)


@pytest.mark.parametrize(
    "name,mode", [("mobilenet", "tf"), ("resnet50", "caffe"), ("vgg16", "caffe"), ("densenet121", "torch"),
                  ("efficientnet_b0", "none")]
)
def test_preprocessing_modes(name, mode):
    assert models.get_spec(name).preprocessing == mode


def test_model_internal_preprocessed_tensor_matches_keras():
    model = _mobilenet()
    inner = keras.Model(model.input, model.get_layer("rescale_tf").output)
    x = _pixels(2)
    expected = keras.applications.mobilenet.preprocess_input(x.astype("float32"))
    np.testing.assert_allclose(inner.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    assert model.input.dtype == "uint8"


# --------------------------------------------------------------------------- course models


def _body(model):
    """(type, key facts) of every layer after the uint8 input and the pixel scaling."""
    out = []
    for layer in model.layers[2:]:
        cfg = layer.get_config()
        facts = {k: cfg[k] for k in ("filters", "kernel_size", "units", "activation", "pool_size") if k in cfg}
        out.append((type(layer).__name__, facts))
    return out


def test_seed_cifar_is_the_course_network():
    model = models.build_model(ModelConfig(name="seed_cifar"), 10, (32, 32))
    assert isinstance(model.layers[1], keras.layers.Rescaling)
    assert model.layers[1].scale == pytest.approx(1 / 255)
    assert _body(model) == [
        ("Conv2D", {"filters": 64, "kernel_size": (3, 3), "activation": "relu"}),
        ("MaxPooling2D", {"pool_size": (2, 2)}),
        ("Conv2D", {"filters": 32, "kernel_size": (3, 3), "activation": "relu"}),
        ("Flatten", {}),
        ("Dense", {"units": 80, "activation": "relu"}),
        ("Dense", {"units": 10, "activation": "softmax"}),
    ]


def test_seed_catsdogs_is_the_course_network_with_one_sigmoid():
    model = models.build_model(ModelConfig(name="seed_catsdogs"), 2, (128, 128))
    assert _body(model) == [
        ("Conv2D", {"filters": 32, "kernel_size": (3, 3), "activation": "relu"}),
        ("MaxPooling2D", {"pool_size": (2, 2)}),
        ("Conv2D", {"filters": 64, "kernel_size": (3, 3), "activation": "relu"}),
        ("MaxPooling2D", {"pool_size": (2, 2)}),
        ("Flatten", {}),
        ("Dense", {"units": 512, "activation": "relu"}),
        ("Dense", {"units": 1, "activation": "sigmoid"}),
    ]
    # Two classes always mean one sigmoid unit, whatever the model.
    cifar2 = models.build_model(ModelConfig(name="seed_cifar"), 2, (32, 32))
    assert _body(cifar2)[-1] == ("Dense", {"units": 1, "activation": "sigmoid"})


@pytest.mark.parametrize("size", [(64, 64), (128, 128)])
def test_small_cnn_is_small_and_regularised(size):
    model = models.build_model(ModelConfig(), 5, size)  # small_cnn is the default
    assert models.DEFAULT_MODEL == ModelConfig().name == "small_cnn"
    assert 100_000 <= model.count_params() <= 300_000
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"BatchNormalization", "GlobalAveragePooling2D", "Dropout"} <= kinds
    probs = model.predict(_pixels(2, size), verbose=0)
    assert probs.shape == (2, 5) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_outputs_losses_and_probabilities():
    assert models.loss_name(2) == "binary_crossentropy"
    assert models.loss_name(7) == "sparse_categorical_crossentropy"
    with pytest.raises(ConfigError):
        models.loss_name(1)
    p = np.array([[0.2], [0.9]], dtype=np.float32)
    np.testing.assert_allclose(models.class_probabilities(p), [[0.8, 0.2], [0.1, 0.9]], rtol=1e-6)
    soft = np.array([[0.1, 0.2, 0.7]])
    assert models.class_probabilities(soft) is not None and np.array_equal(models.class_probabilities(soft), soft)


# --------------------------------------------------------------------------- registry and config errors


def test_registry_names_and_aliases():
    assert models.get_spec("MobileNetV2").name == "mobilenet_v2"
    assert models.get_spec("efficientnetb0").name == "efficientnet_b0"
    assert models.get_spec("ResNet50V2").name == "resnet50_v2"
    assert models.get_spec("EfficientNetV2S").name == "efficientnet_v2_s"
    with pytest.raises(ConfigError, match="did you mean.*mobilenet"):
        models.get_spec("mobilenett")
    names = {r["name"] for r in models.models_table()}
    assert names == {s.name for s in models.list_models()}
    row = next(r for r in models.models_table() if r["name"] == "mobilenet")
    assert (row["top1"], row["top5"], row["params_m"], row["size_mb"]) == (70.4, 89.5, 4.3, 16)


def test_cli_models_list():
    from typer.testing import CliRunner

    from imgrec.cli import app

    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "efficientnet_b0" in result.output and "seed_cifar" in result.output and "caffe" in result.output


def test_clear_config_errors():
    with pytest.raises(ConfigError, match=r"inception_v3 needs images of at least 75x75.*got 64x64"):
        models.build_model(ModelConfig(name="inception_v3"), 3, (64, 64))
    with pytest.raises(ConfigError, match="alpha .* applies only to .*mobilenet"):
        models.build_model(ModelConfig(name="resnet50", alpha=0.5), 3, (32, 32))
    with pytest.raises(ConfigError, match="freeze_depth must be between 0 and"):
        _mobilenet(freeze_depth=10_000)
    with pytest.raises(ConfigError, match="takes no weights"):
        models.build_model(ModelConfig(name="small_cnn", weights="imagenet"), 3, (64, 64))


# --------------------------------------------------------------------------- freezing


def test_block_boundaries_end_on_mobilenet_blocks():
    bounds = models.block_boundaries("mobilenet", alpha=0.25)
    model = _mobilenet()
    layers = models.backbone_layers(model)
    assert models.backbone_layer_count(model) == len(layers)
    ends = [layers[k - 1].name for k in bounds]
    assert ends == ["conv1_relu"] + [f"conv_pw_{i}_relu" for i in range(1, 13)]  # pw_13 ends the backbone
    assert models.block_boundaries("mobilenet", alpha=0.25) == bounds  # cached, same answer


def test_freeze_depth_freezes_exactly_k_layers_and_batchnorm_runs_in_inference_mode():
    k = models.block_boundaries("mobilenet", alpha=0.25)[4]
    model = _mobilenet(freeze_depth=k)
    layers = models.backbone_layers(model)
    assert [layer.trainable for layer in layers] == [False] * k + [True] * (len(layers) - k)
    assert models.frozen_depth(model) == k
    assert all(layer.trainable for layer in model.layers if layer.name != models.BACKBONE_NAME)

    frozen_bn = [ly for ly in layers[:k] if isinstance(ly, keras.layers.BatchNormalization)]
    live_bn = [ly for ly in layers[k:] if isinstance(ly, keras.layers.BatchNormalization)]
    assert frozen_bn and live_bn
    before = {ly.name: [w.numpy().copy() for w in ly.weights] for ly in frozen_bn + live_bn}
    frozen_weights = [w.numpy().copy() for ly in layers[:k] for w in ly.weights]

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=models.loss_name(3))
    model.train_on_batch(_pixels(8), np.arange(8) % 3)

    # Frozen: no weight moved, BN moving statistics included (inference mode in fit).
    after = [w.numpy() for ly in layers[:k] for w in ly.weights]
    assert all(np.array_equal(a, b) for a, b in zip(frozen_weights, after, strict=True))
    # Trainable BN layers did update their moving mean in the same step.
    assert any(not np.array_equal(before[ly.name][2], ly.moving_mean.numpy()) for ly in live_bn)
    probe = np.random.default_rng(0).normal(2, 3, (4, 3, 3, *frozen_bn[-1].moving_mean.shape)).astype("float32")
    bn = frozen_bn[-1]
    np.testing.assert_allclose(bn(probe, training=True), bn(probe, training=False), rtol=1e-6)

    assert models.set_freeze_depth(model, "all") == len(layers) and models.frozen_depth(model) == len(layers)
    assert models.set_freeze_depth(model, 0) == 0 and all(ly.trainable for ly in layers)


def test_all_but_top_k_blocks_freezes_up_to_a_block_boundary():
    """``all-K``, the transfer default's freeze depth, counts blocks from the top with
    the entry's own block rule; a K the backbone does not have is refused by name."""
    bounds = models.block_boundaries("mobilenet", alpha=0.25)
    model = _mobilenet()
    for k in (1, 2, 5):
        assert models.set_freeze_depth(model, f"all-{k}", model_name="mobilenet") == bounds[-k]
        assert models.frozen_depth(model) == bounds[-k]
    with pytest.raises(ConfigError, match=r"all-99: mobilenet has 14 blocks, so K must be in \[1, 13\]"):
        models.set_freeze_depth(model, "all-99", model_name="mobilenet")
    with pytest.raises(ConfigError, match="pass model_name"):
        models.set_freeze_depth(model, "all-2")
    built = models.build_model(ModelConfig(name="mobilenet", alpha=0.25, freeze_depth="all-2"), 3, (32, 32))
    assert models.frozen_depth(built) == bounds[-2]
    for bad in ("all-0", "all-x", "-2", 1.5):
        with pytest.raises(ConfigError, match="freeze_depth must be"):
            check_model_config(models.get_spec("mobilenet"), ModelConfig(name="mobilenet", freeze_depth=bad))


@pytest.mark.parametrize("epochs, depth, weights, head", [
    (10, "all-2", "imagenet", 3), (9, 40, "w.weights.h5", 3), (2, 0, "imagenet", 1),
    (1, "all-2", "imagenet", 0),  # one epoch: no room for two stages
    (10, "all", "imagenet", 0),  # everything frozen: stage two would train nothing more
    (10, "all-2", "none", 0),  # from scratch: no pretrained features to protect
])
def test_auto_head_epochs_only_where_two_stages_fine_tune_pretrained_weights(epochs, depth, weights, head):
    cfg = TrainConfig(epochs=epochs, head_epochs="auto",
                      model=ModelConfig(name="mobilenet", freeze_depth=depth, weights=weights))
    assert cfg.head_epoch_count() == head
    assert TrainConfig(epochs=epochs + 1, head_epochs=str(epochs)).head_epoch_count() == epochs  # as the CLI gives it
    with pytest.raises(ConfigError, match="head_epochs must be 'auto' or a number"):
        TrainConfig(head_epochs="some")


def test_set_freeze_depth_on_models_without_backbone():
    model = models.build_model(ModelConfig(name="seed_cifar"), 10, (32, 32))
    assert models.set_freeze_depth(model, 0) == 0  # a no-op, so training code can always call it
    with pytest.raises(ConfigError, match="no backbone"):
        models.set_freeze_depth(model, "all")


# --------------------------------------------------------------------------- save / load in a fresh process


def test_saved_model_reloads_with_safe_mode_in_a_fresh_process(tmp_path):
    k = models.block_boundaries("mobilenet", alpha=0.25)[2]
    model = _mobilenet(freeze_depth=k)
    _randomize(model)
    caffe = keras.Sequential([keras.Input((16, 16, 3), dtype="uint8"), *models.preprocessing_layers("vgg16")])
    x = _pixels(3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    np.save(tmp_path / "yc.npy", caffe.predict(x[:, :16, :16], verbose=0))
    model.save(tmp_path / "m.keras")
    caffe.save(tmp_path / "c.keras")

    script = textwrap.dedent(
        f"""
        import json, numpy as np, keras
        import imgrec.models as models
        import imgrec.models.layers  # registers ReverseChannels for safe mode
        d = {str(tmp_path)!r}
        m = keras.models.load_model(d + "/m.keras", safe_mode=True)
        c = keras.models.load_model(d + "/c.keras", safe_mode=True)
        x = np.load(d + "/x.npy")
        ok = np.array_equal(m.predict(x, verbose=0), np.load(d + "/y.npy"))
        close = np.allclose(m.predict(x, verbose=0), np.load(d + "/y.npy"), rtol=0, atol=1e-6)
        okc = np.allclose(c.predict(x[:, :16, :16], verbose=0), np.load(d + "/yc.npy"), rtol=0, atol=1e-5)
        before = models.frozen_depth(m)
        n = models.set_freeze_depth(m, "all")
        print(json.dumps(dict(exact=bool(ok), close=bool(close), caffe=bool(okc), frozen=before,
                              count=models.backbone_layer_count(m), all=n, identity=models.model_identity(m),
                              dtype=str(m.input.dtype))))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["close"] and result["caffe"], result
    assert result["frozen"] == k and result["all"] == result["count"] == models.backbone_layer_count(model)
    assert result["identity"] == ["mobilenet", 0.25] and result["dtype"] == "uint8"


# --------------------------------------------------------------------------- weights files


@pytest.fixture(scope="module")
def source_model():
    """Task A's model: mobilenet alpha 0.25 with distinct weights (read-only in tests)."""
    model = _mobilenet()
    _randomize(model)
    return model


@pytest.fixture(scope="module")
def foreign_weights(tmp_path_factory):
    """Backbone weights that do not fit mobilenet(alpha=0.25), in both file formats."""
    folder = tmp_path_factory.mktemp("foreign")
    wider = _mobilenet(alpha=0.5)
    v2 = models.build_model(ModelConfig(name="mobilenet_v2", alpha=0.35), 3, SIZE)
    return {
        "wider.weights.h5": models.save_backbone_weights(wider, str(folder / "wider.weights.h5")),
        "wider.h5": models.save_backbone_weights(wider, str(folder / "wider.h5")),
        "v2.weights.h5": models.save_backbone_weights(v2, str(folder / "v2.weights.h5")),
    }


@pytest.mark.parametrize("filename", ["bb.weights.h5", "bb_legacy.h5"])
def test_backbone_weights_round_trip_local(source_model, tmp_path, filename):
    path = models.save_backbone_weights(source_model, str(tmp_path / filename))
    target = _mobilenet(weights=path)
    _assert_same_backbone_weights(source_model, target)


def test_whole_model_weights_and_keras_file_transfer(source_model, tmp_path):
    whole = tmp_path / "whole.weights.h5"
    source_model.save_weights(whole)
    _assert_same_backbone_weights(source_model, _mobilenet(weights=str(whole)))

    saved = tmp_path / "task_a.keras"
    source_model.save(saved)
    # A different input size is fine without the top; it warns, naming both sizes.
    with pytest.warns(UserWarning, match="96x96.*128x128"):
        target = models.build_model(ModelConfig(name="mobilenet", alpha=0.25, weights=str(saved)), 5, (128, 128))
    _assert_same_backbone_weights(source_model, target)


def test_backbone_weights_from_s3_are_cached_per_node(source_model, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGREC_CACHE", str(tmp_path / "cache"))
    for name in ("w/bb.weights.h5", "w/bb.h5"):
        uri = models.save_backbone_weights(source_model, f"{bucket}/{name}")
        assert storage.exists(uri)
        _assert_same_backbone_weights(source_model, _mobilenet(weights=uri))
        cached = models.fetch_weights(uri)
        assert cached.startswith(models.weights_cache_dir()) and os.path.isfile(cached)
        storage.delete_prefix(uri)  # gone from S3: the node's cached copy is still used
        assert models.fetch_weights(uri) == cached


@pytest.mark.parametrize("ext", [".weights.h5", ".h5"])
def test_weights_mismatch_names_file_backbone_and_alpha(foreign_weights, ext):
    path = foreign_weights[f"wider{ext}"]
    with pytest.raises(models.WeightsMismatchError) as info:
        _mobilenet(alpha=0.25, weights=path)
    text = str(info.value)
    assert isinstance(info.value, ValueError)
    assert path in text and "mobilenet (alpha=0.25)" in text and "mobilenet (alpha=0.5)" in text
    assert "conv1" in text and "(3, 3, 3, 8)" in text and "(3, 3, 3, 16)" in text


def test_weights_of_another_backbone_are_a_mismatch(foreign_weights):
    with pytest.raises(models.WeightsMismatchError, match=r"(?s)mobilenet \(alpha=0.25\).*mobilenet_v2 \(alpha=0.35\)"):
        _mobilenet(alpha=0.25, weights=foreign_weights["v2.weights.h5"])


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        _mobilenet(weights=str(tmp_path / "nope.weights.h5"))


def test_efficientnet_published_normalization_is_fixed_on_load(tmp_path):
    """The published EfficientNet files store std as the Normalization variance
    (tensorflow#49930); loading them from a file must normalise like keras'
    weights="imagenet" path does: (x/255 - mean) / std."""
    model = models.build_model(ModelConfig(name="efficientnet_b0"), 3, (32, 32))
    norm = next(ly for ly in models.backbone_layers(model) if isinstance(ly, keras.layers.Normalization))
    norm.adapt_mean.assign(np.asarray(models.IMAGENET_MEAN_RGB, "float32"))
    norm.adapt_variance.assign(np.asarray(models.IMAGENET_STD_RGB, "float32"))  # as published
    norm.finalize_state()
    path = models.save_backbone_weights(model, str(tmp_path / "efficientnetb0_notop.h5"))
    # Load it back (into the same backbone: one EfficientNet build keeps the suite fast).
    models.load_backbone_weights(models.get_backbone(model), path, spec="efficientnet_b0")
    fixed = norm
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    mean, std = np.asarray(models.IMAGENET_MEAN_RGB), np.asarray(models.IMAGENET_STD_RGB)
    keras_imagenet = ((x / 255 - mean) / np.sqrt(std)) / np.sqrt(std)  # its Normalization + extra Rescaling
    np.testing.assert_allclose(fixed(keras.layers.Rescaling(1 / 255)(x)), keras_imagenet, rtol=1e-5, atol=1e-5)


@pytest.mark.timeout(180)
def test_imagenet_offline_is_a_clear_error():
    try:
        models.build_backbone("mobilenet", (128, 128), alpha=0.25, weights="imagenet")
    except models.WeightsDownloadError as exc:
        text = str(exc)
        assert "mobilenet" in text and "s3://" in text and "imagenet" in text
        assert isinstance(exc, ConfigError)
        return
    pytest.skip("ImageNet weights were available here (network or ~/.keras cache)")


# --------------------------------------------------------------------------- every entry builds


def _build_and_predict(name):
    spec = models.get_spec(name)
    size = (spec.min_size, spec.min_size)
    model = models.build_model(ModelConfig(name=name), 3, size)
    probs = model.predict(_pixels(2, size), verbose=0)
    assert model.input.dtype == "uint8" and probs.shape == (2, 3)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    if spec.kind == "backbone":
        assert models.block_boundaries(name), name
        keras.backend.clear_session()  # big backbones: free memory between builds


@pytest.mark.parametrize("name", ["seed_cifar", "seed_catsdogs", "small_cnn", "resnet_small", "resnet_tiny"])
def test_small_entries_build_at_minimum_size(name):
    _build_and_predict(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in models.list_models(kind="backbone")])
def test_every_backbone_builds_at_minimum_size(name):
    _build_and_predict(name)


def _bn_moving_stats(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy().copy() for layer in models.backbone_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) for v in (layer.moving_mean, layer.moving_variance)]


def _fit_steps(model: keras.Model, steps: int = 3) -> None:
    models.compile_model(model, keras.optimizers.Adam(1e-3), 3)
    x, y = _pixels(8 * steps, size=(32, 32), seed=3), np.arange(8 * steps) % 3
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_pretrained_backbone_batchnorm_stays_in_inference_mode_when_fine_tuned(tmp_path):
    """The classic transfer-learning pitfall: unfrozen BatchNorm layers fed small
    fine-tuning batches overwrite the pretrained moving statistics. From scratch
    the backbone's BatchNorm layers learn their statistics; with weights they stay
    frozen while the convolutions train. Kept through a stage switch and a .keras
    save and reload; the recorded freeze depth is the one asked for."""
    keras.utils.set_random_seed(0)
    scratch = models.build_model(ModelConfig(name="mobilenet", alpha=0.25), 3, (32, 32))
    before = _bn_moving_stats(scratch)
    _fit_steps(scratch)
    assert not all(np.array_equal(a, b) for a, b in zip(before, _bn_moving_stats(scratch), strict=True))

    weights = models.save_backbone_weights(scratch, str(tmp_path / "bb.weights.h5"))  # "pretrained" from here on
    tuned = models.build_model(ModelConfig(name="mobilenet", alpha=0.25, weights=weights), 3, (32, 32))
    models.set_freeze_depth(tuned, "all", pretrained=True)  # stage one, then the widest stage two
    models.set_freeze_depth(tuned, 0, pretrained=True)
    assert models.frozen_depth(tuned) == 0
    backbone = models.get_backbone(tuned)
    before, kernels = _bn_moving_stats(tuned), [w.numpy().copy() for w in backbone.trainable_weights]
    assert kernels and not any("gamma" in w.path or "beta" in w.path for w in backbone.trainable_weights)
    _fit_steps(tuned)
    assert all(np.array_equal(a, b) for a, b in zip(before, _bn_moving_stats(tuned), strict=True))
    # the unfrozen convolutions still learn
    assert not all(np.array_equal(a, w.numpy()) for a, w in zip(kernels, backbone.trainable_weights, strict=True))

    path = tmp_path / "tuned.keras"
    tuned.save(path)
    reloaded = keras.models.load_model(path)
    before = _bn_moving_stats(reloaded)
    _fit_steps(reloaded)
    assert all(np.array_equal(a, b) for a, b in zip(before, _bn_moving_stats(reloaded), strict=True))

    boundary = models.block_boundaries("mobilenet", 0.25)[2]
    models.set_freeze_depth(tuned, boundary, pretrained=True)
    assert models.frozen_depth(tuned) == boundary
