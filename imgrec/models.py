"""The model registry: every network imgrec can build, by name, in one place.

Adding a model is one ``ModelSpec`` entry in ``_REGISTRY`` below. The contract
every built model keeps:

* **Input**: raw ``uint8`` pixels, shape ``(h, w, 3)``, RGB. Pixel scaling lives
  INSIDE the model as serializable layers (``Rescaling``, ``Normalization`` with
  fixed statistics, or ``ReverseChannels`` below) so training, evaluation and
  batch prediction can never disagree about preprocessing, and a checkpoint
  loads with ``keras.models.load_model(path, safe_mode=True)`` once
  ``import imgrec.models`` has registered our one custom layer.
* **Output**: probabilities. Softmax over N units for N > 2 classes; one sigmoid
  unit for exactly 2 classes (the course's cats vs dogs). ``loss_name`` and
  ``class_probabilities`` hide that difference from callers.
* **Backbones** (``keras.applications``, ``include_top=False``) are a nested
  sub-model named ``"backbone"``, so ``get_backbone`` finds it again after a
  save/load round trip and ``set_freeze_depth`` can re-freeze it for two-stage
  fine-tuning.

Layer counting: the "backbone layers" are ``backbone.layers`` *without* its
``InputLayer`` (Keras does not save an InputLayer's trainable flag, so counting
it would make a reloaded model look differently frozen). ``freeze_depth=k``
freezes the first k of them; ``block_boundaries`` lists the values of k that
stop exactly at the end of a block.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  (after the TF log level, so importing us stays quiet)

from imgrec import storage  # noqa: E402
from imgrec.config import ConfigError, ModelConfig  # noqa: E402
from imgrec.layout import cache_dir  # noqa: E402

log = logging.getLogger(__name__)

KINDS = ("course", "scratch", "backbone")
PREPROCESSING = ("rescale_0_1", "tf", "torch", "caffe", "none")
HEADS = ("lean", "course")
BACKBONE_NAME = "backbone"
MODEL_PREFIX = "imgrec_"

# The statistics keras.applications.imagenet_utils uses (RGB order for torch, BGR for caffe).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class WeightsMismatchError(ValueError):
    """A weights file does not fit the backbone (other architecture or alpha)."""


class WeightsDownloadError(ConfigError):
    """``weights="imagenet"`` could not be downloaded (typically: no internet)."""


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. Published numbers come from the Keras applications
    table (keras.io/api/applications) and are documentation only."""

    name: str
    kind: str  # course | scratch | backbone
    input_size: tuple[int, int]  # default (height, width)
    min_size: int  # smallest height/width the network accepts
    preprocessing: str  # one of PREPROCESSING
    description: str = ""
    constructor: str | None = None  # keras.applications class name, e.g. "MobileNetV2"
    module: str | None = None  # keras.applications submodule holding its preprocess_input
    kwargs: tuple[tuple[str, Any], ...] = ()  # extra constructor arguments
    alpha: bool = False  # accepts a width multiplier (MobileNet family)
    imagenet_sizes: tuple[int, ...] = ()  # sizes with published ImageNet weights (default: input_size)
    blocks: str | None = None  # block-end rule, see _block_ends()
    imagenet_stddev_fix: bool = False  # EfficientNet B0-B7, see _fix_efficientnet_normalization()
    params_m: float | None = None  # published parameters, millions (with the ImageNet top)
    depth: int | None = None
    size_mb: float | None = None  # published ImageNet weights file
    top1: float | None = None  # ImageNet validation accuracy, %
    top5: float | None = None
    builder: Callable[..., Any] | None = None  # course/scratch body: (x, cfg) -> features

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert self.preprocessing in PREPROCESSING, self.preprocessing
        assert (self.kind == "backbone") == (self.constructor is not None), self.name

    @property
    def default_size(self) -> tuple[int, int]:
        """The default (height, width): the size published weights were trained at."""
        return self.input_size


# ----------------------------------------------------------------- course and scratch bodies


def _seed_cifar(x, cfg: ModelConfig):
    """The course's CIFAR-10 network (without its output layer)."""
    L = keras.layers
    x = L.Conv2D(64, (3, 3), activation="relu", name="conv1")(x)
    x = L.MaxPooling2D((2, 2), name="pool1")(x)
    x = L.Conv2D(32, (3, 3), activation="relu", name="conv2")(x)
    x = L.Flatten(name="flatten")(x)
    return L.Dense(80, activation="relu", name="dense1")(x)


def _seed_catsdogs(x, cfg: ModelConfig):
    """The course's cats-vs-dogs network (without its output layer)."""
    L = keras.layers
    x = L.Conv2D(32, (3, 3), activation="relu", name="conv1")(x)
    x = L.MaxPooling2D((2, 2), name="pool1")(x)
    x = L.Conv2D(64, (3, 3), activation="relu", name="conv2")(x)
    x = L.MaxPooling2D((2, 2), name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    return L.Dense(512, activation="relu", name="dense1")(x)


def _conv_bn_relu(x, filters: int, name: str, strides: int = 1):
    L = keras.layers
    # No conv bias: the batch norm right after it has its own shift.
    x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # momentum 0.9, not Keras' 0.99: short runs (tens of steps, as in demos and
    # sweeps) otherwise evaluate with moving statistics still near their init.
    x = L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def _small_cnn(x, cfg: ModelConfig):
    """A VGG-style CNN with batch norm and global average pooling, ~140k parameters.

    Sized for training from scratch on 2 CPU cores: at 96 px and above the stem
    convolution has stride 2, so 128x128 input costs what 64x64 does (~0.12 G
    multiply-adds per image, forward)."""
    L = keras.layers
    stem_stride = 2 if min(x.shape[1], x.shape[2]) >= 96 else 1
    x = _conv_bn_relu(x, 32, "stem", strides=stem_stride)
    x = _conv_bn_relu(x, 32, "block1a")
    x = L.MaxPooling2D(2, name="block1_pool")(x)
    x = _conv_bn_relu(x, 64, "block2a")
    x = _conv_bn_relu(x, 64, "block2b")
    x = L.MaxPooling2D(2, name="block2_pool")(x)
    x = _conv_bn_relu(x, 128, "block3a")
    x = L.MaxPooling2D(2, name="block3_pool")(x)
    return L.GlobalAveragePooling2D(name="avg_pool")(x)


def _course(name, size, min_size, builder, description) -> ModelSpec:
    return ModelSpec(name, "course", size, min_size, "rescale_0_1", description, builder=builder)


def _backbone(
    name: str,
    constructor: str,
    module: str,
    size: int,
    preprocessing: str,
    blocks: str,
    table: tuple | None = None,  # (size MB, top-1 %, top-5 %, params M, depth)
    min_size: int = 32,
    **extra: Any,
) -> ModelSpec:
    size_mb, top1, top5, params_m, depth = table or (None,) * 5
    return ModelSpec(
        name=name,
        kind="backbone",
        input_size=(size, size),
        min_size=min_size,
        preprocessing=preprocessing,
        constructor=constructor,
        module=module,
        blocks=blocks,
        size_mb=size_mb,
        top1=top1,
        top5=top5,
        params_m=params_m,
        depth=depth,
        description=extra.pop("description", f"keras.applications.{constructor}"),
        **extra,
    )


# Block-end rules, matched with re.search against "ClassName:layer_name" of every
# backbone layer. A match with a (?P<block>...) group marks a block: the
# boundary falls after the LAST layer of that block (robust to unnamed
# activations inside it). A match without the group is a block end by itself.
_B_MOBILENET = r":conv1_relu$|:conv_pw_\d+_relu$"
_B_MOBILENET_V2 = r":Conv1_relu$|:(?P<block>block_\d+|expanded_conv)_"
_B_MOBILENET_V3 = r":(?P<block>expanded_conv(?:_\d+)?)_"
_B_RESNET = r":pool1_pool$|:(?P<block>conv\d_block\d+)_"
_B_EFFICIENTNET = r":stem_activation$|:(?P<block>block\d+[a-z])_"
_B_DENSENET = r":pool1$|:pool\d_pool$|:(?P<block>conv\d_block\d+)_"
_B_INCEPTION_V3 = r":mixed\d+$"
_B_INCEPTION_RESNET = r":mixed_\d[a-z]$|:block(?:35|17|8)_\d+_ac$"
_B_XCEPTION = r"^Add:|:block1_conv2_act$"
_B_VGG = r":block\d_pool$"
_B_NASNET = r":(?:normal_concat_\d+|reduction_concat_(?:reduce|stem)_\d+)$"
_B_CONVNEXT = r":\w+_stem$|:\w+_downsampling_block_\d+$|:(?P<block>\w+_stage_\d+_block_\d+)_"

_MOBILENET_KW = dict(alpha=True, imagenet_sizes=(128, 160, 192, 224))
_MOBILENET_V2_KW = dict(alpha=True, imagenet_sizes=(96, 128, 160, 192, 224))
_EFFNET_KW = dict(imagenet_stddev_fix=True)

_ENTRIES: list[ModelSpec] = [
    # --- the course's models and a stronger small CNN for training from scratch
    _course("seed_cifar", (32, 32), 8, _seed_cifar, "the course's CIFAR-10 CNN (Conv64-Pool-Conv32-Dense80)"),
    _course("seed_catsdogs", (128, 128), 10, _seed_catsdogs, "the course's cats-vs-dogs CNN (Conv32-Pool-Conv64-Pool-Dense512)"),
    ModelSpec(
        "small_cnn", "scratch", (64, 64), 16, "rescale_0_1",
        "VGG-style CNN with batch norm + global average pooling, ~140k params (the default)",
        builder=_small_cnn,
    ),
    # --- keras.applications backbones; table = (size MB, top-1, top-5, params M, depth)
    _backbone("xception", "Xception", "xception", 299, "tf", _B_XCEPTION, (88, 79.0, 94.5, 22.9, 81), min_size=71),
    _backbone("vgg16", "VGG16", "vgg16", 224, "caffe", _B_VGG, (528, 71.3, 90.1, 138.4, 16)),
    _backbone("vgg19", "VGG19", "vgg19", 224, "caffe", _B_VGG, (549, 71.3, 90.0, 143.7, 19)),
    _backbone("resnet50", "ResNet50", "resnet", 224, "caffe", _B_RESNET, (98, 74.9, 92.1, 25.6, 107)),
    _backbone("resnet101", "ResNet101", "resnet", 224, "caffe", _B_RESNET, (171, 76.4, 92.8, 44.7, 209)),
    _backbone("resnet152", "ResNet152", "resnet", 224, "caffe", _B_RESNET, (232, 76.6, 93.1, 60.4, 311)),
    _backbone("resnet50_v2", "ResNet50V2", "resnet_v2", 224, "tf", _B_RESNET, (98, 76.0, 93.0, 25.6, 103)),
    _backbone("resnet101_v2", "ResNet101V2", "resnet_v2", 224, "tf", _B_RESNET, (171, 77.2, 93.8, 44.7, 205)),
    _backbone("resnet152_v2", "ResNet152V2", "resnet_v2", 224, "tf", _B_RESNET, (232, 78.0, 94.2, 60.4, 307)),
    _backbone("inception_v3", "InceptionV3", "inception_v3", 299, "tf", _B_INCEPTION_V3, (92, 77.9, 93.7, 23.9, 189), min_size=75),
    _backbone(
        "inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, "tf", _B_INCEPTION_RESNET,
        (215, 80.3, 95.3, 55.9, 449), min_size=75,
    ),
    _backbone("mobilenet", "MobileNet", "mobilenet", 224, "tf", _B_MOBILENET, (16, 70.4, 89.5, 4.3, 55), **_MOBILENET_KW),
    _backbone(
        "mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, "tf", _B_MOBILENET_V2, (14, 71.3, 90.1, 3.5, 105),
        **_MOBILENET_V2_KW,
    ),
    # MobileNetV3 rows: the table in keras' mobilenet_v3 docstring (top-1, params with top).
    _backbone("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, "none", _B_MOBILENET_V3, (None, 68.1, None, 2.9, None), alpha=True),
    _backbone("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, "none", _B_MOBILENET_V3, (None, 75.6, None, 5.4, None), alpha=True),
    _backbone(
        "mobilenet_v3_small_minimalistic", "MobileNetV3Small", "mobilenet_v3", 224, "none", _B_MOBILENET_V3,
        (None, 61.9, None, 2.0, None), alpha=True, kwargs=(("minimalistic", True),),
        description="keras.applications.MobileNetV3Small(minimalistic=True)",
    ),
    _backbone(
        "mobilenet_v3_large_minimalistic", "MobileNetV3Large", "mobilenet_v3", 224, "none", _B_MOBILENET_V3,
        (None, 72.3, None, 3.9, None), alpha=True, kwargs=(("minimalistic", True),),
        description="keras.applications.MobileNetV3Large(minimalistic=True)",
    ),
    _backbone("densenet121", "DenseNet121", "densenet", 224, "torch", _B_DENSENET, (33, 75.0, 92.3, 8.1, 242)),
    _backbone("densenet169", "DenseNet169", "densenet", 224, "torch", _B_DENSENET, (57, 76.2, 93.2, 14.3, 338)),
    _backbone("densenet201", "DenseNet201", "densenet", 224, "torch", _B_DENSENET, (80, 77.3, 93.6, 20.2, 402)),
    _backbone("nasnet_mobile", "NASNetMobile", "nasnet", 224, "tf", _B_NASNET, (23, 74.4, 91.9, 5.3, 389)),
    _backbone("nasnet_large", "NASNetLarge", "nasnet", 331, "tf", _B_NASNET, (343, 82.5, 96.0, 88.9, 533)),
    _backbone("efficientnet_b0", "EfficientNetB0", "efficientnet", 224, "none", _B_EFFICIENTNET, (29, 77.1, 93.3, 5.3, 132), **_EFFNET_KW),
    _backbone("efficientnet_b1", "EfficientNetB1", "efficientnet", 240, "none", _B_EFFICIENTNET, (31, 79.1, 94.4, 7.9, 186), **_EFFNET_KW),
    _backbone("efficientnet_b2", "EfficientNetB2", "efficientnet", 260, "none", _B_EFFICIENTNET, (36, 80.1, 94.9, 9.2, 186), **_EFFNET_KW),
    _backbone("efficientnet_b3", "EfficientNetB3", "efficientnet", 300, "none", _B_EFFICIENTNET, (48, 81.6, 95.7, 12.3, 210), **_EFFNET_KW),
    _backbone("efficientnet_b4", "EfficientNetB4", "efficientnet", 380, "none", _B_EFFICIENTNET, (75, 82.9, 96.4, 19.5, 258), **_EFFNET_KW),
    _backbone("efficientnet_b5", "EfficientNetB5", "efficientnet", 456, "none", _B_EFFICIENTNET, (118, 83.6, 96.7, 30.6, 312), **_EFFNET_KW),
    _backbone("efficientnet_b6", "EfficientNetB6", "efficientnet", 528, "none", _B_EFFICIENTNET, (166, 84.0, 96.8, 43.3, 360), **_EFFNET_KW),
    _backbone("efficientnet_b7", "EfficientNetB7", "efficientnet", 600, "none", _B_EFFICIENTNET, (256, 84.3, 97.0, 66.7, 438), **_EFFNET_KW),
    _backbone("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnet_v2", 224, "none", _B_EFFICIENTNET, (29, 78.7, 94.3, 7.2, None)),
    _backbone("efficientnet_v2_b1", "EfficientNetV2B1", "efficientnet_v2", 240, "none", _B_EFFICIENTNET, (34, 79.8, 95.0, 8.2, None)),
    _backbone("efficientnet_v2_b2", "EfficientNetV2B2", "efficientnet_v2", 260, "none", _B_EFFICIENTNET, (42, 80.5, 95.1, 10.2, None)),
    _backbone("efficientnet_v2_b3", "EfficientNetV2B3", "efficientnet_v2", 300, "none", _B_EFFICIENTNET, (59, 82.0, 95.8, 14.5, None)),
    _backbone("efficientnet_v2_s", "EfficientNetV2S", "efficientnet_v2", 384, "none", _B_EFFICIENTNET, (88, 83.9, 96.7, 21.6, None)),
    _backbone("efficientnet_v2_m", "EfficientNetV2M", "efficientnet_v2", 480, "none", _B_EFFICIENTNET, (220, 85.3, 97.4, 54.4, None)),
    _backbone("efficientnet_v2_l", "EfficientNetV2L", "efficientnet_v2", 480, "none", _B_EFFICIENTNET, (479, 85.7, 97.5, 119.0, None)),
    _backbone("convnext_tiny", "ConvNeXtTiny", "convnext", 224, "none", _B_CONVNEXT, (109.42, 81.3, None, 28.6, None)),
    _backbone("convnext_small", "ConvNeXtSmall", "convnext", 224, "none", _B_CONVNEXT, (192.29, 82.3, None, 50.2, None)),
    _backbone("convnext_base", "ConvNeXtBase", "convnext", 224, "none", _B_CONVNEXT, (338.58, 85.3, None, 88.5, None)),
    _backbone("convnext_large", "ConvNeXtLarge", "convnext", 224, "none", _B_CONVNEXT, (755.07, 86.3, None, 197.7, None)),
    _backbone("convnext_xlarge", "ConvNeXtXLarge", "convnext", 224, "none", _B_CONVNEXT, (1310, 86.7, None, 350.1, None)),
]

_REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _ENTRIES}
DEFAULT_MODEL = "small_cnn"


def _alias_key(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", str(name).lower())


def _aliases() -> dict[str, str]:
    """Accepted spellings: the registry key, and the Keras class name
    (case-insensitive, with or without separators: MobileNetV2, mobilenetv2)."""
    table: dict[str, str] = {}
    for spec in _REGISTRY.values():
        table[_alias_key(spec.name)] = spec.name
    for spec in _REGISTRY.values():
        if spec.constructor and not spec.kwargs:  # the plain class name means the plain variant
            table.setdefault(_alias_key(spec.constructor), spec.name)
    return table


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name`` (a registry key or a Keras class name)."""
    if isinstance(name, ModelSpec):
        return name
    key = _aliases().get(_alias_key(name))
    if key is None:
        close = difflib.get_close_matches(str(name).lower(), list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (`imgrec models list` shows all {len(_REGISTRY)})")
    return _REGISTRY[key]


def list_models(kind: str | None = None) -> list[ModelSpec]:
    return [s for s in _REGISTRY.values() if kind is None or s.kind == kind]


# --------------------------------------------------------------------------- preprocessing


@keras.saving.register_keras_serializable(package="imgrec")
class ReverseChannels(keras.layers.Layer):
    """RGB -> BGR (and back), as float: caffe-style backbones were trained on BGR.

    A named, registered layer rather than a Lambda, because Keras' safe mode
    refuses to deserialize Lambda layers."""

    def call(self, inputs):
        return keras.ops.flip(keras.ops.cast(inputs, self.compute_dtype), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def preprocessing_layers(name: str) -> list[keras.layers.Layer]:
    """Fresh layers turning uint8 RGB pixels into what the network expects,
    matching ``keras.applications.<module>.preprocess_input`` exactly (to float32
    rounding):

    * ``rescale_0_1``: x / 255 (the course's ``rescale=1./255``)
    * ``tf``: x / 127.5 - 1
    * ``torch``: (x / 255 - ImageNet mean) / ImageNet std, per RGB channel
    * ``caffe``: RGB -> BGR, then minus the ImageNet BGR mean (no scaling)
    * ``none``: only a cast to float; the backbone normalises inside itself
      (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3)
    """
    spec = get_spec(name)
    L = keras.layers
    mode = spec.preprocessing
    if mode == "rescale_0_1":
        return [L.Rescaling(1.0 / 255, name="rescale_0_1")]
    if mode == "tf":
        return [L.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale_tf")]
    if mode == "torch":
        return [
            L.Rescaling(1.0 / 255, name="rescale_0_1"),
            L.Normalization(
                mean=list(IMAGENET_MEAN_RGB), variance=[s * s for s in IMAGENET_STD_RGB], name="imagenet_norm"
            ),
        ]
    if mode == "caffe":
        return [
            ReverseChannels(name="rgb_to_bgr"),
            L.Normalization(mean=list(CAFFE_MEAN_BGR), variance=[1.0, 1.0, 1.0], name="caffe_mean"),
        ]
    # "none": Rescaling(1.0) is an exact, serializable cast of uint8 to float.
    return [L.Rescaling(1.0, name="to_float")]


# --------------------------------------------------------------------------- outputs


def loss_name(num_classes: int) -> str:
    """The Keras loss for our output layer: one sigmoid unit for 2 classes,
    softmax with integer labels otherwise."""
    _check_num_classes(num_classes)
    return "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Model outputs as an (N, C) array of class probabilities: a single sigmoid
    column p becomes [1 - p, p]; softmax outputs pass through."""
    out = np.asarray(outputs)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise ValueError(f"expected model outputs of shape (N, C) or (N,), got {out.shape}")
    if out.shape[1] == 1:
        return np.concatenate([1.0 - out, out], axis=1)
    return out


def _check_num_classes(num_classes: int) -> None:
    if int(num_classes) < 2:
        raise ConfigError(f"need at least 2 classes to train a classifier, got {num_classes}")


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
    The model is not compiled: compile after any freezing change."""
    spec = get_spec(cfg.name)
    _check_num_classes(num_classes)
    h, w = _check_size(spec, image_size)
    _check_model_config(spec, cfg)

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
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(cfg.bn_momentum)
    if spec.kind == "backbone":
        set_freeze_depth(model, cfg.freeze_depth)
    return model


def model_name(spec_name: str, alpha: float | None = None) -> str:
    """The built model's name, recording registry name and alpha so that they
    survive a save/load round trip (``model_identity`` reads them back)."""
    return f"{MODEL_PREFIX}{spec_name}" + (f"_alpha{alpha:g}" if alpha is not None else "")


def model_identity(model: keras.Model) -> tuple[str | None, float | None]:
    """(registry name, alpha) of a model built here, else (None, None)."""
    return _parse_model_name(getattr(model, "name", "") or "")


def _parse_model_name(name: str) -> tuple[str | None, float | None]:
    m = re.fullmatch(rf"{MODEL_PREFIX}(?P<spec>.+?)(?:_alpha(?P<alpha>[0-9.e+-]+))?", name)
    if not m or m["spec"] not in _REGISTRY:
        return None, None
    return m["spec"], float(m["alpha"]) if m["alpha"] else None


def _check_size(spec: ModelSpec, image_size) -> tuple[int, int]:
    if image_size is None:
        return spec.input_size
    h, w = (int(v) for v in image_size)
    if min(h, w) < spec.min_size:
        dh, dw = spec.input_size
        raise ConfigError(
            f"{spec.name} needs images of at least {spec.min_size}x{spec.min_size} pixels, got {h}x{w}; "
            f"decode to a larger image size (its default is {dh}x{dw}) or pick a model that accepts "
            "small inputs (small_cnn, mobilenet_v2, resnet50 take 32x32)"
        )
    return h, w


def _check_model_config(spec: ModelSpec, cfg: ModelConfig) -> None:
    if cfg.head not in HEADS:
        raise ConfigError(f"head must be one of {HEADS}, got {cfg.head!r}")
    if not 0.0 <= float(cfg.dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout!r}")
    if cfg.alpha is not None and not spec.alpha:
        with_alpha = ", ".join(s.name for s in _REGISTRY.values() if s.alpha)
        raise ConfigError(
            f"alpha (width multiplier) applies only to {with_alpha}; {spec.name} has no alpha, drop the setting"
        )
    if cfg.alpha is not None and not float(cfg.alpha) > 0:
        raise ConfigError(f"alpha must be > 0, got {cfg.alpha!r}")
    if spec.kind != "backbone":
        if _weights_kind(cfg.weights) != "none":
            raise ConfigError(
                f"{spec.name} is trained from scratch and takes no weights (got {cfg.weights!r}); "
                "pretrained weights apply to backbones (`imgrec models list`), resume a run to continue training"
            )
        if cfg.freeze_depth not in (0, "0", None):
            raise ConfigError(f"freeze_depth applies to backbones only; {spec.name} has none, set it to 0")
        if spec.kind == "course" and cfg.head != "lean":
            raise ConfigError(f"{spec.name} is the course's exact network and has no separate head; drop head=")


def build_backbone(
    name: str, image_size: tuple[int, int], alpha: float | None = None, weights: str | None = "none"
) -> keras.Model:
    """The keras.applications network without its top, named ``"backbone"``,
    taking float pixels prepared by ``preprocessing_layers``, with ``weights``
    loaded (see ``load_backbone_weights``)."""
    spec = get_spec(name)
    if spec.kind != "backbone":
        raise ConfigError(f"{spec.name} is not a backbone (kind {spec.kind})")
    h, w = _check_size(spec, image_size)
    kind = _weights_kind(weights)
    if kind == "imagenet":
        backbone = _imagenet_backbone(spec, (h, w), alpha)
    else:
        backbone = _construct(spec, (h, w), alpha, weights=None)
        if kind == "file":
            load_backbone_weights(backbone, weights, spec=spec, alpha=alpha, image_size=(h, w))
    backbone.name = BACKBONE_NAME
    return backbone


def _construct(spec: ModelSpec, size: tuple[int, int], alpha: float | None, weights: str | None) -> keras.Model:
    ctor = getattr(keras.applications, spec.constructor)
    kwargs: dict[str, Any] = dict(include_top=False, weights=weights, input_shape=(size[0], size[1], 3))
    kwargs.update(spec.kwargs)
    if alpha is not None:
        kwargs["alpha"] = float(alpha)
    try:
        return ctor(**kwargs)
    except ValueError as exc:
        # keras' own checks (e.g. no ImageNet weights for this alpha/size): keep its words, add ours.
        raise ConfigError(f"keras.applications.{spec.constructor} ({spec.name}, alpha={alpha}): {exc}") from None


def _imagenet_backbone(spec: ModelSpec, size: tuple[int, int], alpha: float | None) -> keras.Model:
    """keras' own download path. It needs the internet (or ~/.keras/models);
    offline, the failure becomes one clear error saying what to pass instead."""
    _warn_size(spec, size, _imagenet_size(spec, size), "ImageNet weights")
    # A firewalled node would otherwise wait on the download forever.
    old_timeout = socket.getdefaulttimeout()
    if old_timeout is None:
        socket.setdefaulttimeout(60)
    try:
        model = _construct(spec, size, alpha, weights="imagenet")
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
        plain = _construct(spec, size, alpha, weights=None)
        plain.set_weights(model.get_weights())
        _fix_efficientnet_normalization(plain)
        model = plain
    return model


def _imagenet_size(spec: ModelSpec, size: tuple[int, int]) -> tuple[int, int]:
    """The input size the published ImageNet weights closest to ``size`` were trained at."""
    sizes = spec.imagenet_sizes or (spec.input_size[0],)
    if size[0] == size[1] and size[0] in sizes:
        return size
    best = 224 if 224 in sizes else sizes[-1]
    return (best, best)


def _warn_size(spec: ModelSpec, size: tuple[int, int], trained: tuple[int, int] | None, source: str) -> None:
    if trained and tuple(trained) != tuple(size):
        warnings.warn(
            f"{source} for {spec.name} were trained on {trained[0]}x{trained[1]} images, this model takes "
            f"{size[0]}x{size[1]}: the convolution weights transfer, but expect lower accuracy until fine-tuned",
            stacklevel=3,
        )


def _fix_efficientnet_normalization(backbone: keras.Model) -> None:
    """Make EfficientNet B0-B7 normalise exactly as keras' ``weights="imagenet"`` does.

    The published files store the ImageNet *standard deviation* as the
    Normalization layer's variance (tensorflow#49930); keras compensates with an
    extra Rescaling(1/sqrt(std)) layer, but only on its download path, so the
    same file loaded from a path would be silently mis-normalised. Here the
    compensation is folded into the variance (std -> std**2), whatever the
    source. Idempotent: a fixed or scratch-trained variance is left alone."""
    for layer in backbone.layers:
        if not isinstance(layer, keras.layers.Normalization) or getattr(layer, "input_mean", None) is not None:
            continue
        variance = np.asarray(layer.adapt_variance.numpy()).reshape(-1)
        if variance.shape == (3,) and np.allclose(variance, IMAGENET_STD_RGB, atol=1e-6):
            layer.adapt_variance.assign(np.asarray(IMAGENET_STD_RGB, "float32") ** 2)
            layer.finalize_state()


# --------------------------------------------------------------------------- freezing


def get_backbone(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a model built (or loaded) here."""
    try:
        layer = model.get_layer(BACKBONE_NAME)
    except ValueError:
        layer = None
    if isinstance(layer, keras.Model):
        return layer
    if getattr(model, "name", None) == BACKBONE_NAME:
        return model
    raise ConfigError(
        f"model {model.name!r} has no backbone (a sub-model named {BACKBONE_NAME!r}); "
        "freezing and backbone weights apply to transfer models (kind 'backbone' in `imgrec models list`)"
    )


def _has_backbone(model: keras.Model) -> bool:
    try:
        get_backbone(model)
    except ConfigError:
        return False
    return True


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in Keras order, without its InputLayer."""
    return [layer for layer in get_backbone(model).layers if not isinstance(layer, keras.layers.InputLayer)]


def backbone_layer_count(model: keras.Model) -> int:
    return len(backbone_layers(model))


def set_freeze_depth(model: keras.Model, depth: int | str) -> int:
    """Freeze the first ``depth`` backbone layers and unfreeze the rest;
    ``"all"`` freezes the whole backbone. Returns the number frozen.

    Frozen BatchNormalization layers run in inference mode (Keras 3: a
    BatchNormalization with ``trainable=False`` uses its moving statistics and
    does not update them, even in ``fit``). Works on a freshly built model and
    on one reloaded with ``keras.models.load_model``. Compile (again) afterwards:
    the trainable set is fixed when the train step is traced.

    A model without a backbone (course, scratch) accepts only depth 0, as a no-op,
    so training code can call this for every model."""
    if depth in (0, "0", None) and not _has_backbone(model):
        return 0
    layers = backbone_layers(model)
    n = _resolve_depth(depth, len(layers))
    backbone = get_backbone(model)
    backbone.trainable = True  # clears any blanket freeze before the per-layer one
    for i, layer in enumerate(layers):
        layer.trainable = i >= n
    return n


def frozen_depth(model: keras.Model) -> int:
    """How many leading backbone layers are frozen (what ``set_freeze_depth`` set)."""
    n = 0
    for layer in backbone_layers(model):
        if layer.trainable:
            break
        n += 1
    return n


def _resolve_depth(depth: int | str | None, count: int) -> int:
    if depth is None:
        return 0
    if isinstance(depth, str):
        if depth.strip().lower() == "all":
            return count
        try:
            depth = int(depth)
        except ValueError:
            raise ConfigError(f"freeze_depth must be an integer or 'all', got {depth!r}") from None
    if not 0 <= int(depth) <= count:
        raise ConfigError(
            f"freeze_depth must be between 0 and {count} (this backbone's layer count) or 'all', got {depth}; "
            "see models.block_boundaries() for depths that end on a block"
        )
    return int(depth)


def _block_ends(layers: list[keras.layers.Layer], rule: str) -> list[int]:
    pattern = re.compile(rule)
    ends: set[int] = set()
    last_of_block: dict[str, int] = {}
    for i, layer in enumerate(layers):
        m = pattern.search(f"{type(layer).__name__}:{layer.name}")
        if not m:
            continue
        block = m.groupdict().get("block")
        if block:
            last_of_block[block] = i
        else:
            ends.add(i)
    ends.update(last_of_block.values())
    # A boundary k means "freeze layers[:k]"; freezing everything is "all", not a boundary.
    return sorted(i + 1 for i in ends if i + 1 < len(layers))


@functools.cache
def _block_boundaries_cached(name: str, alpha: float | None) -> tuple[int, ...]:
    spec = get_spec(name)
    size = max(spec.min_size, 32)
    backbone = _construct(spec, (size, size), alpha, weights=None)
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    return tuple(_block_ends(layers, spec.blocks))


def block_boundaries(name: str, alpha: float | None = None) -> list[int]:
    """Freeze depths that stop exactly after a block (e.g. MobileNet's
    ``conv_pw_N_relu``, ResNet's ``convN_blockM_out``, EfficientNet's
    ``blockNx`` ends), computed from the layer names of a weightless build."""
    spec = get_spec(name)
    if spec.kind != "backbone":
        raise ConfigError(f"{spec.name} has no backbone, so no block boundaries")
    return list(_block_boundaries_cached(spec.name, None if alpha is None else float(alpha)))


# --------------------------------------------------------------------------- weights files


def _weights_kind(weights: str | None) -> str:
    if weights is None or str(weights).strip().lower() in ("", "none", "null", "random"):
        return "none"
    if str(weights).strip().lower() == "imagenet":
        return "imagenet"
    return "file"


def weights_cache_dir() -> str:
    return cache_dir("weights")


def fetch_weights(uri: str) -> str:
    """A local path for a weights file: local paths as they are; s3:// URIs are
    downloaded once per node into ``weights_cache_dir()`` (atomically, so
    concurrent workers never see half a file) and reused afterwards. The cache
    is keyed by URI: write a changed file under a new name."""
    if not storage.is_s3(uri):
        path = storage.normalize(uri)
        if not os.path.isfile(path):
            raise ConfigError(f"weights file {path} does not exist; give a local path or s3:// URI to a weights file")
        return path
    uri = storage.normalize(uri)
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    local = os.path.join(weights_cache_dir(), digest, storage.basename(uri))
    if os.path.isfile(local):
        log.info("weights %s: using the cached copy %s", uri, local)
        return local
    log.info("weights %s: downloading to %s", uri, local)
    return storage.download_file(uri, local)


def load_backbone_weights(
    backbone: keras.Model,
    weights: str,
    *,
    spec: ModelSpec | str | None = None,
    alpha: float | None = None,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Load a weights file (local path or s3:// URI) into a backbone.

    * ``.h5``: the original Keras applications notop files (the legacy HDF5
      format), loaded by layer order as keras.applications itself does.
    * ``.weights.h5``: Keras 3 weights of a backbone (``save_backbone_weights``)
      or of a whole imgrec model (its backbone part is used).
    * ``.keras``: a whole saved model; the weights of its backbone are used.

    Everything is checked before anything is assigned: a file that does not fit
    raises ``WeightsMismatchError`` naming the file, the backbone, alpha and the
    first mismatching layer. Nothing here touches the network for a local path."""
    spec = get_spec(spec) if spec is not None else None
    label = f"{spec.name if spec else backbone.name} (alpha={alpha})"
    path = fetch_weights(weights)
    with tempfile.TemporaryDirectory(prefix="imgrec-weights-") as tmp:
        meta: dict[str, Any] = {}
        if zipfile.is_zipfile(path):
            h5_path, meta = _unpack_keras_archive(path, tmp, weights)
        else:
            h5_path = path
        fmt, file_meta = _h5_format(h5_path, weights)
        meta = {**file_meta, **meta}
        source = _describe_source(meta)
        if fmt == "legacy":
            _load_legacy_h5(backbone, h5_path, weights, label, source)
        else:
            _load_keras3_h5(backbone, h5_path, weights, label, source, tmp)
    if spec is not None and image_size is not None:
        trained = meta.get("input_size") or _size_from_filename(weights)
        _warn_size(spec, tuple(image_size), tuple(trained) if trained else None, f"the weights in {weights}")
    if spec is not None and spec.imagenet_stddev_fix:
        _fix_efficientnet_normalization(backbone)


def _describe_source(meta: dict[str, Any]) -> str:
    if not meta.get("model"):
        return ""
    alpha = meta.get("alpha")
    return f"; the file holds {meta['model']} (alpha={alpha}) weights"


def _size_from_filename(uri: str) -> tuple[int, int] | None:
    # The published MobileNet files name their resolution: mobilenet_1_0_224_tf_no_top.h5.
    m = re.search(r"_(\d{2,3})_(?:tf_)?no_top", storage.basename(uri))
    return (int(m[1]), int(m[1])) if m else None


def _unpack_keras_archive(path: str, tmp: str, uri: str) -> tuple[str, dict[str, Any]]:
    """The weights file and what we can tell (model, alpha, input size) of a .keras archive."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if "model.weights.h5" not in names:
            raise ConfigError(f"{uri} is a zip without model.weights.h5; give a .keras model saved by Keras 3")
        zf.extract("model.weights.h5", tmp)
        config = json.loads(zf.read("config.json")) if "config.json" in names else {}
    meta: dict[str, Any] = {}
    model_cfg = config.get("config", {})
    spec_name, alpha = _parse_model_name(model_cfg.get("name", ""))
    if spec_name:
        meta.update(model=spec_name, alpha=alpha)
    for layer in model_cfg.get("layers", []):
        if layer.get("class_name") == "InputLayer":
            shape = layer.get("config", {}).get("batch_shape") or []
            if len(shape) == 4 and shape[1] and shape[2]:
                meta["input_size"] = (int(shape[1]), int(shape[2]))
            break
    return os.path.join(tmp, "model.weights.h5"), meta


def _h5_format(path: str, uri: str) -> tuple[str, dict[str, Any]]:
    """'legacy' (keras 2 / applications files) or 'keras3', judged by content, plus our metadata."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            meta = _read_meta(f.attrs)
            if any(str(k).startswith("layer_names") for k in f.attrs) or "model_weights" in f:
                return "legacy", meta
            if "layers" in f or "vars" in f:
                return "keras3", meta
    except OSError as exc:
        raise ConfigError(
            f"{uri} is not an HDF5 weights file or a .keras model ({exc}); "
            "give a .h5, .weights.h5 or .keras file"
        ) from None
    raise ConfigError(f"{uri}: an HDF5 file, but not Keras weights (neither legacy nor Keras 3 layout)")


_META_KEYS = ("imgrec_model", "imgrec_alpha", "imgrec_input_size")


def _read_meta(attrs) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if "imgrec_model" in attrs:
        meta["model"] = _text(attrs["imgrec_model"])
        alpha = float(attrs.get("imgrec_alpha", -1.0))
        meta["alpha"] = None if alpha < 0 else alpha
        size = attrs.get("imgrec_input_size")
        if size is not None and len(size) == 2:
            meta["input_size"] = (int(size[0]), int(size[1]))
    return meta


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _mismatch(uri: str, label: str, source: str, detail: str) -> WeightsMismatchError:
    return WeightsMismatchError(
        f"weights file {uri} does not fit backbone {label}{source}: {detail}. "
        "Use weights saved from the same backbone with the same alpha, or change the model/alpha to match the file"
    )


# --- legacy HDF5 (the published keras.applications notop files)


def _legacy_weight_list(layer) -> list:
    # The order keras' legacy HDF5 format uses (trainable first, then the rest).
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _load_legacy_h5(backbone: keras.Model, path: str, uri: str, label: str, source: str) -> None:
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        saved = []
        # keras' helper also reads attributes split into chunks (layer_names0, layer_names1, ...)
        # which large models need: HDF5 caps one attribute at 64 kB.
        read = legacy_h5_format.load_attributes_from_hdf5_group
        for name in [_text(n) for n in read(group, "layer_names")]:
            weight_names = [_text(n) for n in read(group[name], "weight_names")]
            if weight_names:
                saved.append((name, [tuple(group[name][w].shape) for w in weight_names]))
        expected = [(layer.name, [tuple(w.shape) for w in _legacy_weight_list(layer)]) for layer in backbone.layers]
        expected = [(name, shapes) for name, shapes in expected if shapes]
        # Loading is by order, as keras.applications does: compare layer by layer first.
        for k, ((name, shapes), (saved_name, saved_shapes)) in enumerate(zip(expected, saved, strict=False)):
            if shapes != saved_shapes:
                raise _mismatch(
                    uri, label, source,
                    f"weighted layer #{k} {name!r} expects shapes {shapes}, the file's layer {saved_name!r} has {saved_shapes}",
                )
        if len(expected) != len(saved):
            extra = saved[len(expected)][0] if len(saved) > len(expected) else expected[len(saved)][0]
            raise _mismatch(
                uri, label, source,
                f"the backbone has {len(expected)} layers with weights, the file {len(saved)} (first unmatched: {extra!r})",
            )
        legacy_h5_format.load_weights_from_hdf5_group(group, backbone)


# --- Keras 3 weights (.weights.h5, or inside .keras)


def _dataset_shapes(group) -> dict[str, tuple]:
    import h5py

    shapes: dict[str, tuple] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            shapes[name] = tuple(obj.shape)

    group.visititems(visit)
    return shapes


def _snake(name: str) -> str:
    # keras.src.utils.naming.to_snake_case: how Keras 3 names entries in weight files.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _entry_names(model: keras.Model) -> dict[str, str]:
    """File entry ('conv2d_3') -> layer name ('conv_pw_2'). Keras 3 addresses
    layers by class and position, not by name, which is what makes its files
    portable across sessions; this maps entries back for error messages."""
    used: dict[str, int] = {}
    entries: dict[str, str] = {}
    for layer in model.layers:
        base = _snake(type(layer).__name__)
        if base in used:
            used[base] += 1
            entry = f"{base}_{used[base]}"
        else:
            used[base] = 0
            entry = base
        entries[entry] = layer.name
    return entries


def _load_keras3_h5(backbone: keras.Model, path: str, uri: str, label: str, source: str, tmp: str) -> None:
    import h5py

    probe = os.path.join(tmp, "expected.weights.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone.save_weights(probe)
    with h5py.File(probe, "r") as f:
        expected = _dataset_shapes(f)
    with h5py.File(path, "r") as f:
        # A backbone's own file has its layers at the root; a whole imgrec model
        # keeps the backbone as its (only) nested Functional: layers/functional.
        nested = "layers/functional"
        candidates = [""]
        if nested in f and not any(k.startswith(nested + "/") for k in expected):
            candidates = [nested, ""]
        results = []
        for prefix in candidates:
            found = _dataset_shapes(f[prefix]) if prefix else _dataset_shapes(f)
            results.append((prefix, _first_difference(expected, found, backbone)))
        prefix, problem = next(((p, d) for p, d in results if d is None), results[0])
        if problem is not None:
            raise _mismatch(uri, label, source, problem)
        if prefix:
            sub = os.path.join(tmp, "backbone.weights.h5")
            with h5py.File(sub, "w") as out:
                for key in f[prefix]:
                    f.copy(f[prefix][key], out, name=key)
            path = sub
    with warnings.catch_warnings():
        # Keras 3.15 warns about internal containers of Functional models that it
        # never writes; the layout check above already proved the file complete.
        warnings.filterwarnings("ignore", message="Skipping nested container")
        backbone.load_weights(path)


def _first_difference(expected: dict[str, tuple], found: dict[str, tuple], backbone: keras.Model) -> str | None:
    entries = _entry_names(backbone)
    order = {entry: i for i, entry in enumerate(entries)}

    def where(key: str) -> str:
        parts = key.split("/")
        entry = parts[1] if len(parts) > 1 and parts[0] == "layers" else key
        return f"layer {entries[entry]!r} ({key})" if entry in entries else key

    def sort_key(key: str):
        parts = key.split("/")
        return (order.get(parts[1] if len(parts) > 1 else "", len(order)), key)

    for key in sorted(set(expected) | set(found), key=sort_key):
        if key not in found:
            return f"{where(key)} is missing from the file (backbone expects shape {expected[key]})"
        if key not in expected:
            return f"the file has {key} with shape {found[key]}, which this backbone does not have"
        if expected[key] != found[key]:
            return f"{where(key)}: backbone expects shape {expected[key]}, the file has {found[key]}"
    return None


def save_backbone_weights(model: keras.Model, path: str) -> str:
    """Write the backbone's weights of ``model`` to ``path`` (local or s3://):
    ``.weights.h5`` in the Keras 3 format, any other ``.h5`` in the legacy format
    of the published keras.applications files. The file records the registry
    name, alpha and input size, so a later mismatch error can say what it holds.
    Returns the normalised path."""
    import h5py

    backbone = get_backbone(model)
    spec_name, alpha = model_identity(model)
    uri = storage.normalize(path)
    if not uri.lower().endswith(".h5"):
        raise ConfigError(f"backbone weights go to a .weights.h5 (or legacy .h5) file, got {path!r}")
    with tempfile.TemporaryDirectory(prefix="imgrec-weights-") as tmp:
        local = os.path.join(tmp, storage.basename(uri))
        if uri.lower().endswith(".weights.h5"):
            backbone.save_weights(local)
        else:
            from keras.src.legacy.saving import legacy_h5_format

            with h5py.File(local, "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
        with h5py.File(local, "a") as f:
            if spec_name:
                f.attrs["imgrec_model"] = spec_name
                f.attrs["imgrec_alpha"] = -1.0 if alpha is None else float(alpha)
            f.attrs["imgrec_input_size"] = np.asarray(backbone.input_shape[1:3], dtype="int64")
        if storage.is_s3(uri):
            with open(local, "rb") as fh:
                storage.write_bytes(uri, fh.read())
        else:
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            shutil.move(local, uri)
    return uri


# --------------------------------------------------------------------------- the table


def _built_stats(spec: ModelSpec) -> tuple[float, int]:
    """Parameters (millions) and weighted-layer depth of a course/scratch model
    at its default size with 10 classes (2 for cats vs dogs)."""
    classes = 2 if spec.name == "seed_catsdogs" else 10
    model = build_model(ModelConfig(name=spec.name), classes, spec.input_size)
    depth = sum(1 for layer in model.layers if layer.weights)
    return model.count_params() / 1e6, depth


def models_table() -> list[dict[str, Any]]:
    """One row per registry entry, for ``imgrec models list`` and the docs.
    Backbone numbers are the published ImageNet ones; course/scratch numbers are
    counted from a build (10 classes; 2 for seed_catsdogs)."""
    return [dict(row) for row in _table_rows()]


@functools.lru_cache(maxsize=1)
def _table_rows() -> tuple[dict[str, Any], ...]:
    rows = []
    for spec in _REGISTRY.values():
        params_m, depth = spec.params_m, spec.depth
        if spec.kind != "backbone":
            params_m, depth = _built_stats(spec)
        rows.append(
            dict(
                name=spec.name,
                kind=spec.kind,
                params_m=params_m,
                depth=depth,
                size_mb=spec.size_mb,
                top1=spec.top1,
                top5=spec.top5,
                input_size=spec.input_size,
                min_size=spec.min_size,
                preprocessing=spec.preprocessing,
                alpha=spec.alpha,
                description=spec.description,
            )
        )
    return tuple(rows)


def format_models_table(rows: list[dict[str, Any]] | None = None) -> str:
    """``models_table()`` as aligned text."""
    rows = models_table() if rows is None else rows

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = ("name", "kind", "params", "depth", "size MB", "top-1", "top-5", "input", "preprocessing", "alpha")
    lines = [header]
    for r in rows:
        params = "-" if r["params_m"] is None else (f"{r['params_m']:.1f}M" if r["params_m"] >= 1 else f"{r['params_m'] * 1000:.0f}k")
        lines.append(
            (
                r["name"],
                r["kind"],
                params,
                num(r["depth"], "d"),
                num(r["size_mb"], "g"),
                num(r["top1"], ".1f"),
                num(r["top5"], ".1f"),
                f"{r['input_size'][0]}x{r['input_size'][1]}",
                r["preprocessing"],
                "yes" if r["alpha"] else "",
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    right = {2, 3, 4, 5, 6}
    out = []
    for line in lines:
        cells = [str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i]) for i, c in enumerate(line)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


__all__ = [
    "BACKBONE_NAME",
    "DEFAULT_MODEL",
    "ModelSpec",
    "ReverseChannels",
    "WeightsDownloadError",
    "WeightsMismatchError",
    "backbone_layer_count",
    "backbone_layers",
    "block_boundaries",
    "build_backbone",
    "build_model",
    "class_probabilities",
    "fetch_weights",
    "format_models_table",
    "frozen_depth",
    "get_backbone",
    "get_spec",
    "list_models",
    "load_backbone_weights",
    "loss_name",
    "model_identity",
    "model_name",
    "models_table",
    "preprocessing_layers",
    "save_backbone_weights",
    "set_freeze_depth",
    "weights_cache_dir",
]
