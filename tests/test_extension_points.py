"""Extending imgrec from outside the package, each in the one place
``docs/architecture.md`` names ("to add X, touch Y"), then using it for real.

So far: a backbone from anywhere is one registry entry. The model registry
looks names up without importing Keras or TensorFlow."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from imgrec import models
from imgrec.config import ModelConfig
from imgrec.models import ModelSpec


def test_the_registry_imports_without_keras_or_tensorflow():
    """Checking a model name (the CLI, the training driver before Ray starts) costs no TensorFlow import."""
    code = """
import sys
from imgrec import models
from imgrec.config import ModelConfig
assert models.get_spec("MobileNetV2").name == "mobilenet_v2"
assert [s.name for s in models.list_models("mobilenet_v3_*")][:2] == ["mobilenet_v3_small", "mobilenet_v3_large"]
models.registry.check_model_config(models.get_spec("mobilenet"), ModelConfig(name="mobilenet", alpha=0.5))
import imgrec.train, imgrec.cli
loaded = sorted({"keras", "tensorflow"} & set(sys.modules))
assert not loaded, loaded
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _tiny_backbone(input_shape, weights=None, width=8):
    """A backbone defined outside imgrec: two conv blocks, no top."""
    import keras

    if weights is not None:
        raise ValueError("tiny_ext has no published weights")
    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Conv2D(width, 3, padding="same", name="blk1_conv")(inputs)
    x = L.ReLU(name="blk1_relu")(x)
    x = L.Conv2D(2 * width, 3, strides=2, padding="same", name="blk2_conv")(x)
    x = L.ReLU(name="blk2_relu")(x)
    return keras.Model(inputs, x, name="tiny_ext")


@pytest.fixture
def tiny_backbone():
    spec = models.register(ModelSpec(
        name="tiny_ext", kind="backbone", input_size=(32, 32), min_size=8, preprocessing="tf",
        factory=_tiny_backbone, kwargs=(("width", 4),), blocks=r":blk\d_relu$", description="a test backbone"))
    yield spec
    del models.registry._REGISTRY[spec.name]  # the registry is process-wide
    models.registry._aliases.cache = None


def test_a_backbone_from_anywhere_is_one_entry(tiny_backbone):
    """Registered, it is listed, built with its preprocessing and a new head,
    frozen by depth and by block, and trained; a name clash is refused."""
    import keras

    assert [s.name for s in models.list_models("tiny*")] == ["tiny_ext"]
    assert models.get_spec("TINY-EXT") is tiny_backbone
    with pytest.raises(ValueError, match="already registered"):
        models.register(tiny_backbone)

    assert models.block_boundaries("tiny_ext") == [2]  # after blk1_relu; the last block is "all"
    cfg = ModelConfig(name="tiny_ext", freeze_depth=2)
    model = models.build_model(cfg, num_classes=3, image_size=(24, 24))
    assert model.get_layer("rescale_tf") is not None  # its preprocessing, inside the model
    assert models.frozen_depth(model) == 2 and models.backbone_layer_count(model) == 4
    assert models.get_backbone(model).get_layer("blk2_conv").filters == 8  # the entry's kwargs reached it
    model.compile(optimizer="adam", loss=models.loss_name(3))
    x = np.random.default_rng(0).integers(0, 256, (8, 24, 24, 3), dtype=np.uint8)
    frozen = models.get_backbone(model).get_layer("blk1_conv").get_weights()[0].copy()
    model.fit(x, np.arange(8) % 3, epochs=1, verbose=0)
    assert np.array_equal(models.get_backbone(model).get_layer("blk1_conv").get_weights()[0], frozen)
    assert isinstance(model, keras.Model) and model.output_shape == (None, 3)

    with pytest.raises(Exception, match="no published weights"):  # the factory's own words, in a ConfigError
        models.build_model(dataclasses.replace(cfg, weights="imagenet"), num_classes=3, image_size=(32, 32))
