"""imgrec.features: hand-made features + logistic regression, the course's
pre-CNN baseline. Measured on synthetic trees read through Ray Data, locally
and from the S3 endpoint; plots and reports written to both."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgrec import features, storage, synth
from imgrec.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _scene(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A noisy, gently graded background, like a photo's sky or wall."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 20, width, dtype=np.float32)[None, :, None]
    base = np.array([90, 120, 60], dtype=np.float32) + ramp + rng.normal(0, 6, (height, width, 1))
    return base.clip(0, 255).astype(np.uint8)


def _jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


# --------------------------------------------------------------------------- features (no Ray)


def test_object_extent_measures_a_drawn_rectangle():
    image = _scene()
    image[10:30, 7:41] = (200, 60, 60)  # 20 rows x 34 columns
    box = features.object_box(image)
    assert (box.top, box.left, box.height, box.width) == (10, 7, 20, 34)
    assert box.fraction == pytest.approx(20 * 34 / 64**2, abs=0.01)

    vec = dict(zip(features.FEATURE_NAMES, features.extract_features(image), strict=True))
    assert vec["object_height"] == pytest.approx(20 / 64)
    assert vec["object_width"] == pytest.approx(34 / 64)

    # After JPEG compression (what the pipeline really reads) within a pixel.
    jpeg = features.object_box(_jpeg_round_trip(image))
    assert abs(jpeg.height - 20) <= 1 and abs(jpeg.width - 34) <= 1

    # A plain scene has no object, not a noise-sized one.
    assert features.object_box(_scene(seed=1)).height == 0


def test_feature_vector_batch_and_names():
    images = np.stack([_scene(seed=s) for s in range(3)])
    images[1, 20:40, 20:40] = 255
    batch = features.extract_features_batch(images)
    assert batch.shape == (3, len(features.FEATURE_NAMES)) and batch.dtype == np.float32
    np.testing.assert_allclose(features.extract_features(images[1]), batch[1], rtol=1e-6)
    named = dict(zip(features.FEATURE_NAMES, batch[1], strict=True))
    assert named["brightness"] > dict(zip(features.FEATURE_NAMES, batch[0], strict=True))["brightness"]
    assert sum(named[f"hist_r{i}"] for i in range(features.HIST_BINS)) == pytest.approx(1.0)
    # A square's outline: horizontal and vertical gradients (diagonal only at its corners).
    assert named["orientation_000"] + named["orientation_090"] > 0.8

    assert features.resolve_features("course") == ["brightness", "object_height"]
    assert features.resolve_features(["extent", "brightness"])[:2] == ["brightness", "object_height"]
    with pytest.raises(features.FeatureError, match="unknown feature 'hue'"):
        features.resolve_features("brightness,hue")
    with pytest.raises(features.FeatureError, match=r"\(N, H, W, 3\)"):
        features.extract_features_batch(images[..., 0])


def test_verdict_is_honest_about_chance():
    separated, verdict, p = features.judge(0.52, 0.50, 100)
    assert not separated and p > 0.3
    assert verdict.startswith("hand-made features do not separate these classes: accuracy 0.52 vs chance 0.50")
    assert "try a CNN" in verdict
    assert features.judge(0.99, 0.5, 100)[0]
    partly = features.judge(0.75, 1 / 3, 300)
    assert partly[0] and "partly" in partly[1]
    # Few images: even a high accuracy can be luck.
    assert not features.judge(0.8, 0.5, 5)[0]


# --------------------------------------------------------------------------- whole trees (Ray Data)


@pytest.fixture(scope="module")
def noinfo_table(tmp_path_factory, ray_cluster):
    root = str(tmp_path_factory.mktemp("noinfo") / "data")
    synth.make_dataset(root, task="noinfo", classes=2, per_class=60, test_per_class=50, seed=3)
    return features.extract_tree_features(root)


def test_brightness_task_separates_on_s3_and_skips_a_corrupt_file(bucket, ray_cluster):
    data = f"{bucket}/animals"
    synth.make_dataset(data, task="brightness", classes=2, per_class=40, test_per_class=25, seed=1)
    storage.atomic_write(f"{data}/train/cat/broken.jpg", b"\xff\xd8 this is not a jpeg")

    result = features.train_baseline(data, out=f"{bucket}/baseline")

    assert result.split == "test" and result.counts == {"train": 80, "test": 50}
    assert result.accuracy > 0.95, result.summary()
    assert result.separated and result.verdict.startswith("hand-made features separate these classes")
    assert [b["path"] for b in result.bad_files] == [f"{data}/train/cat/broken.jpg"]
    assert result.plot["accuracy"] > 0.95  # brightness x object height alone, as in the course

    png = storage.read_bytes(f"{bucket}/baseline/decision_boundary.png")
    assert png.startswith(PNG_SIGNATURE)
    saved = json.loads(storage.read_text(f"{bucket}/baseline/baseline.json"))
    assert saved["accuracy"] == result.accuracy and saved["features"] == features.FEATURE_NAMES
    assert saved["bad_files"][0]["path"].endswith("broken.jpg")
    assert "decision_boundary.png" in storage.read_text(f"{bucket}/baseline/baseline.html")

    # The saved standardiser + weights reproduce the predictions.
    model = features.LinearClassifier.from_dict(saved["model"])
    np.testing.assert_allclose(model.weights, result.model.weights)


def test_noinfo_task_stays_near_chance(noinfo_table, tmp_path):
    out = tmp_path / "baseline"
    result = features.train_baseline(noinfo_table, features="brightness,extent", out=str(out))

    assert result.counts == {"train": 120, "test": 100}
    assert abs(result.accuracy - 0.5) < 0.15, result.summary()
    assert not result.separated
    assert "do not separate these classes" in result.verdict and "try a CNN" in result.verdict
    assert (out / "decision_boundary.png").read_bytes().startswith(PNG_SIGNATURE)
    assert json.loads((out / "baseline.json").read_text())["separated"] is False

    # The stripes' angle is the class: gradient orientations do see it.
    assert features.train_baseline(noinfo_table, features="orientation").accuracy > 0.9


def test_validation_split_without_a_test_tree(noinfo_table):
    train_only = features.FeatureTable(**{**vars(noinfo_table), "splits": np.full(len(noinfo_table), "train")})
    result = features.train_baseline(train_only, features="course", validation_split=0.25)
    assert result.split == "val" and result.counts["train"] + result.counts["val"] == 220
    with pytest.raises(features.FeatureError, match="nothing to measure accuracy on"):
        features.train_baseline(train_only, validation_split=0.0)


def test_cli_baseline_train_side_by_side_with_a_cnn_run(noinfo_table, tmp_path):
    run = tmp_path / "runs" / "cnn1"
    os.makedirs(run)
    (run / "evaluation.json").write_text(json.dumps({"accuracy": 0.91, "count": 100, "split": "test"}))
    out = tmp_path / "cli_out"

    result = CliRunner().invoke(
        app,
        ["baseline", "train", "--data", noinfo_table.source, "--features", "course",
         "--out", str(out), "--cnn-run", str(run)],
    )
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "CNN 0.9100" in result.output
    assert "do not separate these classes" in result.output
    assert (out / "baseline.html").exists()

    missing = CliRunner().invoke(app, ["baseline", "train", "--data", noinfo_table.source,
                                       "--cnn-run", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "nothing" in missing.output
