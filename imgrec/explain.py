"""Where a model looked: Grad-CAM (Selvaraju et al.) for any model with a convolution.

The last convolution is found from the model itself (``last_conv_layer``: every layer
in call order, nested sub-models such as a ``keras.applications`` backbone included;
the caffe preprocessing convolution is not a feature map and is skipped), so no
architecture is named here. ``grad_cam`` runs the model on the raw uint8 pixels it is
fed everywhere else, records that layer's output on a ``tf.GradientTape`` and weighs
its channels by the mean gradient of the class score (the output layer's logit: the
softmax is switched off for the pass, so a confident prediction still has a gradient).
Maps are resized to the input's height and width and scaled to [0, 1] per image.

``explain_image`` is ``imgrec explain``: one image, its top-k and the overlay PNG.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from imgrec import checkpoint as ckpt
from imgrec import models, storage
from imgrec.decode import decode_image
from imgrec.gallery import png_bytes
from imgrec.models import class_probabilities
from imgrec.predict.actors import decode_config

HEAT_ALPHA = 0.45  # the heatmap's share of an overlay pixel


def _conv_types():
    import keras

    L = keras.layers
    return (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D, L.Conv2DTranspose)


def _walk(layer):
    """Every layer under ``layer`` in its own order, sub-models entered where they sit."""
    for child in getattr(layer, "layers", []):
        yield child
        yield from _walk(child)


def last_conv_layer(model):
    """The model's last 2-D convolution (searched through nested sub-models), or None."""
    from imgrec.models.layers import CAFFE_LAYER

    convs = [layer for layer in _walk(model) if isinstance(layer, _conv_types()) and layer.name != CAFFE_LAYER]
    return convs[-1] if convs else None


@contextlib.contextmanager
def _recording(layer, tape, into: dict):
    """While inside: ``layer``'s output is watched by ``tape`` and kept in ``into["maps"]``."""
    original = layer.call

    def call(*args, **kwargs):
        out = original(*args, **kwargs)
        tape.watch(out)
        into["maps"] = out
        return out

    layer.call = call
    try:
        yield
    finally:
        del layer.call  # back to the class's method


@contextlib.contextmanager
def _logits(model):
    """The output layer without its softmax/sigmoid while inside; yields whether it was switched."""
    import keras

    out = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(out, "activation", None)
    if activation not in (keras.activations.softmax, keras.activations.sigmoid):
        yield False
        return
    out.activation = keras.activations.linear
    try:
        yield activation is keras.activations.sigmoid
    finally:
        out.activation = activation


def grad_cam(model, images: np.ndarray, class_index=None) -> np.ndarray | None:
    """(N, H, W) float32 maps in [0, 1] for uint8 (N, H, W, 3) ``images``: where the
    evidence for ``class_index`` (per image, or one for all; default: the predicted
    class) lies. None when the model has no convolution. A mixed-precision model is run as its
    float32 copy (``models.as_float32``)."""
    import tensorflow as tf

    # Gradients in float32 whatever the checkpoint computes in: bfloat16 keeps 8 bits of mantissa.
    model = models.as_float32(model)
    layer = last_conv_layer(model)
    if layer is None:
        return None
    images = np.asarray(images, np.uint8)
    recorded: dict = {}
    with _logits(model) as sigmoid, tf.GradientTape() as tape, _recording(layer, tape, recorded):
        scores = model(tf.convert_to_tensor(images), training=False)
        if sigmoid:  # one unit: class 1's logit; class 0's is its negative
            scores = tf.concat([-scores, scores], axis=1)
        if class_index is None:
            chosen = tf.argmax(scores, axis=1, output_type=tf.int32)
        else:
            chosen = tf.broadcast_to(tf.cast(class_index, tf.int32), [len(images)])
        score = tf.gather(scores, chosen, axis=1, batch_dims=1)
    maps = recorded["maps"]
    grads = tape.gradient(score, maps)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(tf.cast(weights * maps, tf.float32), axis=-1))
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    resized = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
    return np.clip(resized.numpy(), 0.0, 1.0).astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """uint8 RGB: the image under its heatmap (jet colours, red where the heat is)."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    return np.clip((1 - HEAT_ALPHA) * image.astype(np.float32) + HEAT_ALPHA * heat, 0, 255).astype(np.uint8)


def overlays(model_uri: str, images: np.ndarray, class_index: np.ndarray) -> list[np.ndarray] | None:
    """Overlays for a batch of decoded images, each for its given class; None for a model
    without a convolution. Run in a Ray task by the evaluation: TensorFlow stays out of
    the driver."""
    model = models.as_float32(ckpt.load(model_uri, compile=False)[0])  # once, not per batch in grad_cam
    maps = []
    for start in range(0, len(images), 32):
        cams = grad_cam(model, images[start:start + 32], class_index[start:start + 32])
        if cams is None:
            return None
        maps.extend(cams)
    return [overlay(im, cam) for im, cam in zip(images, maps, strict=True)]


@dataclass
class Explanation:
    image_uri: str
    checkpoint: str
    top: list[tuple[str, float]]  # (class, probability), most likely first
    cam: np.ndarray  # (H, W) in [0, 1], for the top class
    png: bytes  # the image beside its overlay

    def __str__(self) -> str:
        width = max(len(n) for n, _ in self.top)
        return "\n".join([f"image:      {self.image_uri}", f"model:      {self.checkpoint}",
                          f"heatmap for: {self.top[0][0]}"]
                         + [f"  {n:<{width}}  {p:.4f}  {'#' * round(30 * p)}" for n, p in self.top])


def explain_image(image_uri: str, model_uri: str, top_k: int = 5) -> Explanation:
    """Grad-CAM of one image (local or s3://) for its predicted class, decoded as the
    checkpoint's manifest says; the PNG shows the image and its overlay side by side."""
    model, manifest = ckpt.load(model_uri, compile=False)
    image = decode_image(storage.read_bytes(image_uri), decode_config(manifest))
    probs = class_probabilities(np.asarray(model.predict(image[None], verbose=0)))[0]
    names = manifest["class_names"]
    top = [(names[i], float(probs[i])) for i in np.argsort(-probs, kind="stable")[:top_k]]
    cams = grad_cam(model, image[None], int(np.argmax(probs)))
    if cams is None:
        raise ckpt.CheckpointError(f"{manifest['checkpoint_uri']}: the model has no convolution layer, "
                                   "so Grad-CAM has no feature map to weigh; explain works on convolutional models")
    side = np.concatenate([image, np.full((image.shape[0], 4, 3), 255, np.uint8), overlay(image, cams[0])], axis=1)
    return Explanation(storage.normalize(image_uri), manifest["checkpoint_uri"], top, cams[0],
                       png_bytes(_enlarged(side)))


def _enlarged(pixels: np.ndarray, min_height: int = 224) -> np.ndarray:
    """Small inputs (32x32) scaled up by a whole factor so the PNG can be seen."""
    factor = max(1, min_height // pixels.shape[0])
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1) if factor > 1 else pixels


__all__ = ["Explanation", "explain_image", "grad_cam", "last_conv_layer", "overlay", "overlays"]
