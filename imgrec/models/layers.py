"""The in-model preprocessing: built-in Keras layers turning uint8 RGB pixels into
what each network expects (never ``Lambda``: Keras' safe mode refuses those).

Only built-in layers, so a checkpoint loads with a bare
``keras.models.load_model(path)`` where imgrec is not installed. Importing this
module still registers the legacy ``ReverseChannels`` layer, which checkpoints
written before the caffe mode became a frozen 1x1 convolution contain
(``imgrec.checkpoint`` imports it for those).
"""

from __future__ import annotations

import os

import numpy as np

from imgrec import console

os.environ.update(console.quiet_env())

import keras  # noqa: E402  (after the TF log level, so importing us stays quiet)

from imgrec.models.registry import get_spec  # noqa: E402

# The statistics keras.applications.imagenet_utils uses (RGB order for torch, BGR for caffe).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="imgrec")
class ReverseChannels(keras.layers.Layer):
    """RGB -> BGR (and back), as float: caffe-style backbones were trained on BGR.

    Legacy: new models use ``caffe_layer()`` (built-in layers only). Kept, under
    its registered name ``imgrec>ReverseChannels``, so checkpoints written with
    it still load (with imgrec importable)."""

    def call(self, inputs):
        return keras.ops.flip(keras.ops.cast(inputs, self.compute_dtype), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


CAFFE_LAYER = "caffe_bgr_mean"  # a convolution that is preprocessing, not a feature map (Grad-CAM skips it)


def caffe_layer(name: str = CAFFE_LAYER) -> keras.layers.Layer:
    """RGB -> BGR and minus the ImageNet BGR mean, as one frozen 1x1 convolution on
    float pixels: its kernel is the channel permutation (exact: products with 0
    and 1), its bias the negated mean (the same float32 subtraction as
    ``Normalization(mean, variance=1)``). The values live in ``Constant``
    initializers too, so a rebuild from the config (``clone_model``) is exact."""
    kernel = np.zeros((1, 1, 3, 3), "float32")
    for i in range(3):
        kernel[0, 0, i, 2 - i] = 1.0  # input channel i (RGB) -> output channel 2 - i (BGR)
    return keras.layers.Conv2D(
        3, 1, use_bias=True, name=name, trainable=False,
        kernel_initializer=keras.initializers.Constant(kernel.tolist()),
        bias_initializer=keras.initializers.Constant([-m for m in CAFFE_MEAN_BGR]),
    )


def preprocessing_layers(name: str) -> list[keras.layers.Layer]:
    """Fresh built-in Keras layers turning uint8 RGB pixels into what the network
    expects, matching ``keras.applications.<module>.preprocess_input`` exactly (to
    float32 rounding); none has a trainable weight:

    * ``rescale_0_1``: x / 255 (the course's ``rescale=1./255``)
    * ``tf``: x / 127.5 - 1
    * ``torch``: (x / 255 - ImageNet mean) / ImageNet std, per RGB channel
    * ``caffe``: a cast to float, then RGB -> BGR minus the ImageNet BGR mean
      (no scaling) as a frozen 1x1 convolution (``caffe_layer``)
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
        # The convolution needs float inputs; Rescaling(1.0) is an exact cast of uint8.
        return [L.Rescaling(1.0, name="to_float"), caffe_layer()]
    # "none": Rescaling(1.0) is an exact, serializable cast of uint8 to float.
    return [L.Rescaling(1.0, name="to_float")]


# --------------------------------------------------------------------------- outputs


def fix_efficientnet_normalization(backbone: keras.Model) -> None:
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
