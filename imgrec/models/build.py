"""Building any registry model: uint8 pixels in, class probabilities out.

The contract every built model keeps:

* **Input**: raw ``uint8`` pixels, shape ``(h, w, 3)``, RGB. Pixel scaling lives
  INSIDE the model as serializable layers (``imgrec.models.layers``) so training,
  evaluation and batch prediction can never disagree about preprocessing. They
  are built-in Keras layers only, so a checkpoint loads with a bare
  ``keras.models.load_model(path)`` (safe mode on) where imgrec is not installed.
* **Output**: probabilities (``imgrec.models.outputs``).
* **Backbones** (``include_top=False``) are a nested sub-model named
  ``"backbone"``, so ``get_backbone`` finds it again after a save/load round
  trip and ``set_freeze_depth`` can re-freeze it for two-stage fine-tuning.
"""

from __future__ import annotations

import contextlib
import socket

import keras

from imgrec.config import ConfigError, ModelConfig
from imgrec.models.freeze import set_freeze_depth
from imgrec.models.kernels import all_layers, fuse_batch_norm
from imgrec.models.layers import fix_efficientnet_normalization, preprocessing_layers
from imgrec.models.outputs import loss_name
from imgrec.models.registry import (
    BACKBONE_NAME,
    ModelSpec,
    check_model_config,
    check_num_classes,
    check_size,
    get_spec,
    imagenet_size,
    is_pretrained,
    model_name,
    warn_size,
    weights_kind,
)
from imgrec.models.weights import load_backbone_weights


class WeightsDownloadError(ConfigError):
    """``weights="imagenet"`` could not be downloaded (typically: no internet)."""


def _output_layer(num_classes: int) -> keras.layers.Layer:
    # float32 output even under a mixed-precision policy: probabilities must sum to 1.
    if num_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="predictions")
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")


def _head(x, cfg: ModelConfig):
    L = keras.layers
    if cfg.head == "course":
        x = L.Dense(1024, activation="relu", name="head_dense1")(x)
        x = L.Dense(1024, activation="relu", name="head_dense2")(x)
        return L.Dense(512, activation="relu", name="head_dense3")(x)
    if cfg.dropout > 0:
        x = L.Dropout(cfg.dropout, name="head_dropout")(x)
    return x


# --------------------------------------------------------------------------- building


def build_model(cfg: ModelConfig, num_classes: int, image_size: tuple[int, int] | None = None) -> keras.Model:
    """Build any registry model: uint8 pixels in, class probabilities out.

    ``image_size`` is (height, width); ``None`` takes the model's default. For
    backbones, ``cfg.weights`` is ``"none"``, ``"imagenet"`` or a local/s3://
    weights file (see ``load_backbone_weights``) and ``cfg.freeze_depth`` the
    number of backbone layers to freeze (``"all"``: feature extraction only).
    The model is not compiled: ``compile_model`` it after any freezing change."""
    spec = get_spec(cfg.name)
    check_num_classes(num_classes)
    h, w = check_size(spec, image_size)
    check_model_config(spec, cfg)
    with dtype_policy(resolve_precision(cfg.precision)):
        return _build(spec, cfg, num_classes, h, w)


def _build(spec: ModelSpec, cfg: ModelConfig, num_classes: int, h: int, w: int) -> keras.Model:
    inputs = keras.Input(shape=(h, w, 3), dtype="uint8", name="pixels")
    x = inputs
    for layer in preprocessing_layers(spec.name):
        x = layer(x)

    if spec.kind == "backbone":
        backbone = build_backbone(spec.name, (h, w), alpha=cfg.alpha, weights=cfg.weights)
        x = backbone(x)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = _head(x, cfg)
    else:
        x = spec.builder(x, cfg)
        if spec.kind == "scratch":
            x = _head(x, cfg)
    outputs = _output_layer(num_classes)(x)
    model = keras.Model(inputs, outputs, name=model_name(spec.name, cfg.alpha))
    if cfg.bn_momentum is not None:
        # Keras applications use 0.99, made for ImageNet-length runs; a run of a
        # few hundred steps would evaluate with statistics still near their init.
        for layer in all_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(cfg.bn_momentum)
    if spec.kind == "backbone":
        set_freeze_depth(model, cfg.freeze_depth, pretrained=is_pretrained(cfg.weights), model_name=cfg.name)
    return model


# --------------------------------------------------------------------------- precision


def resolve_precision(precision: str, cpu_has_bf16: bool | None = None) -> str:
    """``ModelConfig.precision`` as a Keras dtype policy: ``"auto"`` is ``mixed_bfloat16`` on a
    CPU with bfloat16 instructions when TensorFlow sees no GPU, else ``float32`` (a GPU's
    ``mixed_float16`` needs loss scaling, which imgrec's loop does not do)."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "float32"
    return "mixed_bfloat16" if (cpu_has_bfloat16() if cpu_has_bf16 is None else cpu_has_bf16) else "float32"


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """x86 AVX512-BF16 / AMX-BF16 or Arm BF16, from Linux's ``/proc/cpuinfo`` (elsewhere: False,
    as emulated bfloat16 is slower than float32)."""
    try:
        with open(cpuinfo, encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return bool(set(value.split()) & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return False


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras' global dtype policy set to ``name`` while layers are made, then restored."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def as_float32(model: keras.Model) -> keras.Model:
    """The same network computing in float32: ``model`` itself if it does, else a copy from its
    config with every mixed policy set to float32 and the weights carried over unchanged (a
    mixed policy keeps variables in float32). For exports, whose runtimes expect float32."""
    if all(layer.dtype_policy.name == "float32" for layer in all_layers(model)):
        return model

    def to_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and str(node.get("config", {}).get("name", "")).startswith(
                    "mixed_"):
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: to_float32(v) for k, v in node.items()}
        if isinstance(node, list):
            return [to_float32(v) for v in node]
        return node

    with dtype_policy("float32"):
        copy = model.__class__.from_config(to_float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def for_inference(model: keras.Model, cpu_has_bf16: bool | None = None) -> keras.Model:
    """``model`` for prediction here: a bfloat16 checkpoint (trained where the CPU had
    bfloat16 instructions) is run in float32 where ``precision="auto"`` would not pick bfloat16,
    as emulated bfloat16 is slower than float32 (``as_float32``); else ``model`` itself. Its batch
    norms run on the fused kernel (``kernels.fuse_batch_norm``)."""
    if resolve_precision("auto", cpu_has_bf16) != "mixed_bfloat16":
        model = as_float32(model)
    fuse_batch_norm(model)  # TensorFlow's one-pass batch norm, folded into the conv before it
    return model


def compile_model(model: keras.Model, optimizer, num_classes: int) -> keras.Model:
    """Compile with ``optimizer`` and the output contract's loss and accuracy.

    imgrec's loop computes its own loss; the loss and metrics are compiled in so
    that a checkpoint is complete for plain Keras: ``keras.models.load_model(path)
    .evaluate(x_uint8, y)`` works with no arguments and without imgrec."""
    model.compile(optimizer=optimizer, loss=loss_name(num_classes), metrics=["accuracy"])
    return model


def build_backbone(
    name: str, image_size: tuple[int, int], alpha: float | None = None, weights: str | None = "none"
) -> keras.Model:
    """The entry's network without its top (its factory's), named ``"backbone"``,
    taking float pixels prepared by ``preprocessing_layers``, with ``weights``
    loaded (see ``load_backbone_weights``)."""
    spec = get_spec(name)
    if spec.kind != "backbone":
        raise ConfigError(f"{spec.name} is not a backbone (kind {spec.kind})")
    h, w = check_size(spec, image_size)
    kind = weights_kind(weights)
    if kind == "imagenet":
        backbone = _imagenet_backbone(spec, (h, w), alpha)
    else:
        backbone = spec.construct((h, w), alpha)
        if kind == "file":
            load_backbone_weights(backbone, weights, spec=spec, alpha=alpha, image_size=(h, w))
    backbone.name = BACKBONE_NAME
    return backbone


def _imagenet_backbone(spec: ModelSpec, size: tuple[int, int], alpha: float | None) -> keras.Model:
    """keras' own download path. It needs the internet (or ~/.keras/models);
    offline, the failure becomes one clear error saying what to pass instead."""
    warn_size(spec, size, imagenet_size(spec, size), "ImageNet weights")
    # A firewalled node would otherwise wait on the download forever.
    old_timeout = socket.getdefaulttimeout()
    if old_timeout is None:
        socket.setdefaulttimeout(60)
    try:
        model = spec.construct(size, alpha, weights="imagenet")
    except ConfigError:
        raise
    except Exception as exc:
        raise WeightsDownloadError(
            f"could not download the ImageNet weights of {spec.name} ({str(exc).splitlines()[0][:300]}). "
            "This node probably has no internet access: download the notop .h5 file where you can "
            "(the URL is in the message above), put it on S3 or a shared disk, and pass "
            "weights='s3://bucket/path/file.h5' (or a local path) instead of 'imagenet'"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    if spec.imagenet_stddev_fix:
        # keras' imagenet path adds an extra Rescaling layer to EfficientNet B*;
        # rebuild without it so every weights source gives the same layer list
        # (block boundaries and freeze depths stay valid), then fold its effect in.
        plain = spec.construct(size, alpha)
        plain.set_weights(model.get_weights())
        fix_efficientnet_normalization(plain)
        model = plain
    return model

