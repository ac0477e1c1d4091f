"""Extending imgrec from outside the package, each in the one place
``docs/architecture.md`` names ("to add X, touch Y"), then using it for real.

So far: a backbone from anywhere is one registry entry (and the registry looks
names up without importing Keras or TensorFlow); a prediction output column is
one ``Column``."""

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
    models.registry.unregister(spec.name)  # the registry is process-wide


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


def _entropy(scored) -> list:
    """Shannon entropy of each row's class probabilities (null where the file did not decode)."""
    p = np.clip(scored.probs, 1e-12, 1.0)
    return scored.good((-(p * np.log(p)).sum(axis=1)).tolist())


def test_a_prediction_column_is_one_entry(ray_cluster, tmp_path):
    """An output column added from outside is computed by the model actors on
    the cluster, written into every part with its type, and recorded in
    ``_job.json``, so an output written without it is refused on resume."""
    import keras
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from ray import cloudpickle

    from imgrec import predict
    from imgrec.checkpoint import write_checkpoint
    from imgrec.config import DecodeConfig, PredictConfig, to_dict

    classes, size = ["dark", "light"], (32, 32)
    tree = tmp_path / "images"
    for k, name in enumerate(classes):
        (tree / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (200 * k + 10 * i,) * 3).save(tree / name / f"{i}.png")
    (tree / "dark" / "broken.png").write_bytes(b"not a png")
    keras.utils.set_random_seed(0)
    model = models.build_model(ModelConfig(name="small_cnn"), 2, size)
    run = tmp_path / "run"
    write_checkpoint(model, str(run / "checkpoint_000001"), {
        "class_names": classes, "image_size": list(size), "decode": to_dict(DecodeConfig(image_size=size)),
        "model": to_dict(ModelConfig(name="small_cnn")), "epoch": 1, "metrics": {"val_accuracy": 0.5}})

    before = tmp_path / "before"  # written without the column
    predict.predict_bucket(PredictConfig(model=str(run), input=str(tree), output=str(before)), progress=False)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors unpickle _entropy from here
    predict.add_column(predict.Column("entropy", pa.float32, "model", _entropy, "uncertainty, nats"))
    try:
        out = tmp_path / "out"
        predict.predict_bucket(PredictConfig(model=str(run), input=str(tree), output=str(out)), progress=False)
        frame = predict.read_predictions(str(out)).set_index("path")
        assert frame["error"].notna().sum() == 1  # broken.png
        probs = predict.read_predictions(str(before)).set_index("path")
        assert frame.columns[-1] == "entropy"
        for path, row in frame.iterrows():
            if isinstance(row["error"], str):  # pandas shows a null as None or NaN
                assert row["entropy"] is None or np.isnan(row["entropy"]), path
                continue
            p = probs.loc[path, "confidence"]  # two classes: the other one has 1 - p
            assert row["entropy"] == pytest.approx(-(p * np.log(p) + (1 - p) * np.log(1 - p)), rel=1e-4), path
        part = next((out / predict.PREDICTIONS_DIR).iterdir())
        assert pq.read_schema(part).field("entropy").type == pa.float32()
        with pytest.raises(predict.PredictError, match="other output columns"):
            predict.predict_bucket(PredictConfig(model=str(run), input=str(tree), output=str(before)),
                                   progress=False)
    finally:
        predict.remove_column("entropy")
