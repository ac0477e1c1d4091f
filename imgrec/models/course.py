"""The course's networks and the small CNNs for training from scratch (``small_cnn``,
``resnet_small``, ``resnet_tiny``: the ``imgrec train`` default).

Each body is ``(x, cfg) -> features``: the layers between the in-model pixel
scaling and the output layer (``imgrec.models.build`` adds both). Keras is
imported when a body is built, not when the entries are registered.
"""

from __future__ import annotations

from imgrec.config import ModelConfig
from imgrec.models.registry import ModelSpec, register


def seed_cifar(x, cfg: ModelConfig):
    """The course's CIFAR-10 network (without its output layer)."""
    from keras import layers as L

    x = L.Conv2D(64, (3, 3), activation="relu", name="conv1")(x)
    x = L.MaxPooling2D((2, 2), name="pool1")(x)
    x = L.Conv2D(32, (3, 3), activation="relu", name="conv2")(x)
    x = L.Flatten(name="flatten")(x)
    return L.Dense(80, activation="relu", name="dense1")(x)


def seed_catsdogs(x, cfg: ModelConfig):
    """The course's cats-vs-dogs network (without its output layer)."""
    from keras import layers as L

    x = L.Conv2D(32, (3, 3), activation="relu", name="conv1")(x)
    x = L.MaxPooling2D((2, 2), name="pool1")(x)
    x = L.Conv2D(64, (3, 3), activation="relu", name="conv2")(x)
    x = L.MaxPooling2D((2, 2), name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    return L.Dense(512, activation="relu", name="dense1")(x)


def _conv_bn_relu(x, filters: int, name: str, strides: int = 1):
    from keras import layers as L

    # No conv bias: the batch norm right after it has its own shift.
    x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # momentum 0.9, not Keras' 0.99: short runs (tens of steps, as in demos and
    # sweeps) otherwise evaluate with moving statistics still near their init.
    x = L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def small_cnn(x, cfg: ModelConfig):
    """A VGG-style CNN with batch norm and global average pooling, ~140k parameters.

    Sized for training from scratch on 2 CPU cores: at 96 px and above the stem
    convolution has stride 2, so 128x128 input costs what 64x64 does (~0.12 G
    multiply-adds per image, forward)."""
    from keras import layers as L

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


# resnet_small's stage widths: each stage is a conv + 2x2 max pool, then one residual
# block of two convolutions (the ResNet-9 / airbench layout). Sized on cifar10-dev for
# a 2-core CPU budget: ~70M multiply-adds per 32x32 image, ~0.6x small_cnn's at its 64x64
# (the old default); (32, 64, 128) scored 0.553 against 0.577 (one seed; benchmarks/README.md).
RESNET_SMALL_WIDTHS = (48, 96, 192)
RESNET_SMALL_STEM = 32


def _residual(x, filters: int, name: str):
    """``x + conv-bn-relu(conv-bn-relu(x))``: built-in layers only (Add)."""
    from keras import layers as L

    y = _conv_bn_relu(x, filters, f"{name}_a")
    y = _conv_bn_relu(y, filters, f"{name}_b")
    return L.Add(name=f"{name}_add")([x, y])


def resnet_small(x, cfg: ModelConfig):
    """A small residual CNN (ResNet-9 layout): stem, three stages of conv + pool +
    residual block, global average pooling; dropout comes from the lean head.
    Stride-2 stem at 96 px and above, so large inputs cost what half their size does."""
    from keras import layers as L

    stem_stride = 2 if min(x.shape[1], x.shape[2]) >= 96 else 1
    x = _conv_bn_relu(x, RESNET_SMALL_STEM, "stem", strides=stem_stride)
    for i, width in enumerate(RESNET_SMALL_WIDTHS, start=1):
        x = _conv_bn_relu(x, width, f"stage{i}")
        x = L.MaxPooling2D(2, name=f"stage{i}_pool")(x)
        x = _residual(x, width, f"stage{i}_res")
    return L.GlobalAveragePooling2D(name="avg_pool")(x)


# resnet_tiny's widths: at 32x32 it costs what the course CNN does (5.5M multiply-adds per image
# against 5.1M; 88M at 128x128). Screened on cifar10-dev (benchmarks/README.md, "quality"): one
# residual block, in stage 2, scored as well as one per stage at a third of the cost; widths
# (48, 96, 192) twice the cost for the same test accuracy through the CLI.
RESNET_TINY_WIDTHS = (32, 64, 128)
RESNET_TINY_STEM = 24


def resnet_tiny(x, cfg: ModelConfig):
    """resnet_small cut to the course CNN's compute: a stride-2 stem at every input size, then
    conv + pool, conv + pool + one residual block, and a last conv before global average pooling;
    dropout comes from the lean head. ~0.18M parameters."""
    from keras import layers as L

    x = _conv_bn_relu(x, RESNET_TINY_STEM, "stem", strides=2)
    first, middle, last = RESNET_TINY_WIDTHS
    x = _conv_bn_relu(x, first, "stage1")
    x = L.MaxPooling2D(2, name="stage1_pool")(x)
    x = _conv_bn_relu(x, middle, "stage2")
    x = L.MaxPooling2D(2, name="stage2_pool")(x)
    x = _residual(x, middle, "stage2_res")
    x = _conv_bn_relu(x, last, "stage3")
    return L.GlobalAveragePooling2D(name="avg_pool")(x)


register(ModelSpec("seed_cifar", "course", (32, 32), 8, "rescale_0_1",
                   "the course's CIFAR-10 CNN (Conv64-Pool-Conv32-Dense80)", builder=seed_cifar))
register(ModelSpec("seed_catsdogs", "course", (128, 128), 10, "rescale_0_1",
                   "the course's cats-vs-dogs CNN (Conv32-Pool-Conv64-Pool-Dense512)", builder=seed_catsdogs))
register(ModelSpec("small_cnn", "scratch", (64, 64), 16, "rescale_0_1",
                   "VGG-style CNN with batch norm + global average pooling, ~140k params (the library default)",
                   builder=small_cnn))
register(ModelSpec("resnet_small", "scratch", (64, 64), 16, "rescale_0_1",
                   "small residual CNN (ResNet-9 layout, BN, global pooling, dropout), ~1.1M params",
                   builder=resnet_small))
register(ModelSpec("resnet_tiny", "scratch", (64, 64), 16, "rescale_0_1",
                   "resnet_small at the course CNN's compute: stride-2 stem, one residual block, ~0.18M "
                   "params (the train command's default)", builder=resnet_tiny))
