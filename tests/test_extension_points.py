"""Extending imgrec from outside the package, each in the one place
``docs/architecture.md`` names ("to add X, touch Y"), then using it for real.

So far: a backbone from anywhere is one registry entry (and the registry looks
names up without importing Keras or TensorFlow); a prediction output column is
one ``Column``; an augmentation op is one class plus its config field; a file in
a run folder is one ``RunLayout.add_file`` entry plus the hook that writes it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from imgrec import augment, models
from imgrec.cli import app
from imgrec.config import AugmentConfig, ConfigError, ModelConfig, from_dict, to_dict
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


@dataclasses.dataclass
class ColourCastConfig(AugmentConfig):
    """The one config field an op from outside adds."""

    channel_gain: float = 0.0  # each channel of each image x U(1-g, 1+g)


class ChannelGain(augment.PixelOp):
    """An op defined outside imgrec: a per-image, per-channel gain (a colour cast)."""

    fields = ("channel_gain",)
    params = {"channel_gains": 1.0}  # drawn as (n, 3)
    presets = {"course": {"channel_gain": 0.1}}
    options = (augment.CliOption("channel_gain", "Per-channel gain spread g: U(1-g, 1+g)."),)

    def draw(self, cfg, rng, n, height, width):
        return {"channel_gains": rng.uniform(1 - cfg.channel_gain, 1 + cfg.channel_gain, (n, 3))}

    def gain(self, values, n):
        return values["channel_gains"]


def _times(images: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """uint8 pixels x per-image, per-channel gains, clipped and rounded half up."""
    out = np.clip(images.astype(np.float32) * gains.astype(np.float32)[:, None, None, :], 0, 255)
    return (out + 0.5).astype(np.uint8)


def test_an_augmentation_op_is_one_class_and_one_config_field():
    """Registered, the op is drawn for a config that has its field, applied alone
    or folded into the warp's blend, named by ``describe``, part of a preset and
    of the preview grid; a base ``AugmentConfig`` and the CLI (which starts from
    one) never see it; unregistering restores the op list."""
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 20, 3), dtype=np.uint8)
    images[0, :4] = 250  # gains > 1 clip here
    before, course = augment.ops(), AugmentConfig.preset("course")
    cfg = ColourCastConfig(channel_gain=0.2)
    with augment.registered(ChannelGain):
        assert [op.name for op in augment.ops()][-1] == "ChannelGain" and augment.ops(AugmentConfig) == before
        assert cfg.enabled and not ColourCastConfig().enabled
        assert augment.augment_batch(images, ColourCastConfig()) is images  # the identity config

        out = augment.augment_batch(images, cfg, np.random.default_rng(3))
        gains = np.random.default_rng(3).uniform(0.8, 1.2, (6, 3))  # no other op is active: only its draw
        np.testing.assert_array_equal(out, _times(images, gains))
        assert (out[0, :4] == 255).any() and not (out[0, :4] == 250).all()

        # With a warp (an integer shift: exact), the gains are folded into its blend.
        params = augment.random_transforms(6, cfg, np.random.default_rng(3), 16, 20)
        params.shift_x = np.full(6, 3.0)
        warped = augment.apply_transforms(images, params, cfg)
        np.testing.assert_array_equal(warped[:, :, 3:], _times(images, gains)[:, :, :-3])

        assert augment.describe(cfg) == "channel_gain=0.2"
        assert ColourCastConfig.preset("course") == ColourCastConfig(**vars(course), channel_gain=0.1)
        assert AugmentConfig.preset("course") == course  # a base config has no such field

        fig = augment.preview_grid(images[1], cfg, n=3, seed=5)
        expected = augment.augment_batch(np.repeat(images[1:2], 3, axis=0), cfg, np.random.default_rng(5))
        for ax, sample in zip(fig.axes, expected, strict=True):
            np.testing.assert_array_equal(ax.images[0].get_array(), sample)

        seeded = ColourCastConfig(channel_gain=0.2, seed=1)
        batch = {"image": images, "path": np.array([f"p{i}" for i in range(6)])}
        assert not np.array_equal(augment.Augmenter(seeded)(batch)["image"], images)
        assert from_dict(ColourCastConfig, to_dict(cfg)) == cfg
        with pytest.raises(ConfigError, match="channel_gain"):
            from_dict(AugmentConfig, to_dict(cfg))

        # The preview command's options are generated from the op list (the ops a base config has).
        preview = get_command(app).commands["augment"].commands["preview"]
        flags = {opt for param in preview.params for opt in param.opts}
        wanted = {o.flag for op in augment.ops(AugmentConfig) for o in op.options}
        assert wanted <= flags and "--zoom-range" in wanted and "--channel-gain" not in flags
        result = CliRunner().invoke(app, ["augment", "preview", "--help"])
        assert result.exit_code == 0 and "--fill-mode" in result.output

    assert augment.ops() == before
    assert "channel_gains" not in augment.TransformParams.identity(2).values


def test_a_run_folder_file_is_one_layout_entry_and_a_hook(trained_run):
    """The shared run carried ``conftest.RunSummary``: ``RunLayout.add_file`` from
    outside imgrec plus a hook; rank 0 wrote ``summary.json`` into the run folder
    (on S3, after a worker-group restart) from the restored and new epochs."""
    import json

    from imgrec import storage
    from imgrec.hooks import read_history
    from imgrec.layout import RunLayout

    _, result = trained_run
    run = RunLayout(result.run_uri)
    assert RunLayout.summary.name == "summary.json" and run.summary == f"{result.run_uri}/summary.json"
    summary = json.loads(storage.read_text(run.summary))
    epochs = read_history(result.run_uri)["epochs"]
    best = max(epochs, key=lambda h: h["val_accuracy"])
    assert summary == {"epochs": len(epochs), "best_epoch": best["epoch"],
                       "best_val_accuracy": pytest.approx(best["val_accuracy"])}
    RunLayout.add_file("summary", "summary.json")  # again: a no-op
    with pytest.raises(ValueError, match="already has 'history'"):
        RunLayout.add_file("history", "other.json")
    with pytest.raises(ValueError, match="a file named 'report.html'"):
        RunLayout.add_file("page", "report.html")
