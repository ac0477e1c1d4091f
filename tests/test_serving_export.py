"""Serving exports (issue #17, ``imgrec export``): each format round-trips through its
own runtime (TensorFlow, onnxruntime, ai-edge-litert) on real CIFAR-10 photos decoded
by ``imgrec.decode``, within 1e-4 of the ``.keras`` model's probabilities; the sidecar
carries the classes, input and decode contract; bad input is refused before
TensorFlow loads and nothing is written.

Checkpoints are weightless builds written by imgrec's writer (as
``tests/test_plain_keras.py`` does), so no Ray and no downloads; the CLI case uses the
shared ``trained_run`` in S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CIFAR_DEV, needs_photos
from typer.testing import CliRunner

from imgrec import checkpoint as ckpt
from imgrec import serving, storage
from imgrec.cli import app
from imgrec.config import (
    EXPORT_FORMATS,
    ConfigError,
    DataConfig,
    DecodeConfig,
    ExportConfig,
    ModelConfig,
    TrainConfig,
    to_dict,
)
from imgrec.layout import ExportLayout
from imgrec.serving.runtimes import ServingFormat, missing_packages

REPO = Path(__file__).resolve().parents[1]
SIZE = (32, 32)
PHOTOS = os.path.join(CIFAR_DEV, "test") if CIFAR_DEV else None
needs_runtimes = pytest.mark.skipif(any(missing_packages(f) for f in serving.FORMATS.values()),
                                    reason=f"export runtimes not installed ({serving.INSTALL_HINT})")

# Every model family: (registry name, ModelConfig extras, classes, decode resize).
FAMILIES = [
    ("small_cnn", {}, 3, "stretch"),
    ("seed_cifar", {}, 2, "stretch"),  # course model, one sigmoid unit
    ("seed_catsdogs", {}, 2, "crop"),  # course model
    ("mobilenet", {"alpha": 0.25}, 3, "pad"),  # tf preprocessing
    ("resnet50", {}, 3, "stretch"),  # caffe preprocessing (frozen 1x1 convolution)
]


def _checkpoint(directory: Path, name: str = "small_cnn", extra: dict | None = None, classes: int = 3,
                resize: str = "stretch") -> str:
    """A checkpoint as the loop writes it (build_model, imgrec's writer, the manifest's
    decode and data settings), with initial weights."""
    from imgrec import models

    decode = DecodeConfig(image_size=SIZE, resize=resize)
    cfg = TrainConfig(data=DataConfig(uri=PHOTOS or "", decode=decode), model=ModelConfig(name=name, **(extra or {})))
    model = models.build_model(cfg.model, classes, SIZE)
    ckpt.write_checkpoint(model, str(directory), {
        "epoch": 1, "class_names": [f"c{i}" for i in range(classes)], "image_size": list(SIZE),
        "decode": to_dict(decode), "model": to_dict(cfg.model), "train_config": to_dict(cfg)})
    return str(directory)


def _export(model_uri: str, fmt: str, out: str, sample: int = 6):
    return serving.export_model(ExportConfig(model=model_uri, format=fmt, out=out, images=PHOTOS, sample=sample))


def _check_round_trip(result, fmt: str, classes: int, checkpoint_uri: str, sample: int) -> None:
    side = result.sidecar
    v = result.verification
    assert v["images"] == sample and v["max_abs_prob_diff"] <= 1e-4 and v["top1_agreement"] == 1.0, v
    assert side["export_format"] == fmt and side["model_file"] == serving.FORMATS[fmt].file_name
    assert side["class_names"] == [f"c{i}" for i in range(classes)] and side["image_size"] == list(SIZE)
    assert side["input"]["dtype"] == "uint8" and side["input"]["shape"] == [None, *SIZE, 3]
    assert side["source"]["checkpoint_uri"] == checkpoint_uri
    assert side["source"]["model_sha256"] == ckpt.read_manifest(checkpoint_uri)["model_sha256"]
    assert {"resize", "exif", "alpha"} <= set(side["decode"])
    written = json.loads(storage.read_text(storage.join(result.out, ExportLayout.sidecar.name)))
    assert written == side
    assert storage.exists(result.model_uri)


@needs_photos
@needs_runtimes
@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_small_cnn_export_round_trips_on_real_photos(tmp_path, fmt):
    source = _checkpoint(tmp_path / "ckpt")
    result = _export(source, fmt, str(tmp_path / "out"))
    print(f"small_cnn {fmt}: max |prob diff| {result.verification['max_abs_prob_diff']:.3g}, "
          f"top-1 agreement {result.verification['top1_agreement']}")
    _check_round_trip(result, fmt, 3, source, 6)


@needs_photos
@needs_runtimes
def test_a_bfloat16_checkpoint_is_exported_computing_in_float32(tmp_path):
    """``imgrec train``'s default precision on this CPU (mixed_bfloat16): every format exports
    the same float32 weights as a float32 network, and agrees with it as a float32 checkpoint does."""
    source = _checkpoint(tmp_path / "ckpt", "resnet_tiny", {"precision": "mixed_bfloat16"})
    model, _ = ckpt.load(source, compile=False)
    assert model.get_layer("stage2_conv").compute_dtype == "bfloat16"
    for fmt in EXPORT_FORMATS:
        result = _export(source, fmt, str(tmp_path / fmt))
        _check_round_trip(result, fmt, 3, source, 6)


@needs_photos
@needs_runtimes
def test_served_probabilities_are_imgrecs_own_on_a_photo(tmp_path):
    """What the export returns for one photo decoded by ``imgrec.decode`` is
    ``predict_one``'s answer for the same file (SavedModel through TensorFlow)."""
    from imgrec.decode import decode_image
    from imgrec.predict import decode_config, predict_one
    from imgrec.serving.runtimes import run

    source = _checkpoint(tmp_path / "ckpt")
    result = _export(source, "saved_model", str(tmp_path / "out"), sample=2)
    photo = serving.sample_uris(PHOTOS, 1)[0]
    pixels = decode_image(storage.read_bytes(photo), decode_config(ckpt.read_manifest(source)))
    served = run(serving.FORMATS["saved_model"], result.model_uri, pixels[None])[0]
    ours = dict(predict_one(photo, source, top_k=3))
    np.testing.assert_allclose(served, [ours[n] for n in result.sidecar["class_names"]], atol=1e-6)
    assert served.sum() == pytest.approx(1.0, abs=1e-5)


@needs_photos
@needs_runtimes
def test_files_that_do_not_decode_give_way_to_the_next_photos(tmp_path):
    """The sample is ``--sample`` images that decode: 20 empty files among 3 photos
    are skipped, not counted (before, a bad file in the sample shrank it)."""
    import shutil

    images = tmp_path / "images" / "c0"
    images.mkdir(parents=True)
    photos = serving.sample_uris(PHOTOS, 3)
    for i, photo in enumerate(photos):
        shutil.copy(photo, images / f"photo-{i}.jpg")
    for i in range(20):
        (images / f"empty-{i}.png").write_bytes(b"")
    source = _checkpoint(tmp_path / "ckpt")
    result = serving.export_model(ExportConfig(model=source, format="onnx", out=str(tmp_path / "out"),
                                               images=str(tmp_path / "images"), sample=3))
    assert result.verification["images"] == 3, result.verification
    assert result.verification["max_abs_prob_diff"] <= 1e-4
    # Nothing that decodes: a one-line error saying what to give, and nothing written.
    for photo in images.glob("photo-*.jpg"):
        photo.unlink()
    out = tmp_path / "nothing"
    with pytest.raises(ConfigError, match=r"images: none of the 20 listed files decodes; give --images a folder"):
        serving.export_model(ExportConfig(model=source, format="onnx", out=str(out), images=str(tmp_path / "images")))
    assert not out.exists()


@pytest.mark.slow
@needs_photos
@needs_runtimes
@pytest.mark.parametrize("family", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_round_trips_every_format(tmp_path, family):
    name, extra, classes, resize = family
    source = _checkpoint(tmp_path / "ckpt", name, extra, classes, resize)
    for fmt in EXPORT_FORMATS:
        result = _export(source, fmt, str(tmp_path / fmt), sample=16)
        v = result.verification
        print(f"MATRIX {name} {fmt}: max |prob diff| {v['max_abs_prob_diff']:.3g} top-1 agreement "
              f"{v['top1_agreement']:.4f} select_tf_ops {v.get('select_tf_ops')}")
        _check_round_trip(result, fmt, classes, source, 16)
        if fmt == "litert":
            assert v["select_tf_ops"] == [], v  # built-in LiteRT ops only


@needs_runtimes
def test_cli_exports_the_shared_run_from_s3_to_s3(trained_run, session_bucket):
    _, result = trained_run
    out = f"{session_bucket}/exports/shared-onnx"
    cli = CliRunner().invoke(app, ["export", result.run_uri, "--format", "onnx", "--out", out, "--sample", "8"])
    assert cli.exit_code == 0, cli.output
    assert "max |prob diff|" in cli.output and "top-1 agreement 1.0000" in cli.output, cli.output
    side = json.loads(storage.read_text(f"{out}/{ExportLayout.sidecar.name}"))
    assert side["source"]["checkpoint_uri"] == ckpt.resolve(result.run_uri).uri
    assert side["class_names"] == ckpt.resolve(result.run_uri).class_names
    assert side["verification"]["images"] == 8 and side["verification"]["max_abs_prob_diff"] <= 1e-4
    assert storage.exists(f"{out}/{ExportLayout.onnx.name}")
    again = CliRunner().invoke(app, ["export", result.run_uri, "--format", "onnx", "--out", out])
    assert again.exit_code == 2 and "already exists" in again.output and "--overwrite" in again.output


# --------------------------------------------------------------------------- bad input


def test_a_missing_runtime_names_the_extra():
    fmt = ServingFormat("onnx", "onnx", ("no_such_runtime_pkg",), "nothing")
    assert missing_packages(fmt) == ["no_such_runtime_pkg"]
    with pytest.raises(ConfigError, match="format"):
        ExportConfig(model="x", format="tflite", out="y")


def test_bad_input_is_refused_before_tensorflow_and_writes_nothing(tmp_path):
    source = _checkpoint(tmp_path / "ckpt")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    work = tmp_path / "work"
    work.mkdir()
    cases = {
        "unknown format": (["export", source, "--format", "tflite", "--out", str(work / "o")],
                           "format must be one of ('saved_model', 'onnx', 'litert')"),
        "model missing": (["export", "/nonexistent", "--format", "saved_model", "--out", str(work / "o")],
                          "model: /nonexistent: nothing there"),
        "output exists": (["export", source, "--format", "saved_model", "--out", str(taken)], "already exists"),
        "no images": (["export", source, "--format", "saved_model", "--out", str(work / "o"), "--images", str(work)],
                      "images: no image files"),
        "bad sample": (["export", source, "--format", "saved_model", "--out", str(work / "o"), "--sample", "0"],
                       "sample must be >= 1"),
    }
    spec = {"watch": [str(work), str(taken)], "cases": {n: {"cli": args} for n, (args, _) in cases.items()}}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "preflight_probe.py")], input=json.dumps(spec),
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = json.loads(proc.stdout)
    for name, (_, says) in cases.items():
        got = outcomes[name]
        assert got["crash"] is None, (name, got["crash"])
        assert got["exit_code"] == 2 and says in got["output"], (name, got["output"])
        assert len(got["output"].strip().splitlines()) == 1, (name, got["output"])
        assert got["heavy"] == [] and got["written"] == [], (name, got)
    assert (taken / "keep.txt").read_text() == "mine"
