"""checkpoint.py verifies the model file's SHA-256 on every load: a tampered,
corrupt or half-uploaded checkpoint is refused with a message naming it, a run
falls back to its next best checkpoint with a warning, and the node cache never
serves (or keeps) a copy that does not verify. Real small Keras models, real
files, the real S3 endpoint; no Ray Train."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.config import DecodeConfig, ModelConfig, to_dict

SIZE = (16, 16)
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """(folder, model): a small_cnn written through the checkpoint contract."""
    import keras

    from imgrec.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(name="small_cnn"), num_classes=len(CLASSES), image_size=SIZE)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint_000001"
    ckpt.write_checkpoint(model, str(folder), _manifest(epoch=1, val_accuracy=0.5))
    return str(folder), model


def _manifest(epoch: int, val_accuracy: float) -> dict:
    return {
        "class_names": CLASSES,
        "image_size": list(SIZE),
        "decode": to_dict(DecodeConfig(image_size=SIZE)),
        "model": to_dict(ModelConfig(name="small_cnn")),
        "epoch": epoch,
        "metrics": {"val_accuracy": val_accuracy},
    }


def _copy(src: str, dest, *, epoch: int = 1, val_accuracy: float = 0.5) -> str:
    """A copy of a checkpoint folder with its own epoch and score in the manifest."""
    shutil.copytree(src, dest)
    path = os.path.join(dest, ckpt.MANIFEST_FILE)
    manifest = json.loads(open(path).read())
    manifest.update(epoch=epoch, metrics={"val_accuracy": val_accuracy})
    open(path, "w").write(json.dumps(manifest))
    return str(dest)


def _flip(folder: str, n_bytes: int) -> None:
    """Invert ``n_bytes`` bytes in the middle of model.keras: same size, other content."""
    path = os.path.join(folder, ckpt.MODEL_FILE)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + n_bytes] = bytes(b ^ 0xFF for b in data[middle : middle + n_bytes])
    open(path, "wb").write(bytes(data))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGREC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same_predictions(model, other) -> bool:
    x = np.random.default_rng(0).integers(0, 255, (2, *SIZE, 3)).astype("uint8")
    return np.allclose(model.predict(x, verbose=0), other.predict(x, verbose=0))


def test_load_local_verifies_and_loads(good_checkpoint):
    folder, model = good_checkpoint
    loaded, manifest = ckpt.load_local(folder, compile=False)
    assert manifest["class_names"] == CLASSES and manifest["model_sha256"]
    assert _same_predictions(model, loaded)


@pytest.mark.parametrize("n_bytes", [1, 16])
def test_tampered_model_of_the_same_size_is_refused(good_checkpoint, tmp_path, n_bytes):
    # 1 byte: a weight changed silently before; 16 bytes: a raw BadZipFile traceback before.
    folder = _copy(good_checkpoint[0], tmp_path / "checkpoint_000001")
    size = os.path.getsize(os.path.join(folder, ckpt.MODEL_FILE))
    _flip(folder, n_bytes)
    assert os.path.getsize(os.path.join(folder, ckpt.MODEL_FILE)) == size
    for load in (lambda: ckpt.load_local(folder), lambda: ckpt.load(folder)):
        with pytest.raises(ckpt.CheckpointError, match="does not match its manifest.json") as info:
            load()
        assert folder in str(info.value) and "corrupt or torn upload" in str(info.value)


def test_hash_matching_but_unreadable_model_is_a_checkpoint_error(tmp_path):
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    (folder / ckpt.MODEL_FILE).write_bytes(b"PK\x03\x04 not really a zip archive")
    path = str(folder / ckpt.MODEL_FILE)
    manifest = {"format": ckpt.FORMAT, "model_bytes": os.path.getsize(path), "model_sha256": ckpt._sha256(path)}
    (folder / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="cannot be read as a Keras model") as info:
        ckpt.load_local(str(folder))
    assert str(folder) in str(info.value) and "use another checkpoint" in str(info.value)


def test_manifest_without_model_is_refused(good_checkpoint, bucket):
    # Ray uploads a folder in no fixed order: manifest.json can land before model.keras.
    run = f"{bucket}/runs/r"
    uri = f"{run}/checkpoint_000001"
    storage.write_bytes(f"{uri}/{ckpt.MANIFEST_FILE}",
                        open(os.path.join(good_checkpoint[0], ckpt.MANIFEST_FILE), "rb").read())
    with pytest.raises(ckpt.CheckpointError, match="model.keras is missing") as info:
        ckpt.load(uri)
    assert uri in str(info.value) and "incomplete" in str(info.value)
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.load(run)


def test_run_falls_back_to_the_next_best_checkpoint_with_a_warning(good_checkpoint, bucket, tmp_path, cache,
                                                                    caplog):
    local = tmp_path / "run"
    _copy(good_checkpoint[0], local / "checkpoint_000001", epoch=1, val_accuracy=0.5)
    bad = _copy(good_checkpoint[0], local / "checkpoint_000002", epoch=2, val_accuracy=0.9)
    _flip(bad, 1)
    run = f"{bucket}/runs/r"
    storage.upload_dir(str(local), run, progress=False)

    # resolve only reads manifests and sizes: the tampered one is still "best", nothing downloaded
    assert ckpt.resolve(run).uri == f"{run}/checkpoint_000002"
    assert not cache.exists()

    with caplog.at_level(logging.WARNING, logger="imgrec.checkpoint"):
        model, manifest = ckpt.load(run, compile=False)
    assert manifest["checkpoint_uri"] == f"{run}/checkpoint_000001"
    assert _same_predictions(good_checkpoint[1], model)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"skipping checkpoint {run}/checkpoint_000002" in warning and "does not match" in warning
    # the bad download was never published into the cache; only the good one is there
    assert len(os.listdir(cache / "checkpoints")) == 1


def test_a_corrupted_cached_copy_is_downloaded_again(good_checkpoint, bucket, cache, caplog):
    uri = f"{bucket}/runs/r/checkpoint_000001"
    storage.upload_dir(good_checkpoint[0], uri, progress=False)
    ckpt.load(uri, compile=False)
    (entry,) = os.listdir(cache / "checkpoints")
    _flip(str(cache / "checkpoints" / entry), 1)  # disk corruption, or someone editing the cache
    with caplog.at_level(logging.WARNING, logger="imgrec.checkpoint"):
        model, _ = ckpt.load(uri, compile=False)
    assert _same_predictions(good_checkpoint[1], model)
    assert any("downloading it again" in r.getMessage() for r in caplog.records)


def test_a_tampered_s3_checkpoint_is_refused_and_not_cached(good_checkpoint, bucket, tmp_path, cache):
    folder = _copy(good_checkpoint[0], tmp_path / "checkpoint_000001")
    _flip(folder, 1)
    uri = f"{bucket}/runs/r/checkpoint_000001"
    storage.upload_dir(folder, uri, progress=False)
    with pytest.raises(ckpt.CheckpointError, match=f"{uri}: model.keras does not match"):
        ckpt.load_model(uri)
    leftovers = os.listdir(cache / "checkpoints")
    assert leftovers == [], leftovers  # neither a published copy nor a .dl- folder


def test_manifest_without_hash_cannot_be_verified(good_checkpoint, tmp_path):
    folder = _copy(good_checkpoint[0], tmp_path / "checkpoint_000001")
    path = os.path.join(folder, ckpt.MANIFEST_FILE)
    manifest = json.loads(open(path).read())
    del manifest["model_sha256"]
    open(path, "w").write(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="records no model_sha256"):
        ckpt.load_local(folder)


def test_manifest_cannot_point_outside_its_folder(good_checkpoint, tmp_path):
    folder = _copy(good_checkpoint[0], tmp_path / "checkpoint_000001")
    path = os.path.join(folder, ckpt.MANIFEST_FILE)
    manifest = json.loads(open(path).read())
    manifest["model_file"] = "../elsewhere/model.keras"
    open(path, "w").write(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="expected a file name inside the checkpoint folder"):
        ckpt.load_local(folder)


def test_predict_one_falls_back_past_a_tampered_best_checkpoint(good_checkpoint, tmp_path, cache):
    """`imgrec predict-one --model RUN` loads once, verified: a tampered best
    checkpoint is skipped and the answer comes from the good one."""
    from PIL import Image

    from imgrec.predict import describe_one, predict_one

    run = tmp_path / "run"
    _copy(good_checkpoint[0], run / "checkpoint_000001", epoch=1, val_accuracy=0.5)
    _flip(_copy(good_checkpoint[0], run / "checkpoint_000002", epoch=2, val_accuracy=0.9), 1)
    image = tmp_path / "b" / "x.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (*SIZE, 3)).astype("uint8")).save(image)
    expected = good_checkpoint[1].predict(np.asarray(Image.open(image))[None], verbose=0)[0]
    pairs = predict_one(str(image), str(run), top_k=3)
    assert [n for n, _ in pairs] == [CLASSES[i] for i in np.argsort(-expected)]
    np.testing.assert_allclose([p for _, p in pairs], np.sort(expected)[::-1], rtol=1e-5)
    text = describe_one(str(image), str(run))
    assert f"model:      {run}/checkpoint_000001" in text and "answer:     b  (its folder)" in text
