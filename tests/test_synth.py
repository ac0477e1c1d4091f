"""imgrec.synth: layout, decodability, determinism and the information each task
carries, written locally and to the S3 endpoint; plus ``imgrec data synth|upload``."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgrec import storage, synth
from imgrec.cli import app

SMALL = dict(classes=3, per_class=4, test_per_class=2, image_size=(40, 56))


def _read_tree(root: str) -> dict[str, bytes]:
    return {o.path: storage.read_bytes(o.uri) for o in storage.list_objects(root)}


def _expected_paths(names, per_class: int, test_per_class: int) -> set[str]:
    return {
        f"{split}/{name}/{i:05d}.jpg"
        for split, n in (("train", per_class), ("test", test_per_class))
        for name in names
        for i in range(n)
    }


def _gray_means(tree: dict[str, bytes], split: str, name: str) -> np.ndarray:
    return np.array(
        [
            np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32).mean()
            for path, data in tree.items()
            if path.startswith(f"{split}/{name}/")
        ]
    )


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("task", synth.TASKS)
def test_layout_counts_and_decoding(task, tmp_path):
    out = str(tmp_path / task)
    summary = synth.make_dataset(out, task=task, seed=3, **SMALL)

    names = synth.class_names(task, 3)
    assert list(summary.class_names) == names == sorted(names)
    assert summary.counts == {"train": dict.fromkeys(names, 4), "test": dict.fromkeys(names, 2)}
    assert summary.total == 18 and summary.uri == out
    assert out in str(summary) and "train: " in str(summary)

    tree = _read_tree(out)
    assert set(tree) == _expected_paths(names, 4, 2)
    assert sorted(os.listdir(out)) == ["test", "train"]
    for data in tree.values():
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (56, 40)  # PIL: (width, height)
        image.load()


def test_readable_class_names():
    assert synth.class_names("shapes", 3) == ["circle", "square", "triangle"]
    assert synth.class_names("colors", 3) == ["blue", "green", "red"]
    assert synth.class_names("brightness", 2) == ["cat", "dog"]
    assert synth.class_names("noinfo", 2) == ["horizontal", "vertical"]
    assert synth.class_names("noinfo", 4) == ["antidiagonal", "diagonal", "horizontal", "vertical"]
    assert len(set(synth.class_names("shapes", 8))) == 8


def test_default_test_split_is_a_fifth(tmp_path):
    summary = synth.make_dataset(str(tmp_path / "d"), classes=2, per_class=10, image_size=(32, 32))
    assert summary.counts["test"] == {"circle": 2, "square": 2}


def test_photo_sized_images(tmp_path):
    out = str(tmp_path / "photo")
    synth.make_dataset(out, classes=2, per_class=2, test_per_class=1, image_size=(375, 500), threads=2)
    for data in _read_tree(out).values():
        assert Image.open(io.BytesIO(data)).size == (500, 375)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = _read_tree(synth.make_dataset(str(tmp_path / "a"), seed=7, **SMALL).uri)
    b = _read_tree(synth.make_dataset(str(tmp_path / "b"), seed=7, threads=3, **SMALL).uri)
    c = _read_tree(synth.make_dataset(str(tmp_path / "c"), seed=8, **SMALL).uri)
    assert a == b  # also independent of how many threads rendered them
    assert set(a) == set(c)
    assert sum(a[p] != c[p] for p in a) == len(a)
    # train and test images are different draws, not copies
    assert a["train/circle/00000.jpg"] != a["test/circle/00000.jpg"]


def test_s3_and_local_hold_identical_files(bucket, tmp_path):
    summary = synth.make_dataset(f"{bucket}/shapes", seed=1, **SMALL)
    assert summary.uri == f"{bucket}/shapes"
    remote = _read_tree(summary.uri)
    local = _read_tree(synth.make_dataset(str(tmp_path / "shapes"), seed=1, **SMALL).uri)
    assert remote == local and len(remote) == 18


def test_make_arrays_is_deterministic_and_shuffled():
    x, y = synth.make_arrays("shapes", 3, 20, (32, 48), seed=5)
    assert x.shape == (60, 32, 48, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [20, 20, 20]
    assert not np.all(np.diff(y) >= 0)  # shuffled: Keras' validation_split sees every class
    x2, y2 = synth.make_arrays("shapes", 3, 20, (32, 48), seed=5)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    xt, _ = synth.make_arrays("shapes", 3, 20, (32, 48), seed=5, split="test")
    assert xt.shape == x.shape and not np.array_equal(x, xt)


# --------------------------------------------------------------------------- what the tasks carry


def _best_threshold_accuracy(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The mean-brightness threshold that best separates a from b, and its accuracy."""
    values = np.concatenate([a, b])
    labels = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    best = (0.0, 0.0)
    for t in np.unique(values):
        acc = max(np.mean((values > t) == labels), np.mean((values <= t) == labels))
        best = max(best, (acc, t), key=lambda r: r[0])
    return best[1], best[0]


def test_brightness_classes_differ_clearly_in_brightness_and_height(tmp_path):
    out = str(tmp_path / "animals")
    synth.make_dataset(
        out, task="brightness", classes=2, per_class=40, test_per_class=40, image_size=(48, 48)
    )
    tree = _read_tree(out)
    cat, dog = _gray_means(tree, "train", "cat"), _gray_means(tree, "train", "dog")
    assert cat.max() + 30 < dog.min()  # out of 255: no overlap at all, with a margin
    threshold, acc = _best_threshold_accuracy(cat, dog)
    test_cat, test_dog = _gray_means(tree, "test", "cat"), _gray_means(tree, "test", "dog")
    test_acc = (np.sum(test_cat <= threshold) + np.sum(test_dog > threshold)) / (
        len(test_cat) + len(test_dog)
    )
    assert acc == 1.0 and test_acc > 0.95

    # "dog" stands taller: count rows where the object outshines its scene.
    x, y = synth.make_arrays("brightness", 2, 40, (48, 48), seed=0)
    gray = x.mean(-1)
    rows = ((gray > np.median(gray, axis=(1, 2), keepdims=True) + 20).sum(-1) > 1).sum(-1)
    assert rows[y == 0].mean() + 10 < rows[y == 1].mean()


def test_noinfo_brightness_says_nothing_about_the_class(tmp_path):
    out = str(tmp_path / "stripes")
    synth.make_dataset(out, task="noinfo", classes=2, per_class=60, test_per_class=60, image_size=(40, 40))
    tree = _read_tree(out)
    train = [_gray_means(tree, "train", n) for n in ("horizontal", "vertical")]
    test = [_gray_means(tree, "test", n) for n in ("horizontal", "vertical")]
    # The distributions overlap: the interquartile ranges intersect ...
    (a25, a75), (b25, b75) = (np.percentile(v, [25, 75]) for v in train)
    assert a25 < b75 and b25 < a75
    # ... and the best brightness threshold on train is a coin toss on test.
    threshold, _ = _best_threshold_accuracy(*train)
    above = [np.mean(v > threshold) for v in test]
    test_acc = max((1 - above[0] + above[1]) / 2, (above[0] + 1 - above[1]) / 2)
    assert test_acc < 0.7


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(task="faces"), "unknown task 'faces'"),
        (dict(classes=1), "from 2 to 8, got 1"),
        (dict(classes=9), "from 2 to 8, got 9"),
        (dict(per_class=0), "per_class must be an integer >= 1, got 0"),
        (dict(image_size=(8, 64)), "image_size must be (height, width)"),
        (dict(image_size="big"), "image_size must be (height, width)"),
        (dict(quality=100), "quality must be an integer >= 1 and <= 95, got 100"),
    ],
)
def test_bad_options_are_named(kwargs, words, tmp_path):
    with pytest.raises(synth.SynthError) as info:
        synth.make_dataset(str(tmp_path / "x"), **kwargs)
    assert words in str(info.value)
    assert not (tmp_path / "x").exists()  # nothing written before the checks pass


def test_non_empty_destination_needs_overwrite(tmp_path):
    out = str(tmp_path / "d")
    synth.make_dataset(out, classes=3, per_class=2, test_per_class=1, image_size=(32, 32))
    with pytest.raises(storage.StorageError) as info:
        synth.make_dataset(out, classes=2, per_class=2, image_size=(32, 32))
    assert out in str(info.value) and "overwrite=True" in str(info.value)
    synth.make_dataset(out, classes=2, per_class=2, test_per_class=1, image_size=(32, 32), overwrite=True)
    assert sorted(os.listdir(os.path.join(out, "train"))) == ["circle", "square"]  # no stale "triangle"


def test_missing_bucket_fails_before_any_work(s3_server):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket-xyz' does not exist"):
        synth.make_dataset("s3://no-such-bucket-xyz/data")


# --------------------------------------------------------------------------- CLI


runner = CliRunner()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_cli_synth_then_upload(backend, tmp_path, request):
    root = request.getfixturevalue("bucket") if backend == "s3" else str(tmp_path / "store")
    out = storage.join(root, "colors")
    result = runner.invoke(
        app,
        ["data", "synth", "--out", out, "--task", "colors", "--classes", "2", "--per-class", "3",
         "--test-per-class", "1", "--image-size", "24", "40", "--seed", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote 8 images to {out}" in result.output
    assert "train: green 3, red 3" in result.output and "test: green 1, red 1" in result.output
    tree = _read_tree(out)
    assert len(tree) == 8 and Image.open(io.BytesIO(tree["test/red/00000.jpg"])).size == (40, 24)

    # Upload a local tree next to it (the usual way to get real photos in).
    local = tmp_path / "photos"
    synth.make_dataset(
        str(local), task="shapes", classes=2, per_class=2, test_per_class=1, image_size=(24, 24)
    )
    result = runner.invoke(
        app, ["data", "upload", str(local), storage.join(root, "photos"), "--workers", "4"]
    )
    assert result.exit_code == 0, result.output
    assert f"uploaded 6 files to {storage.join(root, 'photos')}" in result.output
    assert _read_tree(storage.join(root, "photos")) == _read_tree(str(local))


def test_cli_errors_exit_2_with_one_line(s3_server, tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", "s3://no-such-bucket-xyz/data"])
    assert result.exit_code == 2
    assert "error: s3://no-such-bucket-xyz/data: bucket 'no-such-bucket-xyz' does not exist" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["data", "upload", str(tmp_path), "s3://no-such-bucket-xyz/data"])
    assert result.exit_code == 2 and "does not exist" in result.output

    result = runner.invoke(app, ["data", "upload", str(tmp_path / "nowhere"), str(tmp_path / "dest")])
    assert result.exit_code == 2 and "not a folder" in result.output

    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--classes", "12"])
    assert result.exit_code == 2 and "from 2 to 8, got 12" in result.output
