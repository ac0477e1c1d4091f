"""imgrec.data: class-per-folder trees (S3 and local) -> listing, split, decode-once
Ray datasets with bad files reported, per-epoch augmentation, batches for
training, the inspect report and the CIFAR-style export."""

from __future__ import annotations

import io
import os
import random
import sys
import types
import warnings

import numpy as np
import pytest
from PIL import Image

from imgrec import data, storage
from imgrec.config import AugmentConfig, DataConfig, DecodeConfig
from imgrec.data import datasets
from imgrec.decode import decode_image

SIZE = (24, 32)  # (height, width) every test tree is decoded to


def jpeg(seed: int, size: tuple[int, int] = (30, 40)) -> bytes:
    """A small JPEG with smooth random content (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_tree(root: str, files: dict[str, bytes]) -> str:
    storage.write_many(root, files.items())
    return storage.normalize(root)


def fake_records(counts: dict[int, int]) -> list[dict]:
    return [
        {"path": f"/r/c{label}/{i:05d}.jpg", "label": label, "rel": f"c{label}/{i:05d}.jpg"}
        for label, n in counts.items()
        for i in range(n)
    ]


# --------------------------------------------------------------------------- listing and split (no Ray)


def test_labels_follow_sorted_folders_and_odd_files_are_skipped(tmp_path):
    root = write_tree(str(tmp_path / "t"), {
        "train/zebra/1.jpg": jpeg(1), "train/ant/2.JPG": jpeg(2), "train/moth/3.png": jpeg(3),
        "train/moth/notes.txt": b"not an image", "train/loose.jpg": jpeg(4), "README.md": b"hi",
        "test/ant/4.jpg": jpeg(5), "test/yak/5.jpg": jpeg(6),
    })
    tree = data.list_image_tree(root)
    assert tree.class_names == ["ant", "moth", "zebra"]
    for rec in tree.train + tree.test:
        assert tree.class_names[rec["label"]] == rec["rel"].split("/")[0]
        assert rec["path"] == os.path.join(root, *rec["path"][len(root) + 1:].split("/"))
    assert [r["rel"] for r in tree.test] == ["ant/4.jpg"]
    reasons = {os.path.relpath(s["path"], root): s["reason"] for s in tree.skipped}
    assert set(reasons) == {"train/moth/notes.txt", "train/loose.jpg", "README.md", "test/yak/5.jpg"}
    assert "not an image" in reasons["train/moth/notes.txt"]
    assert "class folder" in reasons["train/loose.jpg"]
    assert "not a training class" in reasons["test/yak/5.jpg"]


def test_root_without_train_folder_is_the_training_tree(tmp_path):
    root = write_tree(str(tmp_path / "t"), {"cat/1.jpg": jpeg(1), "dog/2.jpg": jpeg(2), "dog/3.jpg": jpeg(3)})
    tree = data.list_image_tree(root)
    assert tree.class_names == ["cat", "dog"] and [r["label"] for r in tree.train] == [0, 1, 1]
    assert tree.test == [] and tree.skipped == []


@pytest.mark.parametrize("files, expected", [
    ({}, "no files found"),
    ({"train/cat/1.jpg": b"x", "train/cat/2.jpg": b"x"}, "only 1 class"),
    ({"train/cat/notes.txt": b"x", "train/a.jpg": b"x"}, "no images in class folders"),
    ({"test/cat/1.jpg": b"x", "test/dog/1.jpg": b"x"}, "no train/ folder"),
])
def test_unusable_trees_name_the_uri_and_the_layout(tmp_path, files, expected):
    root = str(tmp_path / "t")
    os.makedirs(root)
    write_tree(root, files)
    with pytest.raises(data.DataError, match=expected) as err:
        data.list_image_tree(root)
    assert root in str(err.value) and "<class>/<image>.jpg" in str(err.value)


def test_empty_and_one_class_s3_trees_are_clear_errors(bucket):
    with pytest.raises(data.DataError, match=f"{bucket}/empty: no files found.*train/<class>"):
        data.list_image_tree(f"{bucket}/empty")
    write_tree(f"{bucket}/one", {"train/cat/1.jpg": jpeg(1)})
    with pytest.raises(data.DataError, match=rf"{bucket}/one/train: found images for only 1 class \['cat'\]"):
        data.list_image_tree(f"{bucket}/one")


def test_split_is_stable_disjoint_near_the_fraction_and_order_free():
    records = fake_records({0: 400, 1: 350, 2: 248, 3: 2})  # 1000 records, one class of 2
    train, val = data.split_records(records, 0.3, seed=0)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    train2, val2 = data.split_records(shuffled, 0.3, seed=0)
    rels = lambda recs: {r["rel"] for r in recs}  # noqa: E731
    assert rels(val) == rels(val2) and rels(train) == rels(train2)  # re-listing in any order: same files
    assert not rels(train) & rels(val) and len(train) + len(val) == 1000
    assert 250 <= len(val) <= 350  # 0.3 within +-5 points
    for label in range(4):  # every class on both sides, even the 2-image one
        assert any(r["label"] == label for r in train) and any(r["label"] == label for r in val)
    # Adding files keeps every old file on its side (hash of the path, no RNG state).
    more_train, more_val = data.split_records(records + fake_records({0: 410})[400:], 0.3, seed=0)
    assert rels(val) <= rels(more_val) and rels(train) <= rels(more_train)
    assert rels(data.split_records(records, 0.3, seed=1)[1]) != rels(val)


def test_limit_per_class_keeps_the_first_files_of_each_class():
    records = fake_records({0: 5, 1: 2})
    kept = datasets._limit_per_class(records, 3)
    assert [r["rel"] for r in kept] == [
        "c0/00000.jpg", "c0/00001.jpg", "c0/00002.jpg", "c1/00000.jpg", "c1/00001.jpg"]
    assert datasets._limit_per_class(records, None) == records


def test_load_dataset_needs_an_image_size(tmp_path):
    with pytest.raises(data.DataError, match="image_size is None.*let train\\(\\) fill it"):
        data.load_dataset(DataConfig(uri=str(tmp_path)))


def test_cifar10_without_network_is_a_clear_error(monkeypatch):
    def offline():
        raise OSError("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    # A stand-in keras module: the real one costs seconds to import, and only its download matters here.
    cifar10 = types.SimpleNamespace(load_data=offline)
    fake = types.SimpleNamespace(datasets=types.SimpleNamespace(cifar10=cifar10))
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(data.DataError, match="cannot download CIFAR-10.*export-cifar10"):
        data.load_dataset(DataConfig(uri="cifar10", decode=DecodeConfig(image_size=(32, 32))))
    with pytest.raises(data.DataError, match="cannot download CIFAR-10"):
        data.export_cifar10("/nonexistent/never-written")


def test_cli_inspect_and_export_without_network(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from imgrec.cli import app

    root = write_tree(str(tmp_path / "t"), {
        "train/cat/1.jpg": jpeg(1), "train/cat/2.jpg": jpeg(2), "train/dog/3.jpg": jpeg(3),
        "train/dog/4.jpg": b"broken", "test/dog/5.jpg": jpeg(5),
    })
    out = CliRunner().invoke(app, ["data", "inspect", root, "--decode-sample"])
    assert out.exit_code == 0, out.output
    assert "class  train  val  test  total" in out.output and "JPEG 4" in out.output
    assert "dog/4.jpg: not an image" in out.output and "decoded all 5 files, in this process" in out.output

    def offline():
        raise OSError("no network")

    cifar10 = types.SimpleNamespace(load_data=offline)
    fake = types.SimpleNamespace(datasets=types.SimpleNamespace(cifar10=cifar10))
    monkeypatch.setitem(sys.modules, "keras", fake)
    out = CliRunner().invoke(app, ["data", "export-cifar10", str(tmp_path / "cifar")])
    assert out.exit_code == 2 and "cannot download CIFAR-10" in out.output


def test_export_refuses_unsorted_names_and_a_full_destination(tmp_path):
    arrays = ((np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1])), (None, None))
    with pytest.raises(data.DataError, match="sorted"):
        data.export_arrays(arrays, ["dog", "cat"], str(tmp_path / "a"))
    data.export_arrays(arrays, ["cat", "dog"], str(tmp_path / "a"))
    with pytest.raises(data.DataError, match="already holds files"):
        data.export_arrays(arrays, ["cat", "dog"], str(tmp_path / "a"))
    assert data.export_arrays(arrays, ["cat", "dog"], str(tmp_path / "a"), overwrite=True) == {
        "train": {"cat": 1, "dog": 1}}


# --------------------------------------------------------------------------- decoding with Ray Data


@pytest.fixture(scope="module")
def messy_tree(session_bucket):
    """An S3 tree of 3 classes with one corrupt, one zero-byte, one non-image and
    one oversized file (decoded with max_pixels=2000: 30x40 fits, 60x80 does not)."""
    classes = ["bird", "cat", "dog"]
    good = {f"train/{cls}/{i}.jpg": jpeg(10 * k + i) for k, cls in enumerate(classes) for i in range(6)}
    good.update({f"test/{c}/t{i}.jpg": jpeg(100 + 10 * k + i) for k, c in enumerate(classes)
                 for i in range(2)})
    bad = {
        "train/cat/corrupt.jpg": jpeg(99)[:-200],  # cut inside the scan data
        "train/cat/empty.jpg": b"",
        "train/dog/text.jpg": b"just some text, not a picture",
        "train/bird/huge.jpg": jpeg(98, size=(60, 80)),
    }
    root = write_tree(f"{session_bucket}/data/messy", {**good, **bad})
    return root, good, bad


def test_bad_files_are_reported_skipped_and_pixels_match_decode_image(ray_cluster, messy_tree):
    root, good, bad = messy_tree
    decode = DecodeConfig(image_size=SIZE, max_pixels=2000)
    ds = data.load_dataset(DataConfig(uri=root, decode=decode))
    reasons = {b["path"][len(root) + 1:]: b["reason"] for b in ds.bad_files}
    assert set(reasons) == set(bad)
    assert "truncated" in reasons["train/cat/corrupt.jpg"] and "zero-byte" in reasons["train/cat/empty.jpg"]
    assert "not an image" in reasons["train/dog/text.jpg"] and "max_pixels" in reasons["train/bird/huge.jpg"]
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.counts["train"] + ds.counts["val"] == 18 and ds.counts["test"] == 6
    seen = set()
    for split in (ds.train, ds.val, ds.test):
        images, labels, paths = data.take_arrays(split)
        assert images.dtype == np.uint8 and images.shape[1:] == (*SIZE, 3)
        for image, label, path in zip(images, labels, paths, strict=True):
            rel = path[len(root) + 1:]
            assert ds.class_names[label] == rel.split("/")[1]
            np.testing.assert_array_equal(image, decode_image(good[rel], decode))
            seen.add(rel)
    assert seen == set(good)  # train, val and test together: every good file exactly once


def test_load_dataset_as_a_process_first_ray_call(ray_cluster, tmp_path):
    """``load_dataset`` connects to Ray itself (it reads the object store's size before
    any Ray Data call did): a fresh process, pointed at the session's cluster."""
    import subprocess

    root = write_tree(str(tmp_path / "tree"), {f"train/{c}/{i}.jpg": jpeg(10 * k + i)
                                               for k, c in enumerate(("a", "b")) for i in range(4)})
    script = ("from imgrec import data; from imgrec.config import DataConfig, DecodeConfig; "
              f"ds = data.load_dataset(DataConfig(uri={root!r}, decode=DecodeConfig(image_size={SIZE}))); "
              "print(ds.counts['train'] + ds.counts['val'], ds.class_names)")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "8 ['a', 'b']"


def test_a_capped_decode_keeps_every_row_and_warns_of_no_cap_it_cannot_reach(ray_cluster, messy_tree):
    """``tasks`` (imgrec.placement.data_tasks) caps Ray Data's concurrent decode tasks:
    over 6 blocks with a cap of 2 every good file still decodes once; a tree of fewer
    blocks than the cap runs uncapped, without Ray's console warning about it."""
    root, good, bad = messy_tree
    decode = DecodeConfig(image_size=SIZE, max_pixels=2000)
    records = data.list_images(root).train
    capped, n, missing = datasets._decoded(records, decode, cache=True, rows_per_block=4, tasks=2)
    assert datasets.num_blocks(len(records), 4) == 6  # the decode's input: more blocks than the cap
    assert n == capped.count() == len(records) - len(bad) and len(missing) == len(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load_dataset(DataConfig(uri=root, decode=decode), tasks=2)
    assert ds.counts["train"] + ds.counts["val"] == n
    assert not [w for w in caught if "concurrent tasks" in str(w.message)]


def test_a_tree_of_only_bad_files_is_a_clear_error(ray_cluster, tmp_path):
    files = {f"{c}/{i}.jpg": b"not a jpeg" for c in ("a", "b") for i in range(3)}
    root = write_tree(str(tmp_path / "t"), files)
    with pytest.raises(data.DataError, match=f"{root}: every training image failed to decode.*not an image"):
        data.load_dataset(DataConfig(uri=root, decode=DecodeConfig(image_size=SIZE)))


def test_inspect_counts_sizes_and_bad_files(ray_cluster, messy_tree):
    root, good, bad = messy_tree
    report = data.inspect(root, DecodeConfig(image_size=(16, 16), max_pixels=2000), sample=10)
    assert report.class_names == ["bird", "cat", "dog"]
    train = {c: sum(f.startswith(f"train/{c}/") for f in {**good, **bad}) for c in report.class_names}
    assert {c: report.counts["train"][c] + report.counts["val"][c] for c in train} == train
    assert report.counts["test"] == {"bird": 2, "cat": 2, "dog": 2}
    assert {b["path"][len(root) + 1:] for b in report.bad_files} == set(bad)  # every file decoded
    assert report.sizes.sampled == 10 and report.sizes.total == len(good) + len(bad)
    assert report.sizes.formats.get("JPEG", 0) >= 10 - report.sizes.unreadable
    text = str(report)
    assert "bird" in text and "decoded all 28 files with Ray Data" in text and "max_pixels" in text


def flip_arrays(n: int = 48):
    """Images whose left half is 10*label and right half 200+label: a flip swaps the
    halves, the label stays readable from the pair either way."""
    labels = np.arange(n) % 4
    images = np.zeros((n, 8, 8, 3), np.uint8)
    images[:, :, :4] = (10 * labels)[:, None, None, None]
    images[:, :, 4:] = (200 + labels)[:, None, None, None]
    return images, labels


def test_augmented_flips_differ_between_epochs_and_labels_stay_aligned(ray_cluster):
    images, labels = flip_arrays()
    ds = data.load_dataset(DataConfig(uri="", validation_split=0.0, decode=DecodeConfig(image_size=(8, 8))),
                           arrays=((images, labels), (None, None)))
    for seed in (None, 7):
        aug = data.augmented(ds.train, AugmentConfig(horizontal_flip=True, seed=seed))
        epochs = []
        for _ in range(2):
            flipped = {}
            for batch in aug.iter_batches(batch_size=16, batch_format="numpy"):
                for image, label, path in zip(batch["image"], batch["label"], batch["path"], strict=True):
                    left, right = int(image[0, 0, 0]), int(image[0, -1, 0])
                    assert sorted((left, right)) == [10 * label, 200 + label]  # label still matches pixels
                    flipped[str(path)] = left > right
            epochs.append(flipped)
        assert len(epochs[0]) == len(images) and 0 < sum(epochs[0].values()) < len(images)
        assert epochs[0] != epochs[1], f"seed={seed}: the same flips in both epochs"


def test_shard_batches_and_tf_dataset(ray_cluster):
    images, labels = flip_arrays(50)
    ds = data.load_dataset(DataConfig(uri="", validation_split=0.0, decode=DecodeConfig(image_size=(8, 8))),
                           arrays=((images, labels), (None, None))).train
    batches = list(data.shard_batches(ds, 16, drop_last=True, shuffle_buffer=32, seed=0))
    assert [len(x) for x, _ in batches] == [16, 16, 16]
    assert all(x.dtype == np.uint8 and x.shape[1:] == (8, 8, 3) and y.dtype == np.int64 for x, y in batches)
    tf_ds = data.to_tf_dataset(ds, 16, (8, 8))
    for _ in range(2):  # each pass over the tf.data.Dataset is a new epoch of the shard
        got = [(x, y) for x, y in tf_ds]
        assert sum(int(x.shape[0]) for x, _ in got) == 50
        assert got[0][0].dtype.name == "uint8" and got[0][1].dtype.name == "int64"
        pixels = np.concatenate([x.numpy() for x, _ in got])
        np.testing.assert_array_equal(np.sort(pixels[:, 0, 0, 0]), np.sort(images[:, 0, 0, 0]))


def test_exported_arrays_load_back_with_identical_pixels(ray_cluster, bucket):
    rng = np.random.default_rng(3)
    # Every class in train/ (else the tree's sorted folder names would shift the label indices).
    x_tr = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y_tr = rng.permutation(np.arange(40) % 10)[:, None]
    x_te, y_te = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, (10, 1))
    uri = f"{bucket}/cifar"
    counts = data.export_cifar10(uri, loader=lambda: ((x_tr, y_tr), (x_te, y_te)))
    assert sum(counts["train"].values()) == 40 and sum(counts["test"].values()) == 10
    decode = DecodeConfig(image_size=(32, 32))
    cfg = DataConfig(uri=uri, decode=decode)
    from_tree = data.load_dataset(cfg)
    arrays = ((x_tr, y_tr), (x_te, y_te))
    from_arrays = data.load_dataset(cfg, arrays=arrays, class_names=data.CIFAR10_CLASSES)
    assert from_tree.class_names == data.CIFAR10_CLASSES and from_tree.bad_files == []
    assert from_tree.counts == from_arrays.counts
    for split, (x, y) in {"train": (x_tr, y_tr), "val": (x_tr, y_tr), "test": (x_te, y_te)}.items():
        for ds in (from_tree, from_arrays):
            images, labels, paths = data.take_arrays(getattr(ds, split))
            rows = [int(os.path.basename(p).split(".")[0]) for p in paths]
            if ds is from_tree:
                folders = [p.split("/")[-2] for p in paths]
                assert [data.CIFAR10_CLASSES[lab] for lab in labels] == folders
                tree_rows = sorted(rows)
            else:
                assert sorted(rows) == tree_rows  # the same split on both paths
            np.testing.assert_array_equal(images, x[rows])
            np.testing.assert_array_equal(labels, y.reshape(-1)[rows])
